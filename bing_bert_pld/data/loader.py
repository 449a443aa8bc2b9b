"""PretrainingDataLoader: a rank's batches in schedule order, read ahead, resumable from state_dict().

The position is (epoch, batches handed to the caller): order.py makes every batch a
pure function of it, so state_dict() is those two numbers and the seed, and a resume
starts new readers there without replaying the epoch. The readers (reader_thread.py,
reader_processes.py) only read ahead; which batch comes next is decided here.
"""

from __future__ import annotations

from typing import Mapping

from ..batch import PretrainingBatch
from ..schema import FIELDS, expected_shape
from ..shard_validation import DataError, ShardSetInfo
from .order import Schedule
from .reader_processes import ReaderProcesses
from .reader_thread import ReaderThread


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
        self._schedule = Schedule(shard_set_info.rows, micro_batch_size, rank, world_size, seed, per_epoch)
        self._depth = prefetch_batches
        self.num_workers = num_workers
        self._epoch, self._consumed = 0, 0  # position of the next batch handed out
        self._prefetcher: ReaderThread | ReaderProcesses | None = None
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
                self._prefetcher = ReaderThread(self._schedule, self.info.files, start, self._depth)
            else:
                shapes = {f.name: expected_shape(f, self._schedule.micro_batch_size, self.info.seq_len,
                                                 self.info.max_pred) for f in FIELDS}
                self._prefetcher = ReaderProcesses(self._schedule, self.info.files, start,
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
