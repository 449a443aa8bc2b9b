"""The shard reader: validation errors, rank split, seeded order, exact resume, reader
processes that change nothing, shutdown."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import torch

from bing_bert_pld import shard_validation
from bing_bert_pld.batch import PretrainingBatch
from bing_bert_pld.data.loader import PretrainingDataLoader
from bing_bert_pld.data.shards import Shard
from bing_bert_pld.shard_validation import DataError, validate_shard_set
from bing_bert_pld.schema import FIELD_NAMES, MANIFEST_NAME
from shard_factory import make_arrays, write_shard, write_shard_set

SEQ, PRED, VOCAB = 16, 3, 100


def rows_seen(batch: PretrainingBatch) -> list[tuple[int, int]]:
    """Row identity: tests stamp (shard, row) into the first two input_ids."""
    return [tuple(r) for r in batch.input_ids[:, :2].tolist()]


def take(loader: PretrainingDataLoader, n: int) -> list[PretrainingBatch]:
    return [next(loader) for _ in range(n)]


def assert_same(a: list[PretrainingBatch], b: list[PretrainingBatch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in FIELD_NAMES:
            assert torch.equal(getattr(x, name), getattr(y, name)), name


def write_stamped(directory, compression=None):
    """Shards of unequal sizes (one empty) whose rows carry their (shard, row) identity."""
    rows = [7, 0, 12, 5, 9]  # 33 rows
    rng = np.random.default_rng(0)
    for shard, n in enumerate(rows):
        arrays = make_arrays(n, SEQ, PRED, VOCAB, rng)
        arrays["input_ids"][:, 0] = shard
        arrays["input_ids"][:, 1] = np.arange(n)
        # h5py cannot chunk an empty dataset: the empty shard stays uncompressed.
        write_shard(directory / f"shard_{shard:05d}.hdf5", arrays, compression if n else None)
    return validate_shard_set(directory, SEQ, PRED, VOCAB)


@pytest.fixture
def stamped(tmp_path):
    return write_stamped(tmp_path)  # uncompressed: memory-mapped


def make_loader(info, **kw) -> PretrainingDataLoader:
    args = dict(micro_batch_size=4, rank=0, world_size=1, seed=1, prefetch_batches=2)
    return PretrainingDataLoader(info, **{**args, **kw})


# ---------------------------------------------------------------- batches

def test_batch_fields_are_the_schema_keys_as_int64():
    assert tuple(f.name for f in dataclasses.fields(PretrainingBatch)) == FIELD_NAMES
    arrays = make_arrays(3, SEQ, PRED, VOCAB, np.random.default_rng(0))
    batch = PretrainingBatch.from_numpy(arrays)
    assert batch.size == 3
    for name in FIELD_NAMES:
        assert getattr(batch, name).dtype == torch.int64
        assert np.array_equal(getattr(batch, name).numpy(), arrays[name])
    moved = batch.to("cpu")
    assert torch.equal(moved.masked_lm_ids, batch.masked_lm_ids)


def test_factory_rows_follow_the_schema_rules(tmp_path):
    paths = write_shard_set(tmp_path, 2, [5, 6], SEQ, PRED, VOCAB, seed=3, split="train")
    info = validate_shard_set(tmp_path / "train", SEQ, PRED, VOCAB)
    assert info.files == tuple(paths) and info.rows == (5, 6)
    with h5py.File(paths[1], "r") as f:
        mask, pos = f["input_mask"][:], f["masked_lm_positions"][:]
        ids, labels = f["input_ids"][:], f["next_sentence_labels"][:]
    lengths = mask.sum(1)
    assert np.array_equal(mask, (np.arange(SEQ) < lengths[:, None]).astype(np.int8))  # 1s then 0s
    for row, length in zip(pos, lengths):
        real = row[row != 0]
        assert len(real) >= 1 and np.all(np.diff(real) > 0) and real.max() < length
        assert np.all(row[len(real):] == 0)  # 0-padded after the real positions
    assert ids.max() < VOCAB and set(labels.tolist()) <= {0, 1}


# ---------------------------------------------------------------- validation

def expect_error(path, *fragments, seq_len=SEQ, max_pred=PRED, vocab_size=VOCAB):
    with pytest.raises(DataError) as err:
        validate_shard_set(path, seq_len, max_pred, vocab_size)
    for fragment in fragments:
        assert str(fragment) in str(err.value), (fragment, str(err.value))


def broken_shard(tmp_path, change, compression=None):
    """A valid set of two shards whose second file is passed through `change`."""
    write_shard_set(tmp_path, 2, 6, SEQ, PRED, VOCAB, seed=0, manifest=False)
    arrays = make_arrays(6, SEQ, PRED, VOCAB, np.random.default_rng(1))
    change(arrays)
    return write_shard(tmp_path / "shard_00001.hdf5", arrays, compression)


def test_missing_directory_and_no_shards(tmp_path):
    expect_error(tmp_path / "nope", "nope", "does not exist")
    expect_error(tmp_path, str(tmp_path), "no *.hdf5 shards")
    expect_error(str(tmp_path / "*.hdf5"), "no *.hdf5 shards")


def test_unreadable_file(tmp_path):
    write_shard_set(tmp_path, 1, 4, SEQ, PRED, VOCAB, seed=0, manifest=False)
    (tmp_path / "shard_00001.hdf5").write_bytes(b"not an hdf5 file")
    expect_error(tmp_path, "shard_00001.hdf5", "unreadable")


@pytest.mark.parametrize("change, fragments", [
    (lambda a: a.pop("segment_ids"), ["missing key(s) segment_ids"]),
    (lambda a: a.update(input_ids=a["input_ids"].astype(np.int64)), ["input_ids", "int64", "int32"]),
    (lambda a: a.update(input_mask=a["input_mask"].astype(np.int32)), ["input_mask", "int32", "int8"]),
    (lambda a: a.update(next_sentence_labels=a["next_sentence_labels"][:5]),
     ["next_sentence_labels has 5 rows", "input_ids has 6"]),
    (lambda a: a.update(segment_ids=a["segment_ids"][:, :8]), ["segment_ids", "(6, 8)", f"seq_len={SEQ}"]),
    (lambda a: a.update(masked_lm_ids=np.zeros((6, 5), np.int32)), ["masked_lm_ids", "(6, 5)", f"max_pred={PRED}"]),
    (lambda a: a["input_ids"].__setitem__((4, 2), VOCAB),
     ["row 4: input_ids range: input_ids holds 100 at column 2, outside [0, 100) (vocab_size=100)"]),
    (lambda a: a["masked_lm_ids"].__setitem__((2, 0), -7), ["row 2: masked_lm_ids range: masked_lm_ids holds -7 at slot 0"]),
    (lambda a: a["masked_lm_positions"].__setitem__((1, np.count_nonzero(a["masked_lm_positions"][1]) - 1), SEQ),
     ["row 1: masked positions inside input_mask: masked_lm_positions holds 16 in slot", "tokens (input_mask)"]),
    (lambda a: a["next_sentence_labels"].__setitem__(3, 2),
     ["row 3: next_sentence_labels: next_sentence_labels holds 2, expected 0 or 1"]),
    (lambda a: a["segment_ids"].__setitem__((5, 1), 2),
     ["row 5: segment_ids: segment_ids holds 2 at column 1, expected 0 or 1"]),
    (lambda a: a["input_mask"].__setitem__((0, 2), 7), ["row 0: input_mask: input_mask holds 7 at column 2, expected 0 or 1"]),
])
def test_bad_shard_names_file_and_value(tmp_path, change, fragments):
    path = broken_shard(tmp_path, change)
    expect_error(tmp_path, path.name, *fragments)


def test_configuration_mismatch_names_the_setting(tmp_path):
    write_shard_set(tmp_path, 1, 4, SEQ, PRED, VOCAB, seed=0, manifest=False)
    expect_error(tmp_path, "shard_00000.hdf5", "(4, 16)", "seq_len=32", seq_len=32)
    expect_error(tmp_path, "shard_00000.hdf5", "(4, 3)", "max_pred=4", max_pred=4)


def test_value_scan_reads_in_blocks_and_reports_the_global_row(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_validation, "_BLOCK_BYTES", 64)  # one row of 16 int32 ids per block
    path = broken_shard(tmp_path, lambda a: a["input_ids"].__setitem__((5, 0), VOCAB + 3))
    expect_error(tmp_path, path.name, "row 5: input_ids range: input_ids holds 103 at column 0")
    path = broken_shard(tmp_path, lambda a: a["input_ids"].__setitem__((5, 0), VOCAB + 3), "gzip")
    expect_error(tmp_path, path.name, "row 5: input_ids range: input_ids holds 103 at column 0")


@pytest.mark.parametrize("key, value", [("seq_len", 64), ("max_pred", 9), ("vocab_size", 30522)])
def test_manifest_mismatch_names_the_key(tmp_path, key, value):
    write_shard_set(tmp_path, 1, 4, SEQ, PRED, VOCAB, seed=0, split="train")
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest[key] = value
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    expect_error(tmp_path / "train", MANIFEST_NAME, f"'{key}' is {value}")


def test_manifest_row_counts_catch_a_truncated_shard(tmp_path):
    write_shard_set(tmp_path, 2, 4, SEQ, PRED, VOCAB, seed=0, split="train")
    write_shard(tmp_path / "train" / "shard_00001.hdf5", make_arrays(3, SEQ, PRED, VOCAB, np.random.default_rng(0)))
    expect_error(tmp_path / "train", "shard_00001.hdf5", "has 3 rows", "lists 4")


def test_gzip_and_plain_shards_read_the_same(tmp_path):
    infos = [validate_shard_set(
        write_shard_set(tmp_path / str(c), 2, [70, 50], SEQ, PRED, VOCAB, seed=5, compression=c)[0].parent,
        SEQ, PRED, VOCAB) for c in (None, "gzip")]
    with h5py.File(infos[1].files[0], "r") as f:
        assert f["input_ids"].compression == "gzip" and f["input_ids"].chunks == (64, SEQ)
    with make_loader(infos[0], micro_batch_size=8) as plain, make_loader(infos[1], micro_batch_size=8) as gz:
        assert_same(take(plain, 20), take(gz, 20))


# ---------------------------------------------------------------- order and ranks

@pytest.mark.parametrize("batch_size, drop_last, per_rank", [(4, True, 4), (8, True, 2), (4, False, 5)])
def test_ranks_are_disjoint_and_cover_the_epoch(stamped, batch_size, drop_last, per_rank):
    everything = {(s, r) for s, n in enumerate(stamped.rows) for r in range(n)}
    seen = []
    for rank in range(2):
        with make_loader(stamped, micro_batch_size=batch_size, rank=rank, world_size=2,
                         drop_last=drop_last) as loader:
            assert loader.batches_per_epoch == per_rank  # equal on every rank
            batches = take(loader, per_rank)
            assert all(b.size == batch_size for b in batches)
            seen.append([row for b in batches for row in rows_seen(b)])
    if drop_last:  # disjoint, and only the remainder of the last round is skipped
        assert len(set(seen[0] + seen[1])) == len(seen[0]) + len(seen[1]) == 33 - 33 % (2 * batch_size)
        assert set(seen[0] + seen[1]) <= everything
    else:  # every row, padded with 2 * 4 * 5 - 33 = 7 rows from the start of the epoch
        counts = Counter(seen[0] + seen[1])
        assert set(counts) == everything and sorted(counts.values()) == [1] * 26 + [2] * 7


def test_epoch_order_is_shards_in_turn_then_rows_shuffled(stamped):
    # The documented order, pinned exactly: old checkpoints resume only if it never changes.
    seed, epoch = 1, 1
    shard_order = np.random.default_rng([seed, epoch, 0, 0]).permutation(len(stamped.rows))
    expected = [(int(s), int(r)) for s in shard_order
                for r in np.random.default_rng([seed, epoch, 1, s]).permutation(stamped.rows[s])]
    with make_loader(stamped, seed=seed) as loader:
        loader.load_state_dict({"epoch": epoch, "batches_consumed_in_epoch": 0, "seed": seed})
        rows = [row for b in take(loader, loader.batches_per_epoch) for row in rows_seen(b)]
    assert rows == expected[:32]


def test_order_is_a_pure_function_of_seed_and_epoch(stamped):
    def epochs(seed):
        with make_loader(stamped, seed=seed) as loader:
            batches = take(loader, 2 * loader.batches_per_epoch)
        rows = [row for b in batches for row in rows_seen(b)]
        return rows[:32], rows[32:]

    first, again, other = epochs(1), epochs(1), epochs(2)
    assert first == again
    assert first[0] != other[0] and first[1] != other[1]
    assert first[0] != first[1]  # a new permutation every epoch
    assert len(set(first[0])) == len(set(first[1])) == 32


def test_resume_continues_with_exactly_the_same_batches(stamped):
    with make_loader(stamped, rank=1, world_size=2, prefetch_batches=3) as straight:
        expected = take(straight, 12)  # 4 batches per epoch: crosses two epoch boundaries
    for k in (0, 3, 4, 5):
        with make_loader(stamped, rank=1, world_size=2, prefetch_batches=3) as first:
            take(first, k)
            state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
        assert state == {"epoch": k // 4, "batches_consumed_in_epoch": k % 4, "seed": 1}
        with make_loader(stamped, rank=1, world_size=2, prefetch_batches=3) as resumed:
            resumed.load_state_dict(state)
            assert_same(take(resumed, 12 - k), expected[k:])


def test_load_state_dict_refuses_another_seed(stamped):
    with make_loader(stamped) as loader, pytest.raises(ValueError, match="seed 7"):
        loader.load_state_dict({"epoch": 0, "batches_consumed_in_epoch": 0, "seed": 7})


def test_too_little_data_for_one_round(stamped):
    with pytest.raises(DataError, match="33 rows"):
        make_loader(stamped, micro_batch_size=17, world_size=2)


# ---------------------------------------------------------------- thread (num_workers=1)

def test_close_stops_the_prefetch_thread(stamped):
    before = set(threading.enumerate())
    loader = make_loader(stamped)
    next(loader)
    thread = loader._prefetcher.thread
    assert thread.daemon and thread.is_alive()
    loader.close()
    assert not thread.is_alive() and set(threading.enumerate()) == before
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)


def test_dropping_a_loader_stops_its_thread(stamped):
    loader = make_loader(stamped)
    next(loader)
    thread = loader._prefetcher.thread
    del loader
    thread.join(timeout=5)
    assert not thread.is_alive()


# ---------------------------------------------------------------- read errors

@pytest.mark.parametrize("num_workers", [1, 2])
def test_an_unreadable_shard_is_named_in_the_callers_error(tmp_path, num_workers):
    paths = write_shard_set(tmp_path, 2, 8, SEQ, PRED, VOCAB, seed=0)
    info = validate_shard_set(tmp_path, SEQ, PRED, VOCAB)
    paths[0].write_bytes(b"truncated")  # the file changed after validation
    with make_loader(info, num_workers=num_workers) as loader:
        with pytest.raises(OSError, match="shard_00000.hdf5: unreadable shard"):
            take(loader, 4)
        if num_workers > 1:  # reader processes (1 is a thread)
            assert multiprocessing.active_children() == []  # an error stops every reader


@pytest.mark.parametrize("num_workers", [1, 2])
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_a_shard_shorter_than_validated_is_named_in_the_callers_error(tmp_path, num_workers, compression):
    paths = write_shard_set(tmp_path, 2, 8, SEQ, PRED, VOCAB, seed=0, compression=compression)
    info = validate_shard_set(tmp_path, SEQ, PRED, VOCAB)
    write_shard(paths[1], make_arrays(2, SEQ, PRED, VOCAB, np.random.default_rng(0)), compression)
    with make_loader(info, num_workers=num_workers) as loader:
        with pytest.raises(DataError, match="shard_00001.hdf5: IndexError") as err:
            take(loader, 4)
    if num_workers > 1:  # where the reader process raised travels with the error
        assert "in the reader process" in str(err.value.__cause__)


def test_a_memory_mapped_field_matches_h5py_behind_a_user_block(tmp_path):
    arrays = make_arrays(6, SEQ, PRED, VOCAB, np.random.default_rng(0))
    path = tmp_path / "shard.hdf5"
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in arrays.items():
            f[name] = array
    shard = Shard(path)
    assert all(isinstance(f, np.ndarray) for f in shard._fields.values())  # mapped, not h5py
    rows = np.array([4, 0, 4, 2])
    for name, got in shard.read(rows).items():
        assert np.array_equal(got, arrays[name][rows]), name
    shard.close()


# ---------------------------------------------------------------- reader processes

def reader_pids(loader: PretrainingDataLoader) -> list[int]:
    return [p.pid for p in loader._prefetcher._processes]


def assert_gone(pids: list[int], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
              for pid in pids):
        assert time.monotonic() < deadline, f"reader processes {pids} still running"
        time.sleep(0.05)


@pytest.mark.parametrize("num_workers", [2, 3])
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_workers_yield_exactly_the_single_thread_batches(tmp_path, num_workers, compression):
    # Rank 1 of 2 with padding: 5 batches an epoch, not a multiple of the workers.
    info = write_stamped(tmp_path, compression)
    args = dict(rank=1, world_size=2, drop_last=False)
    with make_loader(info, **args) as single:
        expected = take(single, 2 * single.batches_per_epoch)
    with make_loader(info, num_workers=num_workers, **args) as loader:
        assert_same(take(loader, len(expected)), expected)


def test_num_workers_must_be_positive(stamped):
    with pytest.raises(ValueError, match="num_workers=0"):
        make_loader(stamped, num_workers=0)


@pytest.mark.parametrize("num_workers", [2, 3])
def test_resume_with_workers_continues_with_the_same_batches(stamped, num_workers):
    with make_loader(stamped) as single:
        expected = take(single, 12)  # 8 batches an epoch
    for k in (3, 8, 9):
        with make_loader(stamped, num_workers=num_workers) as first:
            take(first, k)
            state = first.state_dict()
        assert state == {"epoch": k // 8, "batches_consumed_in_epoch": k % 8, "seed": 1}
        with make_loader(stamped, num_workers=num_workers) as resumed:
            resumed.load_state_dict(state)
            assert_same(take(resumed, 12 - k), expected[k:])
    with make_loader(stamped, num_workers=num_workers) as loader:  # rewind a running loader
        take(loader, 5)
        loader.load_state_dict({"epoch": 0, "batches_consumed_in_epoch": 2, "seed": 1})
        assert_same(take(loader, 4), expected[2:6])


def test_close_and_collection_stop_the_reader_processes(stamped):
    loader = make_loader(stamped, num_workers=3)
    next(loader)
    pids = reader_pids(loader)
    assert len(pids) == 3 and all(psutil.pid_exists(pid) for pid in pids)
    loader.close()
    assert multiprocessing.active_children() == []
    assert_gone(pids, within=0)
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)

    loader = make_loader(stamped, num_workers=2)
    next(loader)
    pids = reader_pids(loader)
    del loader
    assert_gone(pids)
    assert multiprocessing.active_children() == []


def test_a_killed_reader_process_is_an_error_not_a_hang(stamped):
    with make_loader(stamped, num_workers=2, prefetch_batches=2) as loader:
        next(loader)
        victim = loader._prefetcher._processes[1]
        victim.kill()
        victim.join()
        with pytest.raises(RuntimeError, match="pretraining-reader-1.*exit code -9"):
            take(loader, 8)
        assert multiprocessing.active_children() == []


LEAVE_WITHOUT_CLOSING = """
    import os, sys, time
    from bing_bert_pld.data.loader import PretrainingDataLoader
    from bing_bert_pld.shard_validation import validate_shard_set

    if __name__ == "__main__":
        loader = PretrainingDataLoader(validate_shard_set(sys.argv[1], {SEQ}, {PRED}, {VOCAB}),
                                       micro_batch_size=4, rank=0, world_size=1, seed=1,
                                       num_workers=2)
        next(loader)
        print(" ".join(str(p.pid) for p in loader._prefetcher._processes), flush=True)
        if sys.argv[2] == "wait":
            time.sleep(60)
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_readers_end_with_their_process(stamped, tmp_path, how):
    # "exit": the interpreter exits without close(); "kill": it is killed with SIGKILL.
    script = tmp_path / "leave.py"
    script.write_text(textwrap.dedent(LEAVE_WITHOUT_CLOSING.format(SEQ=SEQ, PRED=PRED, VOCAB=VOCAB)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # A file, not a pipe: after SIGKILL, Python's resource tracker warns about the
    # semaphores it cleans up, and it may outlive the child.
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        child = subprocess.Popen([sys.executable, str(script), str(stamped.files[0].parent),
                                  "wait" if how == "kill" else "exit"],
                                 stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        pids = [int(pid) for pid in child.stdout.readline().split()]
        assert len(pids) == 2, stderr.read_text()
        if how == "kill":
            child.kill()
        assert child.wait(timeout=30) == (-9 if how == "kill" else 0)
        assert_gone(pids)
    finally:
        child.kill()
        child.wait()
