"""Synthetic shard sets in the exact pretraining schema, for tests.

The data is learnable, so a tiny model's loss falls in integration tests: each
sequence is an arithmetic progression of ids (modulo a small range), so a masked token
follows from its neighbours; the NSP label is 0 (BERT's IsNext) when segment B
continues segment A's progression and 1 when it restarts at a random id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from bing_bert_pld.schema import FIELDS, MANIFEST_NAME, expected_shape

MASK_ID = 4  # ids 0-4 stand for [PAD] and other specials; real tokens start after
FIRST_TOKEN = 5
MAX_TOKENS = 50  # a small id range keeps tiny models able to learn the progressions
GZIP_CHUNK_ROWS = 64  # explicit row chunks: h5py's automatic ones make random reads slow


def make_arrays(rows: int, seq_len: int, max_pred: int, vocab_size: int,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One shard's worth of valid rows, keyed and typed as in schema.FIELDS."""
    if vocab_size <= FIRST_TOKEN or seq_len < 4 or max_pred < 1:
        raise ValueError(f"need vocab_size > {FIRST_TOKEN}, seq_len >= 4, max_pred >= 1")
    n_tokens = min(MAX_TOKENS, vocab_size - FIRST_TOKEN)
    out = {f.name: np.zeros(expected_shape(f, rows, seq_len, max_pred), f.dtype) for f in FIELDS}
    for r in range(rows):
        length = int(rng.integers(max(4, seq_len // 2), seq_len + 1))
        split = length // 2
        step = int(rng.integers(1, 4))
        tokens = (rng.integers(n_tokens) + step * np.arange(length)) % n_tokens
        is_random_next = int(rng.integers(2))
        if is_random_next:
            tokens[split:] = (rng.integers(n_tokens) + step * np.arange(length - split)) % n_tokens
        ids = tokens + FIRST_TOKEN
        # Never position 0: a 0 in masked_lm_positions means padding.
        n_pred = min(max_pred, length - 1, max(1, round(0.15 * length)))
        positions = np.sort(rng.choice(np.arange(1, length), n_pred, replace=False))
        out["masked_lm_positions"][r, :n_pred] = positions
        out["masked_lm_ids"][r, :n_pred] = ids[positions]
        ids[positions] = MASK_ID
        out["input_ids"][r, :length] = ids
        out["input_mask"][r, :length] = 1
        out["segment_ids"][r, split:length] = 1
        out["next_sentence_labels"][r] = is_random_next
    return out


def write_shard(path: Path, arrays: dict[str, np.ndarray], compression: str | None = None) -> Path:
    """Write `arrays` as they are (tests pass broken ones on purpose)."""
    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            chunks = None
            if compression and array.ndim:
                chunks = (max(1, min(GZIP_CHUNK_ROWS, array.shape[0])),) + array.shape[1:]
            f.create_dataset(name, data=array, compression=compression, chunks=chunks)
    return path


def write_shard_set(directory: str | Path, n_shards: int, rows_per_shard: int | Sequence[int],
                    seq_len: int, max_pred: int, vocab_size: int, seed: int,
                    compression: str | None = None, manifest: bool | None = None,
                    split: str | None = None) -> list[Path]:
    """`n_shards` files shard_00000.hdf5 ... in `directory`, or in `directory/split` with
    the manifest in `directory` (data_prep's layout; a second split joins the manifest
    the first one wrote). A manifest needs a split: `manifest` defaults to whether one
    is given. Returns the shard paths."""
    manifest = split is not None if manifest is None else manifest
    if manifest and split is None:
        raise ValueError("a manifest lists its shards by split: pass split= (data_prep's layout)")
    directory = Path(directory)
    shard_dir = directory / split if split else directory
    shard_dir.mkdir(parents=True, exist_ok=True)
    rows = [rows_per_shard] * n_shards if isinstance(rows_per_shard, int) else list(rows_per_shard)
    if len(rows) != n_shards:
        raise ValueError(f"{len(rows)} row counts for {n_shards} shards")
    rng = np.random.default_rng(seed)
    paths = [write_shard(shard_dir / f"shard_{i:05d}.hdf5",
                         make_arrays(n, seq_len, max_pred, vocab_size, rng), compression)
             for i, n in enumerate(rows)]
    if manifest:
        listed = [{"name": p.name, "rows": n} for p, n in zip(paths, rows)]
        path = directory / MANIFEST_NAME
        splits = json.loads(path.read_text())["splits"] if path.exists() else {}
        path.write_text(json.dumps({
            "format_version": 1, "seq_len": seq_len, "max_pred": max_pred, "vocab_size": vocab_size,
            "vocab_sha256": "", "lowercase": True,
            "masking": {"kind": "synthetic", "mask_id": MASK_ID}, "seed": seed,
            "splits": {**splits, split: {"shards": listed, "instances": sum(rows)}},
            "sources": {"synthetic": "tests/shard_factory.py"}, "inputs": []}, indent=2))
    return paths
