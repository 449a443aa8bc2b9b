"""Training-side reader of sharded HDF5 pretraining data (NVIDIA's layout, see schema.py).

Design choices:
- The shard set was validated first (shard_validation.py): this module trusts its
  ShardSetInfo and reports only what changes on disk afterwards.
- The order of an epoch is a pure function of (seed, epoch): a seeded permutation of
  the shards, then a seeded permutation of the rows inside each shard. The rows, in
  that order, are cut into micro-batches and rank r of W takes global batches
  r, r + W, r + 2W, ... Every rank gets the same number of batches, so a collective
  never waits for a rank that ran out of data.
- Because the order is pure, a resume position is just (epoch, batches handed to the
  caller): the loader jumps there without replaying the epoch.
- Readers run beside the caller and read ahead into bounded buffers; h5py objects live
  only in them. With num_workers=1 it is one daemon thread. h5py holds the GIL, so more
  readers are processes: reader w of n reads batches w, w + n, ... of the same pure
  schedule, and the caller takes them strictly in turn, so the batches, state_dict()
  and errors do not depend on n. Readers are stopped at close(), at garbage collection
  and at interpreter exit, and a reader process also stops when its caller dies, so
  none keeps running without its loader.
- Rows are taken with numpy indexing, ~20x faster than h5py's per-row reads:
  uncompressed shards (data_prep's default) are memory-mapped; compressed ones are
  copied into the reader's memory chunk by chunk as their rows are first needed, so
  each chunk is decompressed once per reader while its shard is open.
"""

from __future__ import annotations

import functools
import mmap
import multiprocessing
import pickle
import queue
import signal
import threading
import traceback
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Callable, Mapping

import h5py
import numpy as np

from .batch import PretrainingBatch
from .schema import FIELD_NAMES, FIELDS, expected_shape
from .shard_validation import DataError, ShardSetInfo

__all__ = ["PretrainingDataLoader"]


# ---------------------------------------------------------------- epoch order

