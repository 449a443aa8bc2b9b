"""One daemon thread that reads the schedule's batches ahead into a bounded queue (num_workers=1).

h5py holds the GIL while the thread reads, so more readers are processes
(reader_processes.py). The thread is stopped at the loader's close(), at garbage
collection and at interpreter exit.
"""

from __future__ import annotations

import functools
import queue
import threading
import weakref
from pathlib import Path
from typing import Any

from ..batch import PretrainingBatch
from .order import Schedule
from .shards import produce


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


class ReaderThread:
    """A producer thread from one start position; replaced, not rewound, on resume."""

    def __init__(self, schedule: Schedule, files: tuple[Path, ...], start: tuple[int, int], depth: int):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        stop = threading.Event()
        send = functools.partial(_put_batch, self.queue, stop)
        self.thread = threading.Thread(target=produce, args=(schedule, files, start, 1, send),
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
