"""Progress toward the stopping rule for the training log line: step / total, percent done and ETA.

Each stopping rule that is set gives a finish: --max_steps a step, --max_samples the
step whose global batch reaches the samples, --max_time_minutes a wall-clock time. The
run stops at the first of them, so the line shows the one with the smallest ETA. The
pace is the wall clock per step since this launch started (validation and checkpoints
included, since they delay the finish too; earlier launches are not counted, as they
may have run on other hardware). A total from the time budget is the pace's guess:
shown as `~total`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Progress:
    total_steps: Optional[int]  # None: the time budget ends the run and the pace is unknown
    approximate: bool  # the total comes from the time budget at the current pace
    fraction: float  # of the rule that ends the run first: steps, samples or time
    eta_s: Optional[float]  # None until a pace is known (first log of a launch)


class Pace:
    """Wall-clock seconds per step since the launch started."""

    def __init__(self, start_step: int, start_elapsed_s: float):
        self.start_step = start_step
        self.start_elapsed_s = start_elapsed_s

    def seconds_per_step(self, step: int, elapsed_s: float) -> Optional[float]:
        steps = step - self.start_step
        return (elapsed_s - self.start_elapsed_s) / steps if steps > 0 else None


def estimate(step: int, samples: int, elapsed_s: float, seconds_per_step: Optional[float],
             samples_per_step: int, max_steps: Optional[int] = None,
             max_samples: Optional[int] = None,
             max_time_s: Optional[float] = None) -> Optional[Progress]:
    """The progress by the rule that finishes first; None when no rule is set."""
    candidates = []
    if max_steps is not None:
        left = max(max_steps - step, 0)
        candidates.append(Progress(max_steps, False, min(step / max_steps, 1.0),
                                   _eta(left, seconds_per_step)))
    if max_samples is not None:
        left = math.ceil(max(max_samples - samples, 0) / samples_per_step)
        candidates.append(Progress(step + left, False, min(samples / max_samples, 1.0),
                                   _eta(left, seconds_per_step)))
    if max_time_s is not None:
        left_s = max(max_time_s - elapsed_s, 0.0)
        total = (step + math.ceil(left_s / seconds_per_step)) if seconds_per_step else None
        candidates.append(Progress(total, True, min(elapsed_s / max_time_s, 1.0), left_s))
    if not candidates:
        return None
    return min(candidates, key=lambda p: math.inf if p.eta_s is None else p.eta_s)


def _eta(steps_left: int, seconds_per_step: Optional[float]) -> Optional[float]:
    return steps_left * seconds_per_step if seconds_per_step is not None else None


def format_duration(seconds: float) -> str:
    """H:MM:SS, hours unbounded (27:03:04)."""
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def format_step(step: int, progress: Optional[Progress]) -> str:
    """`step 120/1000 (12%)`, `step 120/~1000 (12%)` from a time budget, `step 120`."""
    if progress is None:
        return f"step {step}"
    percent = f"{100 * progress.fraction:.0f}%"
    if progress.total_steps is None:
        return f"step {step} ({percent} of the time budget)"
    return f"step {step}/{'~' if progress.approximate else ''}{progress.total_steps} ({percent})"


def format_eta(progress: Optional[Progress]) -> Optional[str]:
    if progress is None or progress.eta_s is None:
        return None
    return f"eta {format_duration(progress.eta_s)}"