@functools.lru_cache(maxsize=4)
def _epoch_layout(seed: int, epoch: int, rows: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Shard order of an epoch, and where each shard ends in the epoch's row sequence."""
    # Fixed-length seed keys: numpy's SeedSequence ignores trailing zeros, so keys of
    # different lengths could collide.
    order = np.random.default_rng([seed, epoch, 0, 0]).permutation(len(rows))
    ends = np.cumsum(np.asarray(rows, dtype=np.int64)[order])
    return order, ends


@functools.lru_cache(maxsize=8)
def _row_order(seed: int, epoch: int, shard: int, rows: int) -> np.ndarray:
    # One stream per (epoch, shard): a resume draws nothing for the shards it skips.
    return np.random.default_rng([seed, epoch, 1, shard]).permutation(rows)


@dataclass(frozen=True)
class _Schedule:
    """Which rows make batch `index` of `epoch` on this rank: pure, shared with the thread."""

    rows: tuple[int, ...]
    micro_batch_size: int
    rank: int
    world_size: int
    seed: int
    batches_per_epoch: int

    def segments(self, epoch: int, index: int) -> list[tuple[int, np.ndarray]]:
        """(shard, row indices in shuffled order) pieces; a batch may span shards."""
        order, ends = _epoch_layout(self.seed, epoch, self.rows)
        total = int(ends[-1])
        pos = (index * self.world_size + self.rank) * self.micro_batch_size
        remaining, pieces = self.micro_batch_size, []
        while remaining:
            at = pos % total  # wraps only when drop_last=False pads the last batches
            k = int(np.searchsorted(ends, at, side="right"))  # skips empty shards
            shard = int(order[k])
            first = at - (int(ends[k]) - self.rows[shard])
            take = min(remaining, int(ends[k]) - at)
            pieces.append((shard, _row_order(self.seed, epoch, shard, self.rows[shard])[first:first + take]))
            pos, remaining = pos + take, remaining - take
        return pieces

    def advance(self, epoch: int, index: int, steps: int = 1) -> tuple[int, int]:
        """The position `steps` batches after (epoch, index)."""
        index += steps
        return epoch + index // self.batches_per_epoch, index % self.batches_per_epoch


# ---------------------------------------------------------------- reading

class _InMemory:
    """A field that cannot be mapped (compressed, chunked): copied into memory block by
    block of chunk rows as its rows are first needed. Reading h5py rows directly costs
    ~2 ms for the six fields of a 64-row batch even with every chunk in h5py's cache,
    3x more than this; the price is memory, up to the field's uncompressed size per
    reader (NVIDIA's loader holds whole shards too)."""

    def __init__(self, ds: h5py.Dataset):
        self._ds = ds
        self._block = ds.chunks[0] if ds.chunks else _BLOCK_ROWS
        self._array = np.empty(ds.shape, ds.dtype)  # pages are committed as blocks arrive
        self._loaded = np.zeros(-(-ds.shape[0] // self._block), dtype=bool)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        blocks = np.unique(rows // self._block)
        for b in blocks[~self._loaded[blocks]]:
            # Whole chunks, each read (and decompressed) once while the shard is open.
            block = np.s_[b * self._block:min((b + 1) * self._block, len(self._array))]
            self._ds.read_direct(self._array, block, block)
            self._loaded[b] = True
        return self._array[rows]


_BLOCK_ROWS = 4096  # rows per read of an unchunked field that cannot be mapped (compact, external)


class _Shard:
    """One open shard. Uncompressed (contiguous) fields are memory-mapped, so readers and
    ranks share the page cache; others are copied into memory as they are needed. Either
    way rows are taken with numpy indexing, ~20x faster than h5py's per-row reads."""

    def __init__(self, path: Path):
        self._file = h5py.File(path, "r")
        self._fields: dict[str, np.ndarray | _InMemory] = {}
        try:
            self._open_fields(path)
        except BaseException:
            self.close()
            raise

    def _open_fields(self, path: Path) -> None:
        mapped = None
        for name in FIELD_NAMES:
            ds = self._file[name]
            # An offset exists only for contiguous storage: no chunks, no filters, not
            # external or virtual (an empty dataset's may be bogus: never read anyway).
            offset = ds.id.get_offset()
            if offset is None or ds.size == 0 or not ds.dtype.isnative:
                self._fields[name] = _InMemory(ds)
                continue
            if mapped is None:
                with open(path, "rb") as f:
                    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            # ValueError if the file is shorter than the dataset claims.
            self._fields[name] = np.frombuffer(mapped, ds.dtype, ds.size, offset).reshape(ds.shape)

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The rows, in the order given (repeats appear when a tiny set is padded)."""
        return {name: field[rows] for name, field in self._fields.items()}

    def close(self) -> None:
        self._fields.clear()  # the map is unmapped with the last array viewing it
        self._file.close()


class _OpenShards:
    """The shards a producer reads. Only the shards of the current batch stay open, so a
    set of thousands of shards never exhausts file handles."""

    def __init__(self, files: tuple[Path, ...]):
        self._files = files
        self._open: dict[int, _Shard] = {}

    def read(self, pieces: list[tuple[int, np.ndarray]]) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {name: [] for name in FIELD_NAMES}
        keep = {s for s, _ in pieces}
        for shard, rows in pieces:
            path = self._files[shard]
            try:
                arrays = self._get(shard, keep).read(rows)
            except OSError as exc:
                raise OSError(f"{path}: unreadable shard: {exc}") from exc
            except (KeyError, IndexError, ValueError) as exc:  # the file changed since validation
                raise DataError(f"{path}: {type(exc).__name__}: {exc}") from exc
            for name in FIELD_NAMES:
                parts[name].append(arrays[name])
        return {name: p[0] if len(p) == 1 else np.concatenate(p) for name, p in parts.items()}

    def _get(self, shard: int, keep: set[int]) -> _Shard:
        if shard not in self._open:
            for old in [s for s in self._open if s not in keep]:
                self._open.pop(old).close()
            self._open[shard] = _Shard(self._files[shard])
        return self._open[shard]

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()


def _produce(schedule: _Schedule, files: tuple[Path, ...], start: tuple[int, int], step: int,
             send: Callable[[Any], bool]) -> None:
    """Sends (epoch, index, arrays) for the batches at `start` and every `step`-th after it,
    until `send` returns False (stopped). An error is sent in place of its batch and ends it."""
    shards = _OpenShards(files)
    epoch, index = start
    try:
        while send((epoch, index, shards.read(schedule.segments(epoch, index)))):
            epoch, index = schedule.advance(epoch, index, step)
    except BaseException as exc:  # re-raised by the consumer
        send(exc)
    finally:
        shards.close()


# ---------------------------------------------------------------- one thread (num_workers=1)

def _put(q: queue.Queue, stop: threading.Event, item: Any) -> bool:
    # A timed put, so a stop request reaches a producer blocked on a full queue.
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _put_batch(q: queue.Queue, stop: threading.Event, item: Any) -> bool:
    # Arrays become a PretrainingBatch (the int64 copy) here, on the reader thread, not
    # in the training loop that calls get().
    if not isinstance(item, BaseException):
        epoch, index, arrays = item
        item = (epoch, index, PretrainingBatch.from_numpy(arrays))
    return _put(q, stop, item)


def _stop_thread(stop: threading.Event, thread: threading.Thread) -> None:
    stop.set()
    if thread is not threading.current_thread():  # a GC pass may run on the thread itself
        thread.join(timeout=10)


class _Prefetcher:
    """A producer thread from one start position; replaced, not rewound, on resume."""

    def __init__(self, schedule: _Schedule, files: tuple[Path, ...], start: tuple[int, int], depth: int):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        stop = threading.Event()
        send = functools.partial(_put_batch, self.queue, stop)
        self.thread = threading.Thread(target=_produce, args=(schedule, files, start, 1, send),
                                       name="pretraining-prefetch", daemon=True)
        self.thread.start()
        # Runs at close(), when this object is collected, or at interpreter exit; it holds
        # no reference to self, so a forgotten loader can still be collected.
        self.stop = weakref.finalize(self, _stop_thread, stop, self.thread)

    def get(self) -> Any:
        while True:
            try:
                item = self.queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise RuntimeError("the prefetch thread stopped without a batch or an error")
        return item  # (epoch, index, batch) or the producer's error


# ---------------------------------------------------------------- reader processes (num_workers>1)

# Not fork: a training process has threads (torch's OpenMP pool, DeepSpeed/NCCL, this
# module's own prefetch threads), fork copies only the calling one, so a lock another
# thread holds stays locked forever in the child, and CUDA cannot be used after fork.
# The forkserver is a fresh single-threaded process, started once per process (~1 s: it
# imports this module and torch), that forks each reader in a few ms; spawn would import
# torch again in every reader. Both import the caller's __main__ module in each reader
# (as __mp_main__), so a script that makes loaders needs `if __name__ == "__main__":`.
_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class _Slots:
    """`count` buffers in shared memory, each holding every field of one batch: a reader
    writes a batch there and sends only (epoch, index, slot) through its pipe, far less
    than pickling the arrays through it. Passed to the reader when it starts."""

    def __init__(self, count: int, shapes: dict[str, tuple[int, ...]], buffer: Any):
        self._args = (count, shapes, buffer)
        flat = np.frombuffer(buffer, np.uint8)
        self._views: list[dict[str, np.ndarray]] = []
        at = 0
        for _ in range(count):
            views = {}
            for field in FIELDS:
                n = int(np.prod(shapes[field.name])) * field.dtype.itemsize
                views[field.name] = flat[at:at + n].view(field.dtype).reshape(shapes[field.name])
                at += _aligned(n)
            self._views.append(views)

    @classmethod
    def allocate(cls, context: Any, count: int, shapes: dict[str, tuple[int, ...]]) -> _Slots:
        per_slot = sum(_aligned(int(np.prod(shapes[f.name])) * f.dtype.itemsize) for f in FIELDS)
        return cls(count, shapes, context.RawArray("b", count * per_slot))

    def __reduce__(self) -> tuple:
        return _Slots, self._args  # the shared buffer, not a copy

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        return self._views[k]

    def __len__(self) -> int:
        return len(self._views)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // 8) * 8  # every field of a slot starts 8-byte aligned


def _rebuild_error(exc: BaseException, traceback_text: str) -> BaseException:
    exc.__cause__ = _ReaderTraceback(traceback_text)
    return exc


class _ReaderTraceback(Exception):
    """Where a reader process raised: shown as the cause of the error the caller gets."""

    def __str__(self) -> str:
        return f"in the reader process:\n{self.args[0]}"


class _PortableError:
    """An exception sent from a reader process: pickling drops its traceback, so the
    text travels beside it; one that cannot be pickled arrives as a RuntimeError."""

    def __init__(self, exc: BaseException):
        self.text = "".join(traceback.format_exception(exc)).rstrip()
        try:
            pickle.dumps(exc)
            self.exc = exc
        except Exception:
            self.exc = RuntimeError(f"{type(exc).__name__}: {exc}")

    def __reduce__(self) -> tuple:
        return _rebuild_error, (self.exc, self.text)


def _read_in_process(schedule: _Schedule, files: tuple[Path, ...], start: tuple[int, int], step: int,
                     slots: _Slots, free: Any, conn: Connection, stop: Any) -> None:
    """Body of reader process w: batches w, w + n, w + 2n, ... of the caller's sequence."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's; it stops us
    parent = multiprocessing.parent_process()
    count, sent = len(slots), 0

    def running() -> bool:  # never outlive the caller, even one killed with SIGKILL
        return not stop.is_set() and parent is not None and parent.is_alive()

    def send(item: Any) -> bool:
        nonlocal sent
        if isinstance(item, BaseException):
            conn.send(_PortableError(item))
            return True
        while not free.acquire(timeout=0.1):  # slot `sent % count` is free once acquired
            if not running():
                return False
        if not running():
            return False
        epoch, index, arrays = item
        k = sent % count
        for name, array in arrays.items():
            slots[k][name][...] = array
        conn.send((epoch, index, k))
        sent += 1
        return True

    try:
        _produce(schedule, files, start, step, send)
    except (BrokenPipeError, EOFError):  # the caller closed its end: nothing to report to
        return
    while running():  # after an error: wait to be stopped, as a thread would
        stop.wait(0.1)


def _stop_processes(stop: Any, processes: list[BaseProcess], connections: list[Connection],
                    free: list[Any]) -> None:
    stop.set()
    for semaphore in free:
        semaphore.release()  # wakes a reader waiting for a slot, so it sees the stop at once
    started = [p for p in processes if p.pid is not None]
    for p in started:
        p.join(timeout=5)  # a reader sees the stop within 0.1 s, or after its current read
    for p in started:
        if p.is_alive():
            p.kill()
            p.join()
    for conn in connections:
        conn.close()


class _ReaderProcesses:
    """`n` reader processes from one start position: reader w reads batches w, w + n, ...
    after it into its own slots, and the caller takes them strictly in turn."""

    def __init__(self, schedule: _Schedule, files: tuple[Path, ...], start: tuple[int, int],
                 depth: int, n: int, shapes: dict[str, tuple[int, ...]]):
        context = multiprocessing.get_context(_START_METHOD)
        if _START_METHOD == "forkserver":
            context.set_forkserver_preload([__name__])  # imported once, not once per reader
        count = -(-depth // n)  # prefetched batches per reader
        stop = context.Event()
        self._connections: list[Connection] = []
        self._slots: list[_Slots] = []
        self._free: list[Any] = []
        self._processes: list[BaseProcess] = []
        self.stop = weakref.finalize(self, _stop_processes, stop, self._processes, self._connections,
                                     self._free)
        for w in range(n):
            receive, send = context.Pipe(duplex=False)
            slots, free = _Slots.allocate(context, count, shapes), context.Semaphore(count)
            process = context.Process(
                target=_read_in_process, name=f"pretraining-reader-{w}", daemon=True,
                args=(schedule, files, schedule.advance(*start, w), n, slots, free, send, stop))
            self._connections.append(receive)
            self._slots.append(slots)
            self._free.append(free)
            self._processes.append(process)
            process.start()
            # The reader holds the only sending end now: if it dies, a receive waiting on
            # it ends with EOFError instead of waiting forever.
            send.close()
        self._turn = 0

    def get(self) -> Any:
        w = self._turn
        try:
            message = self._connections[w].recv()
        except EOFError:
            process = self._processes[w]
            process.join(timeout=1)
            return RuntimeError(f"loader reader process {process.name} (pid {process.pid}) ended "
                                f"without a batch or an error, exit code {process.exitcode}")
        if isinstance(message, BaseException):
            return message
        epoch, index, k = message
        batch = PretrainingBatch.from_numpy(self._slots[w][k])  # copies: the slot is free again
        self._free[w].release()
        self._turn = (w + 1) % len(self._processes)
        return epoch, index, batch


class PretrainingDataLoader:
    """Infinite, resumable, rank-disjoint iteration over a validated shard set.

    With drop_last=True the rows past the last full round of `world_size` micro-batches
    are skipped this epoch (a different set each epoch). With drop_last=False the epoch
    is padded with rows from its start, so every row is seen and batches stay full.

    `prefetch_batches` bounds the batches read ahead (per reader: the ceiling of
    prefetch_batches / num_workers). `num_workers=1` reads in one background thread,
    which holds the GIL while it reads; `num_workers=n > 1` starts n reader processes at
    the first batch (and again after load_state_dict or an error): ~1 s the first time
    in a process (the forkserver), tens of ms after. Processes keep reading off the
    caller's GIL and add throughput where cores are free; each reader of a compressed
    shard decompresses all of it (memory: up to the shard's uncompressed size per
    reader). The batches are the same for every num_workers.
    """

    def __init__(self, shard_set_info: ShardSetInfo, micro_batch_size: int, rank: int,
                 world_size: int, seed: int, drop_last: bool = True, prefetch_batches: int = 4,
                 num_workers: int = 1):
        if micro_batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need micro_batch_size >= 1 and 0 <= rank < world_size, got "
                             f"{micro_batch_size=}, {rank=}, {world_size=}")
        if seed < 0 or prefetch_batches < 1 or num_workers < 1:
            raise ValueError(f"need seed >= 0, prefetch_batches >= 1 and num_workers >= 1, got "
                             f"{seed=}, {prefetch_batches=}, {num_workers=}")
        rows_per_round = micro_batch_size * world_size
        total = shard_set_info.total_rows
        per_epoch = total // rows_per_round if drop_last else -(-total // rows_per_round)
        if per_epoch == 0:
            raise DataError(f"{len(shard_set_info.files)} shards hold {total} rows, fewer than one "
                            f"round of micro_batch_size * world_size = {rows_per_round}")
        self.info = shard_set_info
        self.seed = seed
        self._schedule = _Schedule(shard_set_info.rows, micro_batch_size, rank, world_size, seed, per_epoch)
        self._depth = prefetch_batches
        self.num_workers = num_workers
        self._epoch, self._consumed = 0, 0  # position of the next batch handed out
        self._prefetcher: _Prefetcher | _ReaderProcesses | None = None
        self._closed = False

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches per epoch on this rank, the same on every rank."""
        return self._schedule.batches_per_epoch

    def __iter__(self) -> PretrainingDataLoader:
        return self

    def __next__(self) -> PretrainingBatch:
        if self._closed:
            raise RuntimeError("PretrainingDataLoader is closed")
        if self._prefetcher is None:
            start = (self._epoch, self._consumed)
            if self.num_workers == 1:
                self._prefetcher = _Prefetcher(self._schedule, self.info.files, start, self._depth)
            else:
                shapes = {f.name: expected_shape(f, self._schedule.micro_batch_size, self.info.seq_len,
                                                 self.info.max_pred) for f in FIELDS}
                self._prefetcher = _ReaderProcesses(self._schedule, self.info.files, start,
                                                    self._depth, self.num_workers, shapes)
        try:
            item = self._prefetcher.get()
        except BaseException:  # e.g. Ctrl-C in the middle of a message: start afresh next time
            self._stop_prefetch()
            raise
        if isinstance(item, BaseException):
            # The readers stop; the next call starts new ones at the same position.
            self._stop_prefetch()
            raise item
        epoch, index, batch = item
        self._epoch, self._consumed = self._schedule.advance(epoch, index)
        return batch

    def state_dict(self) -> dict[str, int]:
        """Counts batches handed to the caller only: prefetched ones are read again."""
        return {"epoch": self._epoch, "batches_consumed_in_epoch": self._consumed, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader has {self.seed}")
        epoch, consumed = int(state["epoch"]), int(state["batches_consumed_in_epoch"])
        if epoch < 0 or not 0 <= consumed <= self.batches_per_epoch:
            raise ValueError(f"loader state {dict(state)} is outside an epoch of "
                             f"{self.batches_per_epoch} batches")
        self._stop_prefetch()
        self._epoch, self._consumed = (epoch, consumed) if consumed < self.batches_per_epoch else (epoch + 1, 0)

    def _stop_prefetch(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.stop()
            self._prefetcher = None

    def close(self) -> None:
        self._stop_prefetch()
        self._closed = True

    def __enter__(self) -> PretrainingDataLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
