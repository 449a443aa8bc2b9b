"""Run independent work units over processes, with one progress bar per stage.

Every unit writes its own output and derives its randomness from (seed, unit index),
so results never depend on which process ran a unit or in what order: the process
count changes speed, not bytes. Processes are spawned, not forked, so that no worker
inherits a parent's tokenizers thread pool (fork after threads can deadlock).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.pool
import os
from typing import Callable, Iterator, Sequence

from tqdm import tqdm


def _single_threaded_worker() -> None:
    # With one process per core, the Rust tokenizer's own thread pool only oversubscribes.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"


def run_parallel(
    worker: Callable,
    tasks: Sequence,
    processes: int,
    desc: str,
    progress_of: Callable[[object], tuple[float, dict]],
    total: float,
    unit: str = "B",
    show_progress: bool = True,
) -> list:
    """Apply `worker` to each task; return results in task order.

    `progress_of(result)` gives the bar's advance (in `unit`) and counts to display.
    """
    results: list = [None] * len(tasks)
    totals: dict = {}
    with tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not show_progress, leave=True) as bar:

        def record(index: int, result) -> None:
            results[index] = result
            advance, counts = progress_of(result)
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
            bar.update(advance)
            bar.set_postfix({k: f"{v:,}" for k, v in totals.items()}, refresh=False)

        if processes <= 1 or len(tasks) <= 1:
            for index, task in enumerate(tasks):
                record(index, worker(task))
        else:
            with contextlib.ExitStack() as stack:
                pool = _shared.get(processes) or stack.enter_context(_new_pool(min(processes, len(tasks))))
                for index, result in pool.imap_unordered(_IndexedCall(worker), list(enumerate(tasks))):
                    record(index, result)
    return results


# Pools opened by `worker_pool`, by size: starting spawned workers costs about a second
# each (imports), which several stages in a row would otherwise pay each time.
_shared: dict[int, multiprocessing.pool.Pool] = {}


@contextlib.contextmanager
def worker_pool(processes: int) -> Iterator[None]:
    """Within the block, run_parallel calls with this many processes share one pool."""
    if processes <= 1 or processes in _shared:
        yield
        return
    with _new_pool(processes) as pool:
        _shared[processes] = pool
        try:
            yield
        finally:
            del _shared[processes]


def _new_pool(processes: int) -> multiprocessing.pool.Pool:
    return multiprocessing.get_context("spawn").Pool(processes, initializer=_single_threaded_worker)


class _IndexedCall:
    """Picklable wrapper that returns the task index with the result."""

    def __init__(self, worker: Callable) -> None:
        self.worker = worker

    def __call__(self, item):
        index, task = item
        return index, self.worker(task)
