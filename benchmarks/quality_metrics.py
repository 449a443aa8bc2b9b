"""The time-to-quality numbers as pure functions: the unigram plateau, the time to a target loss.

- Unigram plateau (bing_bert_pld/unigram.py, shared with the report): the MLM loss of
  a model that ignores the context and predicts every masked token from the corpus's
  token frequencies. On the training shards' masked
  tokens (`masked_lm_ids` where `masked_lm_positions` != 0, the slots the model scores),
  that loss is the entropy of their distribution; on validation it is the cross-entropy
  of the training distribution, add-one smoothed over the vocabulary so that a token
  never masked in training costs log(N + V) rather than infinity. A run whose validation
  MLM loss is not clearly below this line has learned frequencies, not language.
- Time to target: the training time at which a validation curve first reaches a loss,
  interpolated linearly between the last evaluation above it and the first at or below
  it (evaluations are tens of seconds apart; the first-evaluation time alone would
  quantize every ratio to that grid). NaN or infinite losses (a diverged run) never
  reach a target.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from bing_bert_pld.unigram import (Plateau, cross_entropy, entropy,  # noqa: F401 (this module's API)
                                   masked_token_counts, unigram_plateau)


def time_to_reach(times: Sequence[float], losses: Sequence[float], target: float) -> Optional[float]:
    """First time the curve (times ascending) is at or below `target`, linearly
    interpolated from the evaluation before; None if it never is."""
    times = np.asarray(times, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    below = np.flatnonzero(np.isfinite(losses) & (losses <= target))
    if len(below) == 0:
        return None
    i = int(below[0])
    if i == 0 or not np.isfinite(losses[i - 1]):
        return float(times[i])
    fraction = (losses[i - 1] - target) / (losses[i - 1] - losses[i])
    return float(times[i - 1] + fraction * (times[i] - times[i - 1]))


def speedup(reference_time: Optional[float], time: Optional[float]) -> Optional[float]:
    """How many times sooner `time` is than `reference_time` (None if either is missing)."""
    if reference_time is None or time is None or time <= 0:
        return None
    return reference_time / time


def spread(values: Sequence[Optional[float]]) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """(mean, min, max) of the values that exist; Nones where none does."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present:
        return None, None, None
    return sum(present) / len(present), min(present), max(present)
