"""Validate a shard set before training: one clear error instead of a failure hours in.

Every bad input (missing or unreadable shard, wrong keys or dtypes, rows that disagree,
a sequence length or prediction count other than the configuration's, ids outside the
vocabulary, a manifest that disagrees) becomes one `DataError` naming the file and the
value. The structure check is cheap; the value scan reads every id once, in blocks, so
the trainer splits it across ranks (`scan_values` on a subset of the files).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from .schema import FIELD_NAMES, FIELDS, MANIFEST_NAME, SHARD_SUFFIX, expected_shape


class DataError(ValueError):
    """A shard set that training must not start on."""


@dataclass(frozen=True)
class ShardSetInfo:
    """A validated shard set: the files, in a fixed order, and the rows of each."""

    files: tuple[Path, ...]
    rows: tuple[int, ...]
    seq_len: int
    max_pred: int
    vocab_size: int
    vocab_sha256: Optional[str] = None  # from data_prep's manifest, when there is one

    @property
    def total_rows(self) -> int:
        return sum(self.rows)


# ---------------------------------------------------------------- validation

# Bytes per read when scanning values, so a multi-GB shard costs little memory.
_SCAN_BYTES = 16 << 20


def validate_shard_set(path_or_glob: str | os.PathLike, seq_len: int, max_pred: int,
                       vocab_size: int, *, check_values: bool = True) -> ShardSetInfo:
    """Check a directory (or glob, or single file) of shards against the configuration.

    Raises DataError on the first problem. The structure of every file is checked before
    any value scan, so a broken last file is reported at once. `check_values=False`
    skips the scan (it reads all ids once), so that ranks can share it through
    scan_values, as the trainer does.
    """
    files = _find_shards(path_or_glob)
    config = {"seq_len": seq_len, "max_pred": max_pred, "vocab_size": vocab_size}
    manifests = {d: _load_manifest(d, config) for d in sorted({f.parent for f in files})}
    rows = tuple(_check_structure(f, seq_len, max_pred) for f in files)
    for f, n in zip(files, rows):
        _check_listed_rows(f, n, manifests[f.parent])
    recorded = {found[1].get("vocab_sha256") for found in manifests.values() if found is not None}
    if len(recorded - {None}) > 1:
        raise DataError(f"{path_or_glob}: the shards' manifests name different vocabularies")
    info = ShardSetInfo(files, rows, seq_len, max_pred, vocab_size,
                        next(iter(recorded - {None}), None))
    if check_values:
        scan_values(info, files)
    return info


def scan_values(info: ShardSetInfo, files: tuple[Path, ...]) -> None:
    """Range-check every id in `files` (a subset of info.files, so ranks can split the scan).

    Token ids index the embedding, positions index the sequence, labels the NSP classes:
    an out-of-range value would fail on the device, far from its cause.
    """
    bounds = {"input_ids": (info.vocab_size, "vocab_size"),
              "masked_lm_ids": (info.vocab_size, "vocab_size"),
              "masked_lm_positions": (info.seq_len, "seq_len"),
              "next_sentence_labels": (2, "NSP classes")}
    for f in files:
        with h5py.File(f, "r") as shard:  # opened once for all four fields
            for key, (high, what) in bounds.items():
                _check_values(f, shard[key], high, what)


def _find_shards(path_or_glob: str | os.PathLike) -> tuple[Path, ...]:
    text = os.fspath(path_or_glob)
    if any(c in text for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(text))
    elif os.path.isdir(text):
        files = sorted(Path(text).glob("*" + SHARD_SUFFIX))
    elif os.path.isfile(text):
        files = [Path(text)]
    else:
        raise DataError(f"shard directory {text} does not exist")
    if not files:
        raise DataError(f"no *{SHARD_SUFFIX} shards found at {text}")
    return tuple(files)


def _load_manifest(directory: Path, config: dict[str, int]) -> tuple[Path, dict] | None:
    """The manifest of a shard directory, checked against the configuration."""
    # data_prep writes <out>/manifest.json beside <out>/train/; NVIDIA sets have none.
    path = next((p for p in (directory / MANIFEST_NAME, directory.parent / MANIFEST_NAME)
                 if p.is_file()), None)
    if path is None:
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest: {exc}") from exc
    for key, wanted in config.items():
        if manifest.get(key) != wanted:
            raise DataError(f"{path}: manifest key '{key}' is {manifest.get(key)!r} "
                            f"but the configuration has {key}={wanted}")
    return path, manifest


def _check_listed_rows(shard: Path, rows: int, found: tuple[Path, dict] | None) -> None:
    # Only a manifest in the parent tells which split the directory is (<out>/train);
    # its row counts catch a truncated or mixed-up copy.
    if found is None or found[0].parent != shard.parent.parent:
        return
    path, manifest = found
    split = manifest.get("splits", {}).get(shard.parent.name, {})
    listed = {s["name"]: s["rows"] for s in split.get("shards", [])}
    if shard.name in listed and listed[shard.name] != rows:
        raise DataError(f"{shard}: has {rows} rows but {path} lists {listed[shard.name]}")


def _check_structure(path: Path, seq_len: int, max_pred: int) -> int:
    """Keys, dtypes and shapes of one shard; returns its row count."""
    try:
        shard = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: unreadable HDF5 file: {exc}") from exc
    with shard:
        missing = [name for name in FIELD_NAMES if not isinstance(shard.get(name), h5py.Dataset)]
        if missing:
            raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
        rows = shard["input_ids"].shape[0] if shard["input_ids"].ndim else 0
        for field in FIELDS:
            ds = shard[field.name]
            if ds.dtype != field.dtype:
                raise DataError(f"{path}: {field.name} has dtype {ds.dtype}, expected {field.dtype}")
            if ds.ndim == 0 or ds.shape[0] != rows:
                raise DataError(f"{path}: {field.name} has {ds.shape[0] if ds.ndim else 0} rows "
                                f"but input_ids has {rows}")
            want = expected_shape(field, rows, seq_len, max_pred)
            if ds.shape != want:
                setting = {"seq": f"seq_len={seq_len}", "pred": f"max_pred={max_pred}",
                           "scalar": "one label per row"}[field.per_row]
                raise DataError(f"{path}: {field.name} has shape {ds.shape}, expected {want} ({setting})")
    return rows


def _check_values(path: Path, ds: h5py.Dataset, high: int, what: str) -> None:
    """Every value of the dataset must be in [0, high); read in blocks of whole HDF5 chunks."""
    key = ds.name.lstrip("/")
    row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
    step = max(1, _SCAN_BYTES // max(1, row_bytes))
    if ds.chunks:  # whole compressed chunks, so none is decompressed twice
        step = max(ds.chunks[0], step // ds.chunks[0] * ds.chunks[0])
    for start in range(0, ds.shape[0], step):
        block = ds[start:start + step]
        if block.size and (block.min() < 0 or block.max() >= high):
            bad = tuple(np.argwhere((block < 0) | (block >= high))[0])
            raise DataError(f"{path}: {key} holds {block[bad]} at row {start + bad[0]}, "
                            f"outside [0, {high}) ({what}={high})")
