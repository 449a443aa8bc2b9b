"""Live estimate of the time PLD saves: step time fitted against the layers run, extrapolated to full depth.

A PLD run never times a full-depth step of its own once theta has fallen, but it does
run steps of many depths: its gates give each step its own number of encoder blocks.
So the cost of a block is measured, not assumed from FLOPs: step time is fitted as
`seconds = a + b * layers`, where `layers` is the blocks run in the step summed over
its micro-batches (linear, because a step of k >= 1 blocks costs k - 1 full blocks and
one sparse last block, flops.LayerRuns), and the fit is extrapolated to full depth
(num_hidden_layers x gradient_accumulation_steps). What the intercept holds (embeddings,
heads, optimizer, all-reduce, the wait for data) a full-depth run pays too.

Method:
- The first `skip_first` steps of each launch are left out of the fit and of the saving:
  compilation and allocator and read-ahead warm-up, which a full-depth run pays too.
- The fit uses the last `window` steps. A robust line first: the median time of each
  layer count, and the least-squares line through those medians weighted by their
  counts. Every step further than `outlier_mads` scaled MADs from it (and more than 1%
  of the median step time) is dropped (a page-out, a neighbour's burst), then the line is
  the ordinary least-squares fit to the rest, so it predicts the mean step time, which is
  what a full-depth run would average.
- No estimate until the window holds `min_steps` steps of at least two layer counts,
  nor while the slope is not positive (the data cannot yet tell what a block costs).
- Time saved = the sum over steps of (predicted full-depth time - the step's actual
  time). At each update the steps since the previous one are charged with the fit of
  that moment (steps recorded before the first fit, at the first fit), so the sum never
  rewrites the past with a later load's fit.
- Current speedup = predicted full-depth time / predicted time at the mean layers of the
  steps just charged: both from the same fit, so load noise cancels.

Pure Python and NumPy, no torch: the trainer records, the tests feed synthetic steps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .run import metric_names as names

MAD_TO_SIGMA = 1.4826  # a normal distribution's standard deviation per median absolute deviation
SKIP_FIRST = 5  # steps of each launch left out (warm-up)
WINDOW = 1000  # the last steps the fit uses
MIN_STEPS = 20  # steps in the window before the first estimate


@dataclass(frozen=True)
class LineFit:
    intercept_s: float  # a: what a step costs besides its encoder blocks
    per_layer_s: float  # b: one encoder block on one micro-batch, forward and backward
    steps: int  # steps the final least-squares fit used (outliers dropped)

    def predict(self, layers: float) -> float:
        return self.intercept_s + self.per_layer_s * layers


def _weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> Optional[tuple[float, float]]:
    """(intercept, slope) of the weighted least-squares line; None if x does not vary."""
    mean_x = float(np.average(x, weights=w))
    mean_y = float(np.average(y, weights=w))
    spread = float(np.sum(w * (x - mean_x) ** 2))
    if spread <= 0.0:
        return None
    slope = float(np.sum(w * (x - mean_x) * (y - mean_y))) / spread
    return mean_y - slope * mean_x, slope


def fit_step_time(layers: Sequence[float], seconds: Sequence[float],
                  outlier_mads: float = 5.0) -> Optional[LineFit]:
    """seconds = a + b * layers, robust to outliers (see the module docstring); None when
    fewer than two layer counts occur."""
    x = np.asarray(layers, dtype=np.float64)
    y = np.asarray(seconds, dtype=np.float64)
    counts = np.unique(x, return_counts=True)
    if len(counts[0]) < 2:
        return None
    medians = np.array([np.median(y[x == value]) for value in counts[0]])
    rough = _weighted_line(counts[0], medians, counts[1].astype(np.float64))
    residuals = y - (rough[0] + rough[1] * x)
    mad = float(np.median(np.abs(residuals - np.median(residuals))))
    limit = max(outlier_mads * MAD_TO_SIGMA * mad, 0.01 * float(np.median(y)))
    kept = np.abs(residuals) <= limit
    line = _weighted_line(x[kept], y[kept], np.ones(int(kept.sum())))
    if line is None:
        return None
    return LineFit(intercept_s=line[0], per_layer_s=line[1], steps=int(kept.sum()))


@dataclass(frozen=True)
class Estimate:
    time_saved_s: float  # since step 0 (across resumes), vs the same steps at full depth
    time_saved_frac: float  # time_saved_s / the predicted full-depth time of those steps
    speedup: float  # now: full-depth step time / the time of a step at the current depth
    full_depth_step_time_s: float
    fit: LineFit

    def scalars(self) -> dict[str, float]:
        return {names.TIME_SAVED: self.time_saved_s, names.TIME_SAVED_FRAC: self.time_saved_frac,
                names.SPEEDUP: self.speedup,
                names.FULL_DEPTH_STEP_TIME: self.full_depth_step_time_s}


class TimeSavedEstimator:
    """Collects (layers, seconds) per step; `update()` at each log line charges the steps
    since the last one and returns the estimate, or None while there is none."""

    def __init__(self, full_depth_layers: int, layers_total: int = 0,
                 skip_first: int = SKIP_FIRST, window: int = WINDOW, min_steps: int = MIN_STEPS,
                 outlier_mads: float = 5.0,
                 state: Optional[dict] = None):
        if full_depth_layers <= 0:
            raise ValueError(f"full_depth_layers must be positive, got {full_depth_layers}")
        self.full_depth_layers = full_depth_layers
        self.skip_first = skip_first
        self.min_steps = min_steps
        self.outlier_mads = outlier_mads
        self._layers_total = layers_total  # the blocks-run counter at the last observation
        self._skipped = 0
        self._window: deque[tuple[int, float]] = deque(maxlen=window)
        # Steps recorded and not yet charged: count, seconds, layers.
        self._pending = [0, 0.0, 0]
        self.time_saved_s = 0.0
        self.full_depth_s = 0.0  # the predicted full-depth time of the charged steps
        self.steps_charged = 0
        self._current_layers = float(full_depth_layers)  # mean layers of the last charged steps
        if state:
            self.load_state_dict(state)

    def observe(self, layers_total: int, seconds: float) -> None:
        """One step, given the counter of blocks run since step 0 (the step's own is the
        difference from the previous observation) and the step's seconds."""
        layers, self._layers_total = layers_total - self._layers_total, layers_total
        self.add(layers, seconds)

    def add(self, layers: int, seconds: float) -> None:
        """One step: the blocks it ran, summed over its micro-batches, and its seconds."""
        if self._skipped < self.skip_first:
            self._skipped += 1
            return
        self._window.append((layers, seconds))
        self._pending[0] += 1
        self._pending[1] += seconds
        self._pending[2] += layers

    def fit(self) -> Optional[LineFit]:
        if len(self._window) < self.min_steps:
            return None
        layers, seconds = zip(*self._window)
        line = fit_step_time(layers, seconds, self.outlier_mads)
        return line if line is not None and line.per_layer_s > 0 else None

    def update(self) -> Optional[Estimate]:
        line = self.fit()
        if line is None:
            return None
        full = line.predict(self.full_depth_layers)
        count, seconds, layers = self._pending
        if count:
            self.time_saved_s += count * full - seconds
            self.full_depth_s += count * full
            self.steps_charged += count
            self._current_layers = layers / count
            self._pending = [0, 0.0, 0]
        return Estimate(
            time_saved_s=self.time_saved_s,
            time_saved_frac=self.time_saved_s / self.full_depth_s if self.full_depth_s else 0.0,
            speedup=full / line.predict(self._current_layers), full_depth_step_time_s=full, fit=line)

    def state_dict(self) -> dict:
        """What a resumed run continues from; the window is refitted after the resume."""
        return {"time_saved_s": self.time_saved_s, "full_depth_s": self.full_depth_s,
                "steps_charged": self.steps_charged, "layers_total": self._layers_total}

    def load_state_dict(self, state: dict) -> None:
        self.time_saved_s = float(state["time_saved_s"])
        self.full_depth_s = float(state["full_depth_s"])
        self.steps_charged = int(state["steps_charged"])
        if "layers_total" in state:  # saved since the trainer's state became a set of parts
            self._layers_total = int(state["layers_total"])
