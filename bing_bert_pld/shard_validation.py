"""Check a pretraining shard set: the one checker behind the trainer and `data_prep verify`.

What it checks, in the order a run meets it:
- the set (find_shard_set): a data_prep output whose shards stage did not finish
  (`.in_progress.json`, no `manifest.json`), a manifest that cannot be read, shards the
  manifest lists that are missing, shards it does not list, and (resolve_rules)
  manifest settings other than the configuration's;
- each shard's structure (check_shard): opens as HDF5, the schema's keys, dtypes and
  shapes, and the row count the manifest lists;
- every row's values, streamed in blocks of rows: ids inside the vocabulary,
  input_mask ones then zeros, segment_ids 0s then 1s inside the mask and 0 outside,
  padding 0, masked positions real-first, increasing and inside the mask, labels
  exactly at the real positions, next_sentence_labels 0/1, and (when the caller knows
  the vocabulary's ids) [CLS] first, [SEP] last, no special token as a label.
seq_len and max_pred are the configuration's when given, else the manifest's, else the
first shard's shapes (NVIDIA's sets have no manifest).

Two callers, one set of rules: validate_shard_set (the trainer) stops at the first
defect with a DataError naming file, check, row and value; `data_prep verify`
collects every Defect and adds statistics. The value scan is per shard (scan_values on
any subset of the files), so ranks split it. A block is first checked with a few
whole-block reductions that pass exactly when every row is sound; only a block that
fails them is checked row by row to say where and what, so a clean set costs little
more than reading it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import h5py
import numpy as np

from .schema import FIELDS, IN_PROGRESS_NAME, MANIFEST_NAME, SHARD_SUFFIX, expected_shape
from .shard_rules import Defect, FastCheck, Rules, block_defects


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
    manifest_sha256: Optional[str] = None  # of the manifest file's bytes; None without one
    lowercase: Optional[bool] = None  # the manifest's; None without one (NVIDIA's shards)
    manifest_dir: Optional[Path] = None  # where data_prep put manifest.json and vocab.txt

    @property
    def total_rows(self) -> int:
        return sum(self.rows)

    def identity(self) -> dict:
        """What identifies the shard set, as JSON: a resumed run compares it with the
        checkpoint's (seq_len and max_pred are the run's own settings, compared as such).
        Names are relative to the shards' common directory, so a set that moved is still
        the same set."""
        base = Path(os.path.commonpath([str(f.parent) for f in self.files])) if self.files else Path()
        return {"files": [f.relative_to(base).as_posix() for f in self.files], "rows": list(self.rows),
                "manifest_sha256": self.manifest_sha256}


# ---------------------------------------------------------------- the trainer's entry points

def validate_shard_set(path_or_glob: str | os.PathLike, seq_len: Optional[int], max_pred: Optional[int],
                       vocab_size: int, *, check_values: bool = True,
                       given_by: str = "the configuration") -> ShardSetInfo:
    """Check a directory (or glob, or single file) of shards; raise DataError at the first defect.

    seq_len / max_pred None: take them from the manifest, else from the shapes. The set
    and the structure of every file are checked before any value, so a broken last file
    is reported at once. `check_values=False` skips the value scan (it reads every row
    once), so that ranks can share it through scan_values, as the trainer does.
    """
    found = find_shard_set(path_or_glob)
    _raise_first(found.defects)
    rules, defects = resolve_rules(found, seq_len, max_pred, vocab_size, given_by=given_by)
    _raise_first(defects)
    rows = []
    for path, listed in zip(found.files, found.listed_rows):
        report = check_shard(path, found.name(path), rules, listed, fail_fast=True, values=False)
        _raise_first(report.defects)
        rows.append(report.rows)
    info = ShardSetInfo(found.files, tuple(rows), rules.seq_len, rules.max_pred, vocab_size,
                        found.vocab_sha256, found.manifest_sha256, found.lowercase, found.manifest_dir)
    if check_values:
        scan_values(info, info.files)
    return info


def scan_values(info: ShardSetInfo, files: tuple[Path, ...]) -> None:
    """Check every row of `files` (a subset of info.files, so ranks can split the scan).

    An out-of-range id fails on the device far from its cause (segment_ids 2 is an
    IndexError at the first batch); a mask with holes or labels off their positions
    train silently wrong.
    """
    rules = Rules(info.vocab_size, info.seq_len, info.max_pred)
    for path in files:
        _raise_first(check_shard(path, str(path), rules, fail_fast=True).defects)


def _raise_first(defects: list[Defect] | tuple[Defect, ...]) -> None:
    if defects:
        raise DataError(str(defects[0]))


# ---------------------------------------------------------------- the set

@dataclass(frozen=True)
class _Manifest:
    path: Path
    data: dict
    sha256: str
    finished: bool  # False: data_prep's .in_progress.json, the request before any shard list

    def listed(self) -> dict[Path, int]:
        """Resolved shard path -> rows, for every split."""
        if not self.finished:
            return {}
        return {(self.path.parent / split / entry["name"]).resolve(): entry["rows"]
                for split, info in self.data["splits"].items() for entry in info["shards"]}


@dataclass(frozen=True)
class ShardSet:
    """What is on disk, before any shard is opened: the shards to check, the manifests
    that describe them, and the defects of the set as a whole."""

    files: tuple[Path, ...]
    listed_rows: tuple[Optional[int], ...]  # the manifest's count for each file
    manifests: tuple[_Manifest, ...]  # finished ones and unfinished markers, in directory order
    defects: tuple[Defect, ...]
    base: Optional[Path]  # names are relative to it; None: full paths

    def name(self, path: Path) -> str:
        return _name(path, self.base)

    @property
    def manifest_dir(self) -> Optional[Path]:
        """The directory of the first finished manifest (where data_prep put vocab.txt)."""
        return next((m.path.parent for m in self.manifests if m.finished), None)

    @property
    def vocab_sha256(self) -> Optional[str]:
        return next((m.data.get("vocab_sha256") for m in self.manifests
                     if m.finished and m.data.get("vocab_sha256") is not None), None)

    @property
    def lowercase(self) -> Optional[bool]:
        return next((m.data.get("lowercase") for m in self.manifests
                     if m.finished and isinstance(m.data.get("lowercase"), bool)), None)

    @property
    def manifest_sha256(self) -> Optional[str]:
        digests = [m.sha256 for m in self.manifests if m.finished]
        if len(digests) <= 1:
            return digests[0] if digests else None
        # Shards from several directories (a glob): one digest over theirs, in order.
        return hashlib.sha256("".join(digests).encode()).hexdigest()


def find_shard_set(path: str | os.PathLike, *, recursive: bool = False,
                   relative_names: bool = False) -> ShardSet:
    """The shards at `path` (a directory, a glob or one file) and their manifests.

    A shard in directory D is described by D/manifest.json or, data_prep's layout
    (<out>/manifest.json, <out>/train/), D/../manifest.json. Missing listed shards are
    looked for only when `path` is a directory (all of it, or with `recursive` all
    under it); a glob or a file may pick a subset on purpose. Raises DataError when
    there is nothing to check; everything else is a Defect in the result.
    """
    text = os.fspath(path)
    scope: Optional[Path] = None  # the directory whose listed shards must all be present
    if any(c in text for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(text) if os.path.isfile(p))
        dirs = {f.parent for f in files}
    elif os.path.isdir(text):
        scope = Path(text)
        files = sorted(p for p in (scope.rglob if recursive else scope.glob)("*" + SHARD_SUFFIX) if p.is_file())
        dirs = {scope} | {f.parent for f in files}
    elif os.path.isfile(text):
        files = [Path(text)]
        dirs = {files[0].parent}
    else:
        raise DataError(f"shard directory {text} does not exist")

    by_dir = {d: _manifest_of(d) for d in sorted(dirs)}
    manifests = tuple({m.path: m for m in by_dir.values() if m is not None}.values())
    if relative_names:
        first = next((m.path.parent for m in manifests if m.finished), None)
        base = first or (scope if scope is not None else
                         Path(os.path.commonpath([str(f.parent) for f in files])) if files else Path(text).parent)
    else:
        base = None

    def name(p: Path) -> str:
        return _name(p, base)

    defects = [Defect(name(m.path), None, "unfinished",
                      f"the data_prep run that writes this shard set did not finish ({IN_PROGRESS_NAME} is "
                      f"there, {MANIFEST_NAME} is not): run the same `python -m data_prep shards` (or `all`) "
                      f"command again with --output {m.path.parent}; it keeps the shards already written")
               for m in manifests if not m.finished]
    listed_rows = []
    for f in files:
        m = by_dir[f.parent]
        listed = m.listed() if m is not None and m.finished else None
        if listed is not None and f.resolve() not in listed:
            defects.append(Defect(name(f), None, "manifest", f"shard not listed in {name(m.path)}"))
        listed_rows.append(listed.get(f.resolve()) if listed is not None else None)
    if scope is not None:
        root = scope.resolve()
        for m in manifests:
            for p in sorted(m.listed()):
                if (root in p.parents if recursive else p.parent == root) and not p.is_file():
                    defects.append(Defect(name(p), None, "manifest", f"listed in {name(m.path)} but missing"))
    if not files and not defects:
        raise DataError(f"no *{SHARD_SUFFIX} shards found at {text}")
    return ShardSet(tuple(files), tuple(listed_rows), manifests, tuple(defects), base)


def _name(path: Path, base: Optional[Path]) -> str:
    if base is not None:
        for p, b in ((path, base), (path.resolve(), base.resolve())):
            try:
                return p.relative_to(b).as_posix()
            except ValueError:
                pass
    return str(path)


def _manifest_of(directory: Path) -> Optional[_Manifest]:
    for candidate in (directory, directory.parent):
        for name, finished in ((MANIFEST_NAME, True), (IN_PROGRESS_NAME, False)):
            path = candidate / name
            if path.is_file():
                return _read_manifest(path, finished)
    return None


def _read_manifest(path: Path, finished: bool) -> _Manifest:
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest: {exc}") from exc
    try:  # the shard list is what the set is checked against: it must be whole
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        for split, info in (data["splits"].items() if finished else ()):
            for entry in info["shards"]:
                if not (isinstance(entry["name"], str) and isinstance(entry["rows"], int)):
                    raise TypeError(f"split {split!r}: shard entry {entry!r} has no name and row count")
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a data_prep manifest ({type(exc).__name__}: {exc})") from exc
    return _Manifest(path, data, hashlib.sha256(raw).hexdigest(), finished)


def resolve_rules(found: ShardSet, seq_len: Optional[int], max_pred: Optional[int], vocab_size: Optional[int],
                  *, given_by: str = "the configuration", **special) -> tuple[Rules, list[Defect]]:
    """The settings to check against: the caller's (`given_by` names where they come
    from), else the manifest's, else (seq_len, max_pred) the first readable shard's
    shapes; and a Defect for each manifest that disagrees. `special`: cls_id, sep_id,
    label_forbidden. A vocab_size that nothing gives stays None: the caller decides
    what to say."""
    given = {"seq_len": seq_len, "max_pred": max_pred, "vocab_size": vocab_size}
    values = dict(given)
    source = {key: given_by for key, value in given.items() if value is not None}
    defects = []
    for m in found.manifests:
        for key in given:
            recorded = m.data.get(key)
            if values[key] is None:
                values[key], source[key] = recorded, found.name(m.path)
            elif recorded != values[key]:
                defects.append(Defect(found.name(m.path), None, "manifest",
                                      f"'{key}' is {recorded!r}, but {source[key]} has {key}={values[key]}",
                                      recorded if isinstance(recorded, int) else None))
    recorded = {m.data.get("vocab_sha256") for m in found.manifests} - {None}
    if len(recorded) > 1:
        defects.append(Defect(found.name(found.manifests[0].path), None, "manifest",
                              "the shards' manifests name different vocabularies (vocab_sha256)"))
    if values["seq_len"] is None or values["max_pred"] is None:
        shape = _first_shape(found.files)
        if shape is not None:
            values["seq_len"] = values["seq_len"] or shape[0]
            values["max_pred"] = values["max_pred"] or shape[1]
    return Rules(values["vocab_size"], values["seq_len"], values["max_pred"], **special), defects


def _first_shape(files: tuple[Path, ...]) -> Optional[tuple[int, int]]:
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                ids, positions = f["input_ids"], f["masked_lm_positions"]
                if ids.ndim == 2 and positions.ndim == 2:
                    return ids.shape[1], positions.shape[1]
        except (OSError, KeyError, TypeError, AttributeError):
            continue  # the shard's own check says what is wrong with it
    return None


# ---------------------------------------------------------------- one shard

# Bytes of input_ids per block of rows: small enough that a block's fields stay in the
# CPU caches through the checks, large enough that per-block overhead is negligible.
_BLOCK_BYTES = 4 << 20


@dataclass
class ShardReport:
    rows: Optional[int] = None  # None when the shard could not be read
    defects: list[Defect] = field(default_factory=list)


def check_shard(path: Path, name: str, rules: Rules, listed_rows: Optional[int] = None, *,
                fail_fast: bool = False, values: bool = True,
                on_block: Optional[Callable[[dict[str, np.ndarray]], None]] = None) -> ShardReport:
    """Structure, then (with `values`) every row, of one shard. `fail_fast` stops at the
    first defect; otherwise each check reports once per block of rows, with the first
    bad row and the count. `on_block` sees every block read (for statistics)."""
    report = ShardReport()

    def defect(check: str, message: str, row: Optional[int] = None, value: Optional[int] = None) -> None:
        report.defects.append(Defect(name, row, check, message, value))

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        defect("open", f"not a readable HDF5 file ({exc})")
        return report
    with f:
        datasets = {spec.name: f.get(spec.name) for spec in FIELDS}
        missing = [key for key, ds in datasets.items() if not isinstance(ds, h5py.Dataset)]
        if missing:
            defect("keys", f"missing key(s) {', '.join(missing)}")
            return report
        ids = datasets["input_ids"]
        rows = ids.shape[0] if ids.ndim else 0
        seq_len = rules.seq_len or (ids.shape[1] if ids.ndim == 2 else 0)
        max_pred = rules.max_pred or (datasets["masked_lm_positions"].shape[1]
                                      if datasets["masked_lm_positions"].ndim == 2 else 0)
        schema_dtypes, integer, shapes = True, True, True
        for spec in FIELDS:
            ds = datasets[spec.name]
            if ds.dtype != spec.dtype:
                defect("dtype", f"{spec.name} has dtype {ds.dtype}, expected {spec.dtype}")
                schema_dtypes, integer = False, integer and ds.dtype.kind in "iu"
            want = expected_shape(spec, rows, seq_len, max_pred)
            if ds.shape != want:
                shapes = False
                if ds.ndim == 0 or ds.shape[0] != rows:
                    defect("shape", f"{spec.name} has {ds.shape[0] if ds.ndim else 0} rows but input_ids has {rows}")
                else:
                    setting = {"seq": f"seq_len={seq_len}", "pred": f"max_pred={max_pred}",
                               "scalar": "one label per row"}[spec.per_row]
                    defect("shape", f"{spec.name} has shape {ds.shape}, expected {want} ({setting})")
        report.rows = rows
        if listed_rows is not None and listed_rows != rows:
            defect("manifest", f"has {rows} rows but the manifest lists {listed_rows}", value=rows)
        if not values or not shapes or not integer or (fail_fast and report.defects):
            return report
        _scan_rows(Path(path), datasets, rows, seq_len, max_pred, rules, schema_dtypes, fail_fast, on_block, defect)
    return report


def _scan_rows(path: Path, datasets: dict[str, h5py.Dataset], rows: int, seq_len: int, max_pred: int,
               rules: Rules, fast: bool, fail_fast: bool, on_block, defect) -> None:
    step = max(1, _BLOCK_BYTES // max(1, 4 * seq_len))
    chunk = max((ds.chunks[0] for ds in datasets.values() if ds.chunks), default=0)
    if chunk:  # whole compressed chunks, so none is decompressed twice
        step = max(chunk, step // chunk * chunk)
    clean = FastCheck(min(step, rows), seq_len, max_pred) if fast else None
    with _BlockReader(path, datasets) as reader:
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            try:
                block = reader.read(start, stop)
            except (OSError, ValueError) as exc:  # a truncated or corrupt file
                defect("read", f"rows {start}-{stop - 1} cannot be read ({exc})", start)
                return
            if not fast:  # dtypes other than the schema's: compare as int64, as the loader will
                block = {key: b.astype(np.int64) for key, b in block.items()}
            if not fast or not clean(block, rules):
                found = block_defects(block, rules)
                if found and fail_fast:  # the first bad row; on one row, the first check
                    check, message, row, value, _ = min(found, key=lambda d: d[2])
                    defect(check, message, start + row, value)
                    return
                for check, message, row, value, count in found:
                    defect(check, f"{message}; {count} bad row{'s' if count > 1 else ''} among rows "
                                  f"{start}-{start + len(block['input_ids']) - 1}", start + row, value)
            if on_block is not None:
                on_block(block)
            block = None  # unmapped (or freed) before the next block is read: one block at a time


# MAP_POPULATE (Linux) maps the block's pages in one call instead of one fault per page.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


class _BlockReader:
    """Blocks of rows of every field. A contiguous field (uncompressed: data_prep's
    default) is mapped block by block, so nothing is copied and only the current block
    is mapped; others are read through h5py, which decompresses."""

    def __init__(self, path: Path, datasets: dict[str, h5py.Dataset]):
        self.datasets = datasets
        self.file = None
        # An offset exists only for contiguous storage: no chunks, no filters, not
        # external or virtual (an empty dataset's may be bogus: never read anyway).
        self.offsets = {key: ds.id.get_offset() for key, ds in datasets.items()
                        if ds.size and ds.dtype.isnative and ds.id.get_offset() is not None}
        if self.offsets:
            self.file = open(path, "rb")

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        block = {}
        for key, ds in self.datasets.items():
            offset = self.offsets.get(key)
            if offset is None:
                block[key] = ds[start:stop]
                continue
            per_row = int(np.prod(ds.shape[1:], dtype=np.int64))
            row_bytes = ds.dtype.itemsize * per_row
            first, end = offset + start * row_bytes, offset + stop * row_bytes
            aligned = first - first % mmap.ALLOCATIONGRANULARITY  # mmap offsets are page-aligned
            # ValueError when the file is shorter than the dataset claims (a truncated copy).
            mapped = mmap.mmap(self.file.fileno(), end - aligned, flags=_MAP_FLAGS, prot=mmap.PROT_READ,
                               offset=aligned)
            block[key] = np.frombuffer(mapped, ds.dtype, (stop - start) * per_row,
                                       first - aligned).reshape((stop - start,) + ds.shape[1:])
        return block

    def __enter__(self) -> "_BlockReader":
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # each map closes with the last array that views it
