"""Which rows make each rank's batches in each epoch: pure functions of (seed, epoch, rank).

Design choices:
- The order of an epoch is a seeded permutation of the shards, then a seeded
  permutation of the rows inside each shard. The rows, in that order, are cut into
  micro-batches and rank r of W takes global batches r, r + W, r + 2W, ... Every rank
  gets the same number of batches, so a collective never waits for a rank that ran out
  of data.
- Because the order is pure, a resume position is just (epoch, batches handed to the
  caller): the loader jumps there without replaying the epoch, and its readers (a thread
  or processes) compute the same rows from the same Schedule.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


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
class Schedule:
    """Which rows make batch `index` of `epoch` on this rank: pure, shared with the readers."""

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
