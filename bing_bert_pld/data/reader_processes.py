"""Reader processes that read the schedule's batches ahead into shared memory (num_workers > 1).

Design choices:
- h5py holds the GIL, so readers beyond the one thread are processes: reader w of n
  reads batches w, w + n, ... of the same pure schedule, and the caller takes them
  strictly in turn, so the batches, the loader's state_dict() and errors do not depend
  on n.
- A batch travels through a slot of shared memory; the pipe carries only
  (epoch, index, slot), and an error with its reader-side traceback.
- Readers are stopped at the loader's close(), at garbage collection and at interpreter
  exit, and a reader also stops when its caller dies, so none keeps running without
  its loader.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import traceback
import weakref
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from ..batch import PretrainingBatch
from ..schema import FIELDS
from .order import Schedule
from .shards import produce

# Not fork: a training process has threads (torch's OpenMP pool, DeepSpeed/NCCL, the
# loader's own prefetch threads), fork copies only the calling one, so a lock another
# thread holds stays locked forever in the child, and CUDA cannot be used after fork.
# The forkserver is a fresh single-threaded process, started once per process (~1 s: it
# imports this package and torch), that forks each reader in a few ms; spawn would import
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


def _read_in_process(schedule: Schedule, files: tuple[Path, ...], start: tuple[int, int], step: int,
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
        produce(schedule, files, start, step, send)
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


class ReaderProcesses:
    """`n` reader processes from one start position: reader w reads batches w, w + n, ...
    after it into its own slots, and the caller takes them strictly in turn."""

    def __init__(self, schedule: Schedule, files: tuple[Path, ...], start: tuple[int, int],
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

