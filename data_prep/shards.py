"""Stage `shards`: instance records -> globally shuffled, equal-size HDF5 shards + manifest.

The global shuffle is two-level: every record went to a uniformly random bucket when
it was made (instances.py); here each bucket is gathered from all units, permuted with
its own seeded RNG, and the buckets are concatenated in order. That is a uniform
random permutation of the whole split while holding one bucket at a time in memory.
The concatenation is cut into shards of exactly equal size: n = round(N / target) shards
of floor(N / n) rows; the last N mod n records (fewer than n) are dropped and counted.

Work is parallel over groups of shards that start in the same bucket; a finished shard
(final name present: it was renamed into place whole) is counted, not rewritten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bing_bert_pld.schema import SHARD_SUFFIX
from data_prep import manifest as manifest_io
from data_prep.errors import DataPrepError
from data_prep.fsutil import atomic_path, read_json, read_plan
from data_prep.instances import SHUFFLE_STREAM, VOCAB_FILE, unit_records_path, unit_stats_path
from data_prep.parallel import run_parallel
from data_prep.records import SPLITS, to_columns
from data_prep.shard_writer import read_source_rows, write_shard

log = logging.getLogger(__name__)

OFFSETS_FILE = "bucket_offsets.npy"


@dataclass(frozen=True)
class ShardConfig:
    rows_per_shard: int = 65536  # target; actual sizes are equal and within a factor of 1.5
    compression: str | None = None  # or "gzip" / "lzf"
    chunk_rows: int = 64  # rows per HDF5 chunk when compressed

    def check(self) -> None:
        if self.rows_per_shard < 1:
            raise DataPrepError(f"rows per shard must be at least 1, got {self.rows_per_shard}")
        if self.compression not in (None, "gzip", "lzf"):
            raise DataPrepError(f"compression must be gzip or lzf, got {self.compression!r}")
        if self.chunk_rows < 1:
            raise DataPrepError(f"chunk rows must be at least 1, got {self.chunk_rows}")

    def describe(self) -> dict:
        return {"rows_per_shard": self.rows_per_shard, "compression": self.compression,
                "chunk_rows": self.chunk_rows if self.compression else None}


@dataclass(frozen=True)
class ShardGroupTask:
    instances_dir: str
    out_dir: str
    split: int
    seed: int
    shards: tuple[int, ...]  # consecutive shard numbers
    rows: int  # per shard
    first_bucket: int
    skip: int  # records of first_bucket that belong to earlier shards
    source_names: tuple[str, ...]
    compression: str | None
    chunk_rows: int


def shard_name(index: int) -> str:
    return f"shard_{index:05d}{SHARD_SUFFIX}"


def run_shards(instances_dir: Path, out_dir: Path, config: ShardConfig, processes: int,
               show_progress: bool = True) -> dict:
    """Write both splits' shards, the vocabulary and the manifest into out_dir."""
    config.check()
    plan = read_plan(instances_dir, "instances")
    # Where each (unit, split, bucket) slice starts: one int64 array, which the workers
    # memory-map rather than receive in every task. Units x buckets grows with the
    # square of the corpus: 8 x 2 x 3,750 x 1,200 bytes = 70 MB for Wikipedia + books.
    offsets = np.zeros((len(plan["units"]), len(SPLITS), plan["buckets"] + 1), dtype=np.int64)
    unit_stats = []
    for index in range(len(plan["units"])):
        if not unit_stats_path(instances_dir, index).exists():
            raise DataPrepError(f"{instances_dir}: unit {index} is not finished; rerun the instances stage")
        stats = read_json(unit_stats_path(instances_dir, index))
        offsets[index] = stats.pop("bucket_offsets")
        unit_stats.append(stats)
    request = manifest_io.request_from_plan(plan, config.describe())
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_io.begin(out_dir, request)

    with atomic_path(instances_dir / OFFSETS_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, offsets)
    splits = {}
    for split_index, split in enumerate(SPLITS):
        splits[split] = _write_split(plan, instances_dir, out_dir, split_index, offsets[:, split_index], config,
                                     processes, show_progress)
    with atomic_path(out_dir / VOCAB_FILE) as tmp:
        tmp.write_bytes((instances_dir / VOCAB_FILE).read_bytes())
    manifest = {**request, "splits": splits, "sources": _source_summary(plan, unit_stats, splits)}
    manifest_io.finish(out_dir, manifest)
    for name, source in manifest["sources"].items():
        log.info("source %s: %s train instances (%.1f%% of train), %s validation",
                 name, f"{source['instances']['train']:,}", 100 * source["share"]["train"],
                 f"{source['instances']['validation']:,}")
    return manifest


