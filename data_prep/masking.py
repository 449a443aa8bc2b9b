"""Masked-LM selection for a batch of instances at once (numpy, no per-row Python).

Per row, 15% of the maskable tokens (all but [CLS] and the two [SEP]; BERT counted
those three too), rounded, at least 1 and at most max_pred, are chosen in random order;
each chosen token becomes [MASK] (80%), a random word piece (10%) or stays (10%).

Whole-word mode draws one random key per word instead of per token, so a word's pieces
are chosen together; words are taken in key order while they fit in the row's budget,
stopping at the first that does not (BERT's loop skips it and tries later, shorter
words, which on average masks a fraction of a token more per row).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class MaskingConfig:
    probability: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1  # the rest (10%) keeps the original token
    whole_word: bool = False

    def describe(self, max_pred: int) -> dict:
        return {**asdict(self), "keep_fraction": round(1 - self.mask_fraction - self.random_fraction, 10),
                "max_predictions_per_seq": max_pred}


@dataclass(frozen=True)
class MaskVocab:
    mask_id: int
    replacement_ids: np.ndarray  # ids a token may be replaced by at random
    is_continuation: np.ndarray  # per id: True for "##" pieces (whole-word mode)


def mask_batch(ids: np.ndarray, lengths: np.ndarray, a_lengths: np.ndarray, max_pred: int,
               config: MaskingConfig, vocab: MaskVocab, rng: np.random.Generator):
    """ids: (n, L) rows "[CLS] A [SEP] B [SEP] 0...". Returns (masked ids, positions,
    labels); positions are sorted and 0-padded, labels (original ids) 0-padded, both (n, max_pred)."""
    n, seq_len = ids.shape
    pos = np.arange(seq_len)
    maskable = (pos >= 1) & (pos < lengths[:, None] - 1) & (pos != a_lengths[:, None] + 1)
    budget = np.clip(np.floor((lengths - 3) * config.probability + 0.5).astype(np.int64), 1, max_pred)

    # Group tokens into units chosen together: words, or single tokens. Non-maskable
    # tokens get unique negative numbers so that they never join a unit.
    if config.whole_word:
        continues = vocab.is_continuation[ids] & maskable & np.roll(maskable, 1, axis=1)
        group = np.cumsum(maskable & ~continues, axis=1)
        keys = np.take_along_axis(rng.random((n, seq_len + 1)), group, axis=1)
    else:
        group = np.broadcast_to(pos, (n, seq_len))
        keys = rng.random((n, seq_len))
    group = np.where(maskable, group, -1 - pos)
    keys = np.where(maskable, keys, np.inf)
    # Stable sort: a word's pieces share a key and stay in position order.
    order = np.argsort(keys, axis=1, kind="stable")[:, :max_pred + 1]
    ordered_group = np.take_along_axis(group, order, axis=1)
    # max_pred <= seq_len - 3, so the slot after the last one always exists.
    ends_group = ordered_group[:, :max_pred] != ordered_group[:, 1:]
    taken = np.arange(1, max_pred + 1)
    fits = ends_group & (taken <= budget[:, None])
    count = np.where(fits.any(axis=1), max_pred - np.argmax(fits[:, ::-1], axis=1), 0)

    chosen = np.arange(max_pred) < count[:, None]
    positions = np.sort(np.where(chosen, order[:, :max_pred], seq_len), axis=1)
    chosen = positions < seq_len
    positions = np.where(chosen, positions, 0)
    labels = np.where(chosen, np.take_along_axis(ids, positions, axis=1), 0)

    draw = rng.random((n, max_pred))
    replacement = vocab.replacement_ids[rng.integers(len(vocab.replacement_ids), size=(n, max_pred))]
    new = np.where(draw < config.mask_fraction, vocab.mask_id,
                   np.where(draw < config.mask_fraction + config.random_fraction, replacement, labels))
    masked = ids.copy()
    rows, slots = np.nonzero(chosen)
    masked[rows, positions[rows, slots]] = new[rows, slots]
    return masked, positions, labels
