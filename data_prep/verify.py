"""Check any shard set (ours, NVIDIA's, academic-budget-bert's) row by row: the full report.

`verify(path)` returns a VerifyReport (every defect, naming shard, check, first bad row
and value, plus statistics); the CLI prints it and exits 1 on any defect. The checks
are bing_bert_pld.shard_validation's, the same the trainer runs before training (it
stops at the first); this module adds the vocabulary file, the statistics and the
parallel run over shards. Shards are read in blocks of rows, so memory stays small
whatever the shard size.

Where the ids of [CLS]/[SEP]/[MASK] are known (a vocab.txt beside a manifest, or
--vocab), it also checks the special tokens and splits masked positions into
[MASK] / random / kept. Without a manifest, pass --vocab or --vocab-size: ids cannot
be checked against an unknown vocabulary size.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bing_bert_pld.run.files import sha256_of
from bing_bert_pld.shard_rules import Defect, Rules
from bing_bert_pld.shard_validation import DataError, check_shard, find_shard_set, resolve_rules
from bing_bert_pld.tokenizer import CLS, MASK, PAD, SEP
from data_prep.errors import DataPrepError
from data_prep.instances import VOCAB_FILE
from data_prep.parallel import run_parallel
from data_prep.vocab import load_vocab

__all__ = ["Defect", "VerifyReport", "verify"]


@dataclass
class VerifyReport:
    shards: list[dict] = field(default_factory=list)  # name, rows
    defects: list[Defect] = field(default_factory=list)
    stats: dict = field(default_factory=dict)  # per shard directory

    @property
    def ok(self) -> bool:
        return not self.defects

    def format(self) -> str:
        lines = []
        for group, stats in self.stats.items():
            lines.append(f"{group}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in stats.items()))
        lines.extend(f"DEFECT {d}" for d in self.defects)
        lines.append(f"{len(self.shards)} shards, " + ("OK" if self.ok else f"{len(self.defects)} defects"))
        return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) + "}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def verify(path: Path, vocab: Path | None = None, vocab_size: int | None = None, processes: int = 1,
           show_progress: bool = False) -> VerifyReport:
    """Check every shard under `path` (an output directory, a split directory or one
    shard), in parallel over shards."""
    path = Path(path)
    if not path.exists():
        raise DataPrepError(f"nothing to verify at {path}")
    try:
        found = find_shard_set(path, recursive=True, relative_names=True)
    except DataError as error:
        raise DataPrepError(str(error)) from None
    report = VerifyReport(defects=list(found.defects))
    manifest_dir = found.manifest_dir
    if vocab is None and manifest_dir is not None and (manifest_dir / VOCAB_FILE).exists():
        vocab = manifest_dir / VOCAB_FILE
        if sha256_of(vocab) != found.vocab_sha256:
            report.defects.append(Defect(VOCAB_FILE, None, "manifest", "vocab.txt does not match vocab_sha256"))
    special, mask_id, given_by = {}, None, "--vocab-size"
    if vocab is not None:
        v = load_vocab(vocab)
        ids = v.special_ids()
        vocab_size, mask_id, given_by = v.size, ids[MASK], found.name(vocab)
        special = {"cls_id": ids[CLS], "sep_id": ids[SEP], "label_forbidden": (ids[PAD], ids[CLS], ids[SEP])}
    rules, defects = resolve_rules(found, None, None, vocab_size, given_by=given_by, **special)
    report.defects.extend(defects)
    if rules.vocab_size is None:
        raise DataPrepError("cannot check token ids without the vocabulary size: pass --vocab or --vocab-size")
    tasks = [_ShardTask(str(shard), found.name(shard), rows, rules, mask_id)
             for shard, rows in zip(found.files, found.listed_rows)]
    results = run_parallel(_verify_shard, tasks, processes, "verify", lambda r: (1, {"rows": r.rows or 0}),
                           total=len(tasks), unit="shard", show_progress=show_progress)
    totals: dict[str, dict] = {}
    for task, result in zip(tasks, results):
        report.defects.extend(result.defects)
        if result.rows is not None:
            report.shards.append({"name": task.name, "rows": result.rows})
        group = totals.setdefault(str(Path(task.name).parent), defaultdict(int))
        for key, value in result.totals.items():
            group[key] += value
    report.stats = {group: _finish_stats(t) for group, t in totals.items() if t}
    return report


@dataclass(frozen=True)
class _ShardTask:
    path: str
    name: str  # as reported: relative to the shard set
    expected_rows: int | None  # from the manifest
    rules: Rules
    mask_id: int | None  # [MASK], to split masked positions by what replaced them


@dataclass
class _ShardResult:
    rows: int | None = None  # None when the shard could not be read
    defects: list[Defect] = field(default_factory=list)
    totals: dict = field(default_factory=lambda: defaultdict(int))


def _verify_shard(task: _ShardTask) -> _ShardResult:
    result = _ShardResult()
    checked = check_shard(Path(task.path), task.name, task.rules, task.expected_rows,
                          on_block=lambda block: _accumulate(result.totals, block, task.mask_id))
    result.rows, result.defects = checked.rows, checked.defects
    return result


def _accumulate(stats: dict, b: dict[str, np.ndarray], mask_id: int | None) -> None:
    mask = b["input_mask"]
    positions, labels = b["masked_lm_positions"], b["masked_lm_ids"]
    real = positions != 0
    length = mask.sum(axis=1)
    stats["instances"] += len(mask)
    stats["slots"] += mask.size
    stats["tokens"] += int(length.sum())
    stats["maskable"] += int(np.maximum(length - 3, 0).sum())  # all but [CLS] and two [SEP]
    stats["masked"] += int(real.sum())
    stats["random_next"] += int(b["next_sentence_labels"].sum())
    if mask_id is not None:
        at = np.take_along_axis(b["input_ids"], np.clip(positions, 0, mask.shape[1] - 1), axis=1)
        stats["as_mask"] += int((real & (at == mask_id)).sum())
        stats["as_kept"] += int((real & (at == labels)).sum())


def _finish_stats(s: dict) -> dict:
    out = {
        "instances": s["instances"],
        "tokens": s["tokens"],
        "padding_fraction": 1 - s["tokens"] / max(s["slots"], 1),
        "masked_fraction": s["masked"] / max(s["maskable"], 1),
        "masked_per_instance": s["masked"] / max(s["instances"], 1),
        "nsp_random_fraction": s["random_next"] / max(s["instances"], 1),
    }
    if "as_mask" in s:
        masked = max(s["masked"], 1)
        out["masked_as"] = {"mask": s["as_mask"] / masked, "random": (s["masked"] - s["as_mask"] - s["as_kept"]) / masked,
                            "kept": s["as_kept"] / masked}
    return out