def _write_split(plan: dict, instances_dir: Path, out_dir: Path, split_index: int, unit_offsets: np.ndarray,
                 config: ShardConfig, processes: int, show_progress: bool) -> dict:
    split = SPLITS[split_index]
    bucket_counts = np.diff(unit_offsets, axis=1).sum(axis=0)
    total = int(bucket_counts.sum())
    if total == 0:
        if split == "validation" and plan["config"]["validation_fraction"] == 0:
            return {"shards": [], "instances": 0, "dropped_to_equalize": 0}
        raise DataPrepError(f"no {split} instances: the corpus is too small"
                            + (" for --validation-fraction; raise it" if split == "validation" else ""))
    n_shards = max(1, round(total / config.rows_per_shard))
    rows = total // n_shards
    (out_dir / split).mkdir(parents=True, exist_ok=True)

    bucket_ends = np.cumsum(bucket_counts)
    groups: dict[int, list[int]] = {}
    for shard in range(n_shards):
        groups.setdefault(int(np.searchsorted(bucket_ends, shard * rows, side="right")), []).append(shard)
    tasks = [ShardGroupTask(str(instances_dir), str(out_dir / split), split_index, plan["config"]["seed"],
                            tuple(shards), rows, bucket,
                            shards[0] * rows - int(bucket_ends[bucket] - bucket_counts[bucket]),
                            tuple(plan["source_names"]), config.compression, config.chunk_rows)
             for bucket, shards in sorted(groups.items())]
    # Groups whose shards all exist (a resumed run) are counted here, without workers.
    todo = [t for t in tasks if not all((out_dir / split / shard_name(s)).exists() for s in t.shards)]
    if len(todo) < len(tasks):
        log.info("shards/%s: %d of %d shard groups already done, skipped", split, len(tasks) - len(todo), len(tasks))
    written = iter(run_parallel(write_shard_group, todo, processes, f"shards/{split}",
                                lambda r: (len(r), {"shards": len(r)}), total=sum(len(t.shards) for t in todo),
                                unit="shard", show_progress=show_progress))
    entries = []
    for task in tasks:
        entries.extend(next(written) if task in todo else _finished_entries(task))
    return {"shards": entries, "instances": rows * n_shards, "dropped_to_equalize": total - rows * n_shards}


def _finished_entries(task: ShardGroupTask) -> list[dict]:
    return [{"name": shard_name(shard), "rows": task.rows,
             "sources": read_source_rows(Path(task.out_dir) / shard_name(shard))} for shard in task.shards]


def write_shard_group(task: ShardGroupTask) -> list[dict]:
    stream = _BucketStream(task)
    entries = []
    for shard in task.shards:
        path = Path(task.out_dir) / shard_name(shard)
        records = stream.take(task.rows)
        if path.exists():
            source_rows = read_source_rows(path)
        else:
            counts = np.bincount(records["source"], minlength=len(task.source_names))
            source_rows = {name: int(n) for name, n in zip(task.source_names, counts) if n}
            write_shard(path, to_columns(records), source_rows, task.compression, task.chunk_rows)
        entries.append({"name": shard_name(shard), "rows": task.rows, "sources": source_rows})
    return entries


class _BucketStream:
    """The split's records in shuffled order, from a given bucket and offset on,
    loading one bucket at a time."""

    def __init__(self, task: ShardGroupTask) -> None:
        self.task = task
        self.bucket = task.first_bucket
        self.buffer = self._load(self.bucket)[task.skip:]

    def take(self, n: int) -> np.ndarray:
        while len(self.buffer) < n:
            self.bucket += 1
            self.buffer = np.concatenate([self.buffer, self._load(self.bucket)])
        taken, self.buffer = self.buffer[:n], self.buffer[n:]
        return taken

    def _load(self, bucket: int) -> np.ndarray:
        instances_dir = Path(self.task.instances_dir)
        offsets = np.load(instances_dir / OFFSETS_FILE, mmap_mode="r")[:, self.task.split]
        starts, ends = offsets[:, bucket], offsets[:, bucket + 1]
        parts = [np.load(unit_records_path(instances_dir, unit), mmap_mode="r")[starts[unit]:ends[unit]]
                 for unit in np.flatnonzero(ends > starts)]
        if not parts:  # possible for a small validation split
            parts = [np.load(unit_records_path(instances_dir, 0), mmap_mode="r")[:0]]
        merged = np.concatenate(parts)
        seed = np.random.SeedSequence(self.task.seed, spawn_key=(SHUFFLE_STREAM, self.task.split, bucket))
        np.random.default_rng(seed).shuffle(merged)  # in place: no second copy of the bucket
        return merged


def _source_summary(plan: dict, unit_stats: list[dict], splits: dict) -> dict:
    """Per source: what was read, what was kept, and its share of each split's rows."""
    summary = {}
    for source_id, name in enumerate(plan["source_names"]):
        units = [s for s in unit_stats if s["source_id"] == source_id]
        read = plan["sentences"]["counts"][name]
        origin = plan["sentences"]["sources"][name]["origin"] or plan["sentences"]["sources"][name]
        instances = {split: sum(e["sources"].get(name, 0) for e in splits[split]["shards"]) for split in SPLITS}
        summary[name] = {
            "kind": origin["kind"],
            "path": origin["path"],
            "input_bytes": sum(i["size"] for i in origin["inputs"]),
            "text_bytes": read["text_bytes"],
            "documents_dropped": read["documents_dropped"],
            "undecodable_sequences": read["undecodable"],
            "malformed_records": read["malformed"],
            "documents": {split: sum(s["documents"][split] for s in units) for split in SPLITS},
            "tokens": sum(s["tokens"] for s in units),
            "instances": instances,
            "share": {split: round(instances[split] / splits[split]["instances"], 6) if splits[split]["instances"] else 0.0
                      for split in SPLITS},
        }
    return summary
