"""Run independent work units over processes, with one progress bar per stage.

Every unit writes its own output and derives its randomness from (seed, unit index),
so results never depend on which process ran a unit or in what order: the process
count changes speed, not bytes. Processes are spawned, not forked, so that no worker
inherits a parent's tokenizers thread pool (fork after threads can deadlock).
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Callable, Sequence

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
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(processes, len(tasks)), initializer=_single_threaded_worker) as pool:
                indexed = pool.imap_unordered(_IndexedCall(worker), list(enumerate(tasks)))
                for index, result in indexed:
                    record(index, result)
    return results


class _IndexedCall:
    """Picklable wrapper that returns the task index with the result."""

    def __init__(self, worker: Callable) -> None:
        self.worker = worker

    def __call__(self, item):
        index, task = item
        return index, self.worker(task)
