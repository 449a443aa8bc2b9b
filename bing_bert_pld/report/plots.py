"""The report's PNG plots (matplotlib): losses against training time and samples, the PLD schedule, throughput.

- loss_vs_time.png, loss_vs_samples.png: validation loss (with the target line),
  validation MLM loss (with the unigram plateau) and training loss against training
  time (numbers.time_axis) and against samples seen;
- pld.png: theta (with each run's theta_bar) and active layers against the optimizer
  step, and the live estimate of the time saved where the run logged it;
- throughput.png: samples/s against the step.
Noisy curves (training loss, active layers, samples/s) are drawn smoothed (TensorBoard's
debiased EMA, weight 0.6) over their raw values drawn faint; evaluations are not smoothed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..run.metric_names import (ACTIVE, EXPECTED_ACTIVE, SAMPLES, SAMPLES_PER_SEC, THETA,
                                TIME_SAVED, TRAIN_LOSS, VAL_LOSS, VAL_MLM_LOSS)
from .events import Run
from .numbers import on_axis, time_axis

EMA_WEIGHT = 0.6  # TensorBoard's default smoothing: light, the raw values stay visible


def ema(values: Sequence[float], weight: float = EMA_WEIGHT) -> np.ndarray:
    """TensorBoard's smoothing: s = w s + (1 - w) x over the finite values, divided by
    1 - w^n after n of them (so the first points are not pulled toward 0); a non-finite
    value stays as it is and does not enter the average."""
    out = np.empty(len(values), dtype=np.float64)
    last, count = 0.0, 0
    for i, value in enumerate(values):
        value = float(value)
        if not math.isfinite(value):
            out[i] = value
            continue
        last = weight * last + (1.0 - weight) * value
        count += 1
        out[i] = last / (1.0 - weight ** count)
    return out


def _time_unit(max_seconds: float) -> tuple[float, str]:
    if max_seconds >= 2 * 3600:
        return 3600.0, "h"
    if max_seconds >= 120:
        return 60.0, "min"
    return 1.0, "s"


@dataclass
class Curve:
    run: Run
    label: str
    x: np.ndarray
    y: np.ndarray
    style: str = "-"
    smooth: bool = False  # drawn as an EMA over the raw values, which stay faint behind


@dataclass
class Panel:
    title: str
    ylabel: str
    curves: list[Curve]
    # Horizontal reference lines: (y, label, color or None for the curve colors' run)
    lines: list[tuple[float, str, str]] = field(default_factory=list)


def write_plots(runs: Sequence[Run], out_dir: Path, target: Optional[float] = None,
                plateau: Optional[float] = None) -> tuple[list[Path], list[str]]:
    """Write the PNGs that the available scalars allow; return (written, skipped notes).
    `target` (the time-to-quality VAL_LOSS) and `plateau` (the unigram plateau, MLM
    loss) are drawn as horizontal lines where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written, skipped = [], []
    color = {run.name: f"C{i}" for i, run in enumerate(runs)}  # one color per run everywhere

    def figure(filename: str, panels: list[Panel], xlabel: str) -> bool:
        """A panel without curves says so; a figure without any curve is not written."""
        if not any(panel.curves for panel in panels):
            return False
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2),
                                 squeeze=False)
        for ax, panel in zip(axes[0], panels):
            for c in panel.curves:
                marker = "." if len(c.x) < 50 else None
                if c.smooth and len(c.y) >= 3:
                    ax.plot(c.x, c.y, c.style, color=color[c.run.name], alpha=0.25, linewidth=0.8)
                    ax.plot(c.x, ema(c.y), c.style, color=color[c.run.name],
                            label=f"{c.label} (EMA {EMA_WEIGHT})")
                else:
                    ax.plot(c.x, c.y, c.style, color=color[c.run.name], label=c.label,
                            marker=marker)
            for y, label, line_color in panel.lines:
                ax.axhline(y, color=line_color, linestyle=":", linewidth=1.2, label=label)
            ax.set_title(panel.title)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(panel.ylabel)
            ax.grid(alpha=0.3)
            if panel.curves:
                ax.legend(fontsize="small")
            else:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center",
                        transform=ax.transAxes)
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
        return True

    # Loss vs training time, every run on the same time axis (see time_axis).
    time_tag = time_axis(runs)
    elapsed_max = max((r.get(time_tag).values.max() for r in runs
                       if r.get(time_tag) is not None), default=0.0)
    scale, unit = _time_unit(float(elapsed_max))
    target_lines = [] if target is None else [(target, f"target {target:.3f} (baseline's final)",
                                               "black")]
    plateau_lines = [] if plateau is None else [(plateau, f"unigram plateau {plateau:.3f}",
                                                 "gray")]
    with_mlm = any(run.get(VAL_MLM_LOSS) is not None for run in runs)
    for by_time, filename, xlabel in ((True, "loss_vs_time.png", f"training time ({unit})"),
                                      (False, "loss_vs_samples.png", "samples")):
        axis = time_tag if by_time else SAMPLES
        specs = [("validation loss (MLM + NSP)", VAL_LOSS, target_lines, False)]
        if with_mlm:
            specs.append(("validation MLM loss", VAL_MLM_LOSS, plateau_lines, False))
        specs.append(("training loss (MLM + NSP)", TRAIN_LOSS, [], True))
        panels = []
        for title, tag, lines, smooth in specs:
            curves = []
            for run in runs:
                placed = on_axis(run, tag, axis)
                if placed is not None:
                    x = placed[0] / scale if by_time else placed[0]
                    curves.append(Curve(run, run.name, x, placed[1], smooth=smooth))
            panels.append(Panel(title, "loss (nats)", curves, lines if curves else []))
        if not figure(filename, panels, xlabel):
            skipped.append(f"{filename}: no run has {VAL_LOSS} or {TRAIN_LOSS} with {axis}")

    theta_curves, active_curves, saved_curves, theta_lines = [], [], [], []
    for run in runs:
        if run.get(THETA) is not None:
            theta_curves.append(Curve(run, run.name, run.get(THETA).steps, run.get(THETA).values))
            if run.theta_bar is not None:
                theta_lines.append((run.theta_bar, f"{run.name} theta_bar {run.theta_bar:g}",
                                    color[run.name]))
        for tag, suffix, style, smooth in ((ACTIVE, "", "-", True),
                                           (EXPECTED_ACTIVE, " expected", "--", False)):
            if run.get(tag) is not None:
                active_curves.append(Curve(run, run.name + suffix, run.get(tag).steps,
                                           run.get(tag).values, style, smooth))
        if run.get(TIME_SAVED) is not None:
            saved_curves.append(Curve(run, run.name, run.get(TIME_SAVED).steps,
                                      run.get(TIME_SAVED).values))
    pld_panels = [Panel("theta (keep probability of the last layer)", "theta", theta_curves,
                        theta_lines),
                  Panel("encoder layers run", "layers per micro-batch", active_curves)]
    if saved_curves:
        pld_panels.append(Panel("time saved vs full depth (live estimate)", "seconds",
                                saved_curves))
    if not figure("pld.png", pld_panels, "optimizer step"):
        skipped.append(f"pld.png: no run has {THETA}, {ACTIVE} or {EXPECTED_ACTIVE}")

    rate_curves = [Curve(r, r.name, r.get(SAMPLES_PER_SEC).steps, r.get(SAMPLES_PER_SEC).values,
                         smooth=True)
                   for r in runs if r.get(SAMPLES_PER_SEC) is not None]
    if not figure("throughput.png", [Panel("training throughput", "samples/s", rate_curves)],
                  "optimizer step"):
        skipped.append(f"throughput.png: no run has {SAMPLES_PER_SEC}")
    return written, skipped
