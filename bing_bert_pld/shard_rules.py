"""The row rules of a pretraining shard: what every row must satisfy, checked by block, each defect explained.

A block is first checked with a few whole-block reductions (FastCheck) that pass
exactly when every row is sound; only a block that fails them is checked row by row
(row_checks, explain) to say where and what.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Defect:
    shard: str  # the file (or manifest, or marker) it concerns
    row: Optional[int]  # first offending row; None for whole-file defects
    check: str
    message: str
    value: Optional[int] = None  # the offending value, where there is one

    def __str__(self) -> str:
        where = self.shard + (f" row {self.row}" if self.row is not None else "")
        return f"{where}: {self.check}: {self.message}"


@dataclass(frozen=True)
class Rules:
    """What every shard and row is checked against."""

    vocab_size: int
    seq_len: Optional[int]  # None only when no manifest says and no shard could be read
    max_pred: Optional[int]
    cls_id: Optional[int] = None  # the special tokens' ids, when the caller knows the vocabulary
    sep_id: Optional[int] = None
    label_forbidden: tuple[int, ...] = ()  # ids that are never a masked token's label


class FastCheck:
    """True exactly when row_checks would find nothing in a block, in whole-block
    operations on the schema's dtypes (no int64 copies) into scratch arrays reused from
    block to block (a fresh temporary per operation costs more in page faults than the
    operation itself): the fast path for the common, clean case."""

    def __init__(self, block_rows: int, seq_len: int, max_pred: int):
        self.columns = np.empty((block_rows, seq_len), bool)
        self.column_pairs = np.empty((block_rows, max(seq_len - 1, 0)), bool)  # column j, j + 1
        self.code = np.empty((block_rows, seq_len), np.int8)
        self.slots = np.empty((block_rows, max_pred), bool)
        self.labelled = np.empty((block_rows, max_pred), bool)
        self.slot_pairs = np.empty((2, block_rows, max(max_pred - 1, 0)), bool)
        self.rows = np.arange(block_rows)

    def __call__(self, b: dict[str, np.ndarray], rules: Rules) -> bool:
        ids, mask, seg = b["input_ids"], b["input_mask"], b["segment_ids"]
        pos, labels, nsp = b["masked_lm_positions"], b["masked_lm_ids"], b["next_sentence_labels"]
        n, seq_len = ids.shape
        if ids.size == 0 or pos.size == 0 or (seq_len, pos.shape[1]) != (self.code.shape[1], self.slots.shape[1]):
            return False  # zero-width fields (max_pred 0): the row checks decide
        vocab = rules.vocab_size
        # As unsigned, a negative value is huge: one max() checks both bounds.
        ids_u = ids.view(np.uint32)
        if ids_u.max() >= vocab or labels.view(np.uint32).max() >= vocab:
            return False
        mask_u, seg_u = mask.view(np.uint8), seg.view(np.uint8)
        if mask_u.max() > 1 or seg_u.max() > 1 or nsp.view(np.uint8).max() > 1:
            return False
        # Both 0/1 from here. 2 * mask - seg is 2 over segment A, 1 over segment B, 0 over
        # the padding and -1 (255 unsigned) where a padding position is in segment 1: a
        # valid row never rises, and starts inside the mask (no empty row).
        code = np.subtract(np.add(mask, mask, out=self.code[:n]), seg, out=self.code[:n])
        if code.view(np.uint8).max() > 2 or not mask_u[:, 0].all():
            return False
        if np.less(code[:, :-1], code[:, 1:], out=self.column_pairs[:n]).any():
            return False
        token = np.not_equal(ids_u, 0, out=self.columns[:n])
        if np.greater(token.view(np.uint8), mask_u, out=token).any():  # a token where the mask is 0
            return False
        # Positions in [0, seq_len) from here; 0 is [CLS]'s, never masked: an empty slot.
        if pos.view(np.uint32).max() >= seq_len:
            return False
        real = np.not_equal(pos, 0, out=self.slots[:n])
        if np.not_equal(np.not_equal(labels, 0, out=self.labelled[:n]), real, out=self.labelled[:n]).any():
            return False  # a label without a position or a position without one
        # A real slot follows a real one with a larger position: real slots come first, increasing.
        follows = np.greater(pos[:, 1:], pos[:, :-1], out=self.slot_pairs[0, :n])
        np.logical_and(follows, real[:, :-1], out=follows)
        if np.greater(real[:, 1:], follows, out=self.slot_pairs[1, :n]).any():
            return False
        # So a row's largest position is its last real one; with a ones-then-zeros mask it
        # is inside the mask exactly where the mask is 1 (a row without any has 0 there).
        if not mask[self.rows[:n], pos.max(axis=1)].all():
            return False
        if rules.cls_id is not None:
            last = ids[self.rows[:n], mask.sum(axis=1) - 1]
            if (ids[:, 0] != rules.cls_id).any() or (last != rules.sep_id).any():
                return False
            if np.isin(labels[real], rules.label_forbidden).any():
                return False
        return True


def row_checks(b: dict[str, np.ndarray], rules: Rules) -> dict[str, np.ndarray]:
    """One boolean per row for each check: True where the row breaks it (int64 arrays)."""
    ids, mask, segments = b["input_ids"], b["input_mask"], b["segment_ids"]
    positions, labels, nsp = b["masked_lm_positions"], b["masked_lm_ids"], b["next_sentence_labels"]
    length = mask.sum(axis=1)
    real = positions != 0
    checks = {
        "input_ids range": ((ids < 0) | (ids >= rules.vocab_size)).any(axis=1),
        "masked_lm_ids range": ((labels < 0) | (labels >= rules.vocab_size)).any(axis=1),
        "input_mask": ((mask != 0) & (mask != 1)).any(axis=1) | (np.diff(mask, axis=1) > 0).any(axis=1)
                      | (length == 0),
        "padding": ((mask == 0) & ((ids != 0) | (segments != 0))).any(axis=1),
        "segment_ids": ((segments != 0) & (segments != 1)).any(axis=1)
                       | ((np.diff(segments, axis=1) < 0) & (mask[:, 1:] == 1)).any(axis=1),
        "masked positions padding": (real[:, 1:] & ~real[:, :-1]).any(axis=1),
        "masked positions sorted and unique": ((np.diff(positions, axis=1) <= 0) & real[:, 1:]).any(axis=1),
        "masked positions inside input_mask": (real & ((positions < 0) | (positions >= length[:, None]))).any(axis=1),
        "masked labels": (real != (labels != 0)).any(axis=1),
        "next_sentence_labels": (nsp != 0) & (nsp != 1),
    }
    if rules.cls_id is not None:
        last = ids[np.arange(len(ids)), np.clip(length - 1, 0, ids.shape[1] - 1)]
        checks["special tokens"] = (ids[:, 0] != rules.cls_id) | (last != rules.sep_id)
        checks["masked labels"] |= (real & np.isin(labels, rules.label_forbidden)).any(axis=1)
    return checks


def block_defects(block: dict[str, np.ndarray], rules: Rules) -> list[tuple]:
    """(check, message, first bad row, value, bad rows) for each check the block breaks."""
    b = {key: a.astype(np.int64, copy=False) for key, a in block.items()}
    found = []
    for check, bad in row_checks(b, rules).items():
        if bad.any():
            first = int(np.argmax(bad))
            message, value = explain(check, b, first, rules)
            found.append((check, message, first, value, int(bad.sum())))
    return found


def explain(check: str, b: dict[str, np.ndarray], r: int, rules: Rules) -> tuple[str, Optional[int]]:
    """What is wrong with row r for `check`, naming the field, the column or slot and the value."""
    ids, mask, seg = b["input_ids"][r], b["input_mask"][r], b["segment_ids"][r]
    pos, labels, nsp = b["masked_lm_positions"][r], b["masked_lm_ids"][r], int(b["next_sentence_labels"][r])
    length = int(mask.sum())
    real = pos != 0

    def first(bad: np.ndarray) -> int:
        return int(np.flatnonzero(bad)[0])

    if check in ("input_ids range", "masked_lm_ids range"):
        key, values, where = ("input_ids", ids, "column") if check == "input_ids range" else ("masked_lm_ids", labels, "slot")
        c = first((values < 0) | (values >= rules.vocab_size))
        return (f"{key} holds {values[c]} at {where} {c}, outside [0, {rules.vocab_size}) "
                f"(vocab_size={rules.vocab_size})", int(values[c]))
    if check == "input_mask":
        bad = (mask != 0) & (mask != 1)
        if bad.any():
            c = first(bad)
            return f"input_mask holds {mask[c]} at column {c}, expected 0 or 1", int(mask[c])
        if length == 0:
            return "input_mask is all 0 (an empty row)", 0
        c = first(np.diff(mask) > 0) + 1
        return f"input_mask is 0 at column {c - 1} but 1 at column {c}, expected ones then zeros", 1
    if check == "padding":
        c = first((mask == 0) & ((ids != 0) | (seg != 0)))
        key, value = ("input_ids", ids[c]) if ids[c] != 0 else ("segment_ids", seg[c])
        return f"{key} holds {value} at column {c}, a padding position (input_mask 0), expected 0", int(value)
    if check == "segment_ids":
        bad = (seg != 0) & (seg != 1)
        if bad.any():
            c = first(bad)
            return f"segment_ids holds {seg[c]} at column {c}, expected 0 or 1", int(seg[c])
        c = first((np.diff(seg) < 0) & (mask[1:] == 1)) + 1
        return f"segment_ids falls from {seg[c - 1]} to {seg[c]} at column {c}, inside input_mask", int(seg[c])
    if check == "masked positions padding":
        k = first(real[1:] & ~real[:-1]) + 1
        return f"masked_lm_positions holds {pos[k]} in slot {k}, after an empty slot (0)", int(pos[k])
    if check == "masked positions sorted and unique":
        k = first((np.diff(pos) <= 0) & real[1:]) + 1
        return f"masked_lm_positions holds {pos[k]} in slot {k} after {pos[k - 1]}, expected increasing", int(pos[k])
    if check == "masked positions inside input_mask":
        k = first(real & ((pos < 0) | (pos >= length)))
        return (f"masked_lm_positions holds {pos[k]} in slot {k}, outside the row's {length} tokens "
                f"(input_mask)", int(pos[k]))
    if check == "masked labels":
        k = first((real != (labels != 0)) | (real & np.isin(labels, rules.label_forbidden)))
        if not real[k]:
            return f"masked_lm_ids holds {labels[k]} in slot {k}, an empty slot (position 0), expected 0", int(labels[k])
        if labels[k] == 0:
            return f"masked_lm_ids holds 0 in slot {k} for masked position {pos[k]}, expected its token", 0
        return f"masked_lm_ids holds {labels[k]} in slot {k}, a special token that is never masked", int(labels[k])
    if check == "next_sentence_labels":
        return f"next_sentence_labels holds {nsp}, expected 0 or 1", nsp
    if check == "special tokens":
        if ids[0] != rules.cls_id:
            return f"input_ids starts with {ids[0]}, expected [CLS] ({rules.cls_id})", int(ids[0])
        c = min(max(length - 1, 0), len(ids) - 1)
        return f"input_ids ends with {ids[c]} at column {c}, expected [SEP] ({rules.sep_id})", int(ids[c])
    raise AssertionError(f"no explanation for check {check!r}")
