"""Check any shard set (ours, NVIDIA's, academic-budget-bert's) row by row.

`verify(path)` returns a VerifyReport (defects naming shard, check and first bad row,
plus statistics); the CLI prints it and exits 1 on any defect. Shards are read in
blocks of rows, so memory stays small whatever the shard size.

Where the ids of [CLS]/[SEP]/[MASK] are known (a vocab.txt beside a manifest, or
--vocab), it also checks the special tokens and splits masked positions into
[MASK] / random / kept. Without a manifest, pass --vocab or --vocab-size: ids cannot
be checked against an unknown vocabulary size.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from bing_bert_pld.schema import FIELDS, MANIFEST_NAME, SHARD_SUFFIX, expected_shape
from data_prep.errors import DataPrepError
from data_prep.fsutil import read_json, sha256_file
from data_prep.parallel import run_parallel
from data_prep.vocab import CLS, MASK, PAD, SEP, load_vocab

_BLOCK_ROWS = 8192


@dataclass(frozen=True)
class Defect:
    shard: str
    row: int | None  # first offending row; None for whole-shard defects
    check: str
    message: str

    def __str__(self) -> str:
        where = f"{self.shard}" + (f" row {self.row}" if self.row is not None else "")
        return f"{where}: {self.check}: {self.message}"


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


@dataclass(frozen=True)
class _Expect:
    vocab_size: int
    seq_len: int | None
    max_pred: int | None
    cls_id: int | None = None
    sep_id: int | None = None
    mask_id: int | None = None
    label_forbidden: tuple[int, ...] = ()  # ids that can never be a masked token's label


def verify(path: Path, vocab: Path | None = None, vocab_size: int | None = None, processes: int = 1,
           show_progress: bool = False) -> VerifyReport:
    """Check every shard under `path` (an output directory, a split directory or one
    shard), in parallel over shards."""
    path = Path(path)
    if not path.exists():
        raise DataPrepError(f"nothing to verify at {path}")
    report = VerifyReport()
    manifest_dir = _find_manifest_dir(path)
    manifest = read_json(manifest_dir / MANIFEST_NAME) if manifest_dir else None
    shards = _list_shards(path, manifest_dir, manifest, report)
    if not shards and not report.defects:
        raise DataPrepError(f"no *{SHARD_SUFFIX} shards under {path}")
    expect = _expectations(manifest_dir, manifest, vocab, vocab_size, report)
    if expect.seq_len is None and shards:  # no manifest: the first shard fixes the shape
        expect = _with_shape(expect, shards[0][0])
    tasks = [_ShardTask(str(shard), _display_name(shard, manifest_dir or path), rows, expect)
             for shard, rows in shards]
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


def _find_manifest_dir(path: Path) -> Path | None:
    for candidate in (path, path.parent, path.parent.parent):
        if candidate.is_dir() and (candidate / MANIFEST_NAME).exists():
            return candidate
    return None


def _display_name(shard: Path, base: Path) -> str:
    base = base if base.is_dir() else base.parent
    try:
        return shard.relative_to(base).as_posix()
    except ValueError:
        return str(shard)


def _list_shards(path: Path, manifest_dir: Path | None, manifest: dict | None,
                 report: VerifyReport) -> list[tuple[Path, int | None]]:
    if path.is_file():
        listed = _manifest_rows(manifest_dir, manifest)
        return [(path, listed.get(path.resolve()))]
    if manifest is None:
        return [(p, None) for p in sorted(path.rglob("*" + SHARD_SUFFIX))]
    # Only the manifest's shards under `path`: verifying one split says nothing of the other.
    root = path.resolve()
    listed = {p: rows for p, rows in _manifest_rows(manifest_dir, manifest).items() if root in p.parents}
    present = {p.resolve() for p in path.rglob("*" + SHARD_SUFFIX)}
    for extra in sorted(present - set(listed)):
        report.defects.append(Defect(_display_name(extra, manifest_dir), None, "manifest", "shard not in the manifest"))
    for missing in sorted(set(listed) - present):
        report.defects.append(Defect(_display_name(missing, manifest_dir), None, "manifest", "listed shard is missing"))
    return [(p, rows) for p, rows in listed.items() if p in present]


def _manifest_rows(manifest_dir: Path | None, manifest: dict | None) -> dict[Path, int]:
    if manifest is None:
        return {}
    return {(manifest_dir / split / entry["name"]).resolve(): entry["rows"]
            for split, info in manifest["splits"].items() for entry in info["shards"]}


def _expectations(manifest_dir: Path | None, manifest: dict | None, vocab: Path | None, vocab_size: int | None,
                  report: VerifyReport) -> _Expect:
    if vocab is None and manifest_dir is not None and (manifest_dir / "vocab.txt").exists():
        vocab = manifest_dir / "vocab.txt"
        if manifest and sha256_file(vocab) != manifest.get("vocab_sha256"):
            report.defects.append(Defect("vocab.txt", None, "manifest", "vocab.txt does not match vocab_sha256"))
    seq_len = manifest["seq_len"] if manifest else None
    max_pred = manifest["max_pred"] if manifest else None
    if vocab is not None:
        v = load_vocab(vocab)
        ids = v.special_ids()
        return _Expect(v.size, seq_len, max_pred, ids[CLS], ids[SEP], ids[MASK], (ids[PAD], ids[CLS], ids[SEP]))
    size = vocab_size or (manifest or {}).get("vocab_size")
    if size is None:
        raise DataPrepError("cannot check token ids without the vocabulary size: pass --vocab or --vocab-size")
    return _Expect(size, seq_len, max_pred)


def _with_shape(expect: _Expect, shard: Path) -> _Expect:
    try:
        with h5py.File(shard, "r") as f:
            seq_len, max_pred = f["input_ids"].shape[1], f["masked_lm_positions"].shape[1]
    except (OSError, KeyError, IndexError):
        return expect  # the shard's own checks will say what is wrong with it
    return _Expect(expect.vocab_size, seq_len, max_pred, expect.cls_id, expect.sep_id, expect.mask_id,
                   expect.label_forbidden)


@dataclass(frozen=True)
class _ShardTask:
    path: str
    name: str  # as reported: relative to the shard set
    expected_rows: int | None  # from the manifest
    expect: _Expect


@dataclass
class _ShardResult:
    rows: int | None = None  # None when the shard could not be read
    defects: list[Defect] = field(default_factory=list)
    totals: dict = field(default_factory=lambda: defaultdict(int))


def _verify_shard(task: _ShardTask) -> _ShardResult:
    result = _ShardResult()

    def defect(check: str, message: str, row: int | None = None) -> None:
        result.defects.append(Defect(task.name, row, check, message))

    expect = task.expect
    try:
        f = h5py.File(task.path, "r")
    except OSError as error:
        defect("open", f"not a readable HDF5 file ({error})")
        return result
    with f:
        missing = [spec.name for spec in FIELDS if spec.name not in f]
        if missing:
            defect("keys", f"missing datasets {missing}")
            return result
        rows = f["input_ids"].shape[0] if f["input_ids"].ndim else 0
        seq_len = expect.seq_len or (f["input_ids"].shape[1] if f["input_ids"].ndim == 2 else 0)
        max_pred = expect.max_pred or (f["masked_lm_positions"].shape[1] if f["masked_lm_positions"].ndim == 2 else 0)
        shape_ok = True
        for spec in FIELDS:
            dataset = f[spec.name]
            if dataset.dtype != spec.dtype:
                defect("dtype", f"{spec.name} is {dataset.dtype}, expected {spec.dtype}")
            wanted = expected_shape(spec, rows, seq_len, max_pred)
            if dataset.shape != wanted:
                defect("shape", f"{spec.name} has shape {dataset.shape}, expected {wanted}")
                shape_ok = False
        result.rows = rows
        if task.expected_rows is not None and task.expected_rows != rows:
            defect("manifest", f"{rows} rows, the manifest says {task.expected_rows}")
        if not shape_ok:
            return result
        for start in range(0, rows, _BLOCK_ROWS):
            block = {spec.name: f[spec.name][start:start + _BLOCK_ROWS].astype(np.int64) for spec in FIELDS}
            for check, bad in _row_checks(block, expect, seq_len).items():
                if bad.any():
                    first = int(np.argmax(bad))
                    defect(check, f"{int(bad.sum())} bad rows among rows {start}-{start + len(bad) - 1}",
                           start + first)
            _accumulate(result.totals, block, expect)
    return result


def _row_checks(b: dict[str, np.ndarray], expect: _Expect, seq_len: int) -> dict[str, np.ndarray]:
    """One boolean per row for each check: True where the row breaks it."""
    ids, mask, segments = b["input_ids"], b["input_mask"], b["segment_ids"]
    positions, labels, nsp = b["masked_lm_positions"], b["masked_lm_ids"], b["next_sentence_labels"]
    length = mask.sum(axis=1)
    real = positions != 0  # position 0 is [CLS], never masked: 0 means padding
    checks = {
        "input_ids range": ((ids < 0) | (ids >= expect.vocab_size)).any(axis=1),
        "masked_lm_ids range": ((labels < 0) | (labels >= expect.vocab_size)).any(axis=1),
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
    if expect.cls_id is not None:
        last = ids[np.arange(len(ids)), np.clip(length - 1, 0, seq_len - 1)]
        checks["special tokens"] = (ids[:, 0] != expect.cls_id) | (last != expect.sep_id)
        checks["masked labels"] |= (real & np.isin(labels, expect.label_forbidden)).any(axis=1)
    return checks


def _accumulate(stats: dict, b: dict[str, np.ndarray], expect: _Expect) -> None:
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
    if expect.mask_id is not None:
        at = np.take_along_axis(b["input_ids"], np.clip(positions, 0, mask.shape[1] - 1), axis=1)
        stats["as_mask"] += int((real & (at == expect.mask_id)).sum())
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
