"""Compare training runs (a PLD run and its baseline) from their TensorBoard events.

    python -m bing_bert_pld.report RUN_DIR [RUN_DIR ...] --out DIR [--baseline NAME]

RUN_DIR is a training output directory (events under RUN_DIR/tensorboard/) or the
event directory itself; a run is named after its directory. Writes to DIR:
- loss_vs_time.png, loss_vs_samples.png: validation loss (with the target line),
  validation MLM loss (with the unigram plateau) and training loss against training
  time (perf/train_time_s, else perf/elapsed_s) and against samples seen (train/samples);
- pld.png: theta (with each run's theta_bar) and active layers against the optimizer
  step, and the live estimate of the time saved where the run logged it;
- throughput.png: samples/s against the step;
- summary.md and summary.json, the summary also printed to the console.
Noisy curves (training loss, active layers, samples/s) are drawn smoothed (TensorBoard's
debiased EMA, weight 0.6) over their raw values drawn faint; evaluations are not smoothed.

The summary numbers are pure functions of the scalars (tested on synthetic events):
- time per sample = training time / train/samples at the run's last logged step, and
  the saving against the baseline in percent; training time is perf/train_time_s (the
  time spent in training steps) when every run compared logged it, else perf/elapsed_s
  for all of them (one clock for all, said in a message);
- encoder FLOPs saved = the last pld/encoder_flops_skipped_frac;
- time to quality: the target is the baseline's final val/loss; each run's time is the
  training time at its first evaluation with val/loss <= target (evaluations
  only, no interpolation between them), and the ratio is baseline time / run time.
A scalar logged at steps other than perf/elapsed_s's is placed on the wall-clock axis
by linear interpolation over steps (linear extrapolation past the ends).

What the report refuses to state as a result (each said in a "warning:" note instead):
- a saving larger than the fraction of encoder FLOPs PLD skipped: skipping layers cannot
  save more than their share of the work, so the machine's load differed between the
  runs (both numbers are printed; pld/time_saved_frac, measured within the PLD run
  itself, is printed beside them);
- a speedup to a target at or above the unigram plateau (unigram.py): when the
  baseline's final validation MLM loss is not below it, the target marks learned token
  frequencies, and reaching it sooner says nothing. The plateau is computed from the
  shards named in the runs' run_config.json (the newest checkpoint's), or given with
  --plateau; a run whose validation MLM loss never fell below it is named.

The baseline is --baseline NAME, otherwise the first run without PLD (no pld/theta, or
theta always 1), otherwise the first run given. Missing scalars, a single run and runs
of different lengths are reported as messages, never as a crash.

TensorBoard shows the same curves when the runs share a log root:
    tensorboard --logdir runs/        # runs/pld/tensorboard, runs/baseline/tensorboard
(or --logdir_spec pld:PATH1,baseline:PATH2); pick the "Relative" horizontal axis for
wall-clock, and use perf/elapsed_s or train/samples charts for the exact axes.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import cli
from .run.metric_names import (ACTIVE, ELAPSED, EXPECTED_ACTIVE, SAMPLES, SAMPLES_PER_SEC,
                           SKIPPED_FRAC, THETA, TIME_SAVED, TIME_SAVED_FRAC, TRAIN_LOSS,
                           TRAIN_TIME, VAL_LOSS, VAL_MLM_LOSS)

EVENT_GLOB = "events.out.tfevents.*"
EMA_WEIGHT = 0.6  # TensorBoard's default smoothing: light, the raw values stay visible


class ReportError(RuntimeError):
    """No usable run: the message says which directory and why."""


@dataclass(frozen=True)
class Series:
    """One scalar of one run, sorted by step, one value per step (the last written)."""

    steps: np.ndarray
    values: np.ndarray

    @classmethod
    def from_pairs(cls, steps: Sequence[int], values: Sequence[float]) -> "Series":
        latest = dict(zip(steps, values))  # a restarted run rewrites steps: keep the last
        ordered = sorted(latest)
        return cls(np.asarray(ordered, dtype=np.int64),
                   np.asarray([latest[s] for s in ordered], dtype=np.float64))

    @property
    def last_step(self) -> int:
        return int(self.steps[-1])

    @property
    def last(self) -> float:
        return float(self.values[-1])


@dataclass
class Run:
    name: str
    scalars: dict[str, Series]
    path: str = ""
    run_config: Optional[dict] = None  # the newest checkpoint's run_config.json, if any

    def get(self, tag: str) -> Optional[Series]:
        return self.scalars.get(tag)

    @property
    def theta_bar(self) -> Optional[float]:
        pld = ((self.run_config or {}).get("deepspeed_setup") or {}).get("pld")
        return float(pld["theta"]) if pld else None

    @property
    def uses_pld(self) -> bool:
        theta = self.get(THETA)
        return theta is not None and bool(np.any(theta.values < 1.0))


# ----------------------------------------------------------------------------- reading

def find_event_dir(run_dir: Path) -> Path:
    """RUN_DIR/tensorboard, RUN_DIR itself, or the single folder below holding events."""
    for candidate in (run_dir / "tensorboard", run_dir):
        if candidate.is_dir() and any(candidate.glob(EVENT_GLOB)):
            return candidate
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such directory")
    holders = sorted({p.parent for p in run_dir.rglob(EVENT_GLOB)})
    if len(holders) == 1:
        return holders[0]
    if not holders:
        raise ReportError(f"{run_dir}: no TensorBoard event files ({EVENT_GLOB}) in it, "
                          f"in {run_dir / 'tensorboard'} or below")
    raise ReportError(f"{run_dir}: event files in several folders "
                      f"({', '.join(str(h) for h in holders)}); pass one of them")


def load_run(run_dir: str | Path, name: Optional[str] = None) -> Run:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    event_dir = find_event_dir(run_dir)
    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})  # keep all
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        scalars[tag] = Series.from_pairs([e.step for e in events], [e.value for e in events])
    if name is None:
        name = (run_dir.resolve().parent if run_dir.name == "tensorboard"
                else run_dir.resolve()).name
    run_root = run_dir.parent if run_dir.name == "tensorboard" else run_dir
    return Run(name=name, scalars=scalars, path=str(event_dir),
               run_config=read_run_config(run_root))


def read_run_config(run_root: Path) -> Optional[dict]:
    """run_config.json of the newest checkpoint under RUN_DIR/checkpoints that has a
    readable one (the trainer writes it with every checkpoint); None without."""
    from .run.layout import RUN_CONFIG, published_tags

    root = run_root / "checkpoints"
    for tag in published_tags(root):
        try:
            return json.loads((root / tag / RUN_CONFIG).read_text())
        except (OSError, ValueError):
            continue
    return None


def find_plateau(runs: Sequence[Run], baseline: Run,
                 given: Optional[float] = None) -> tuple[Optional[float], str]:
    """(the unigram plateau in nats of validation MLM loss, where it comes from): --plateau,
    else computed from the shards in the baseline's run_config.json (else another run's)."""
    if given is not None:
        return given, "given with --plateau"
    from .shard_validation import DataError
    from .unigram import plateau_of_data

    for run in [baseline] + [r for r in runs if r is not baseline]:
        config = run.run_config or {}
        data = config.get("run") or {}
        vocab_size = (config.get("model_config") or {}).get("vocab_size")
        if not data.get("train_dir") or not vocab_size:
            continue
        try:
            value, where = plateau_of_data(data["train_dir"], data.get("val_dir"), vocab_size)
        except (DataError, OSError, ValueError, KeyError) as err:
            return None, (f"not computed: the shards in {run.name}'s run_config.json could not "
                          f"be read ({err}); pass --plateau")
        return value, f"computed from {run.name}'s data: {where}"
    return None, ("unknown: no run has a run_config.json naming its shards (under "
                  "RUN_DIR/checkpoints); pass --plateau")


def unique_names(paths: Sequence[Path]) -> list[str]:
    names = [(p.resolve().parent if p.name == "tensorboard" else p.resolve()).name
             for p in paths]
    return [f"{n}#{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


# ----------------------------------------------------------------------------- numbers

def interpolate(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """np.interp, but extended linearly past both ends (one point: constant)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.interp(x, xp, fp)
    if len(xp) >= 2:
        lo_slope = (fp[1] - fp[0]) / (xp[1] - xp[0])
        hi_slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
        y = np.where(x < xp[0], fp[0] + (x - xp[0]) * lo_slope, y)
        y = np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * hi_slope, y)
    return y


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


def time_axis(runs: Sequence[Run]) -> str:
    """One time axis for every run compared: training-step time where all of them logged
    it (a run that validates more often is not charged for it), else the wall clock."""
    return TRAIN_TIME if all(run.get(TRAIN_TIME) is not None for run in runs) else ELAPSED


def on_axis(run: Run, tag: str, axis_tag: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(axis values, tag values): a scalar placed on elapsed time or samples by step."""
    series, axis = run.get(tag), run.get(axis_tag)
    if series is None or axis is None:
        return None
    return interpolate(series.steps, axis.steps, axis.values), series.values


def time_per_sample(run: Run, axis: str) -> Optional[float]:
    """Seconds on the time `axis` per sample, over the whole run."""
    elapsed, samples = run.get(axis), run.get(SAMPLES)
    if elapsed is None or samples is None:
        return None
    step = min(elapsed.last_step, samples.last_step)
    seen = float(interpolate([step], samples.steps, samples.values)[0])
    spent = float(interpolate([step], elapsed.steps, elapsed.values)[0])
    return spent / seen if seen > 0 else None


def time_to_target(run: Run, target: float, axis: str) -> Optional[float]:
    """Seconds on the time `axis` at the first evaluation with val/loss <= target, None
    if never."""
    placed = on_axis(run, VAL_LOSS, axis)
    if placed is None:
        return None
    times, losses = placed
    reached = np.flatnonzero(losses <= target)
    return float(times[reached[0]]) if len(reached) else None


def pick_baseline(runs: Sequence[Run], requested: Optional[str] = None) -> Run:
    if requested is not None:
        for run in runs:
            if run.name == requested:
                return run
        raise ReportError(f"--baseline {requested!r} is not one of the runs "
                          f"{[r.name for r in runs]}")
    return next((r for r in runs if not r.uses_pld), runs[0])


@dataclass
class RunSummary:
    name: str
    baseline: bool
    uses_pld: bool
    last_step: Optional[int]
    samples: Optional[float]
    elapsed_s: Optional[float]
    time_per_sample_s: Optional[float]
    time_saving_pct: Optional[float]  # 100 (1 - run / baseline) time per sample
    encoder_flops_skipped_frac: Optional[float]
    final_val_loss: Optional[float]
    target_reached: Optional[bool]  # None when the run lacks val/loss or perf/elapsed_s
    time_to_target_s: Optional[float]
    # baseline time / run time; None also when the target is not below the plateau
    time_to_target_speedup: Optional[float]
    best_val_mlm_loss: Optional[float] = None
    below_plateau: Optional[bool] = None  # best val/mlm_loss < plateau; None: unknown
    live_time_saved_pct: Optional[float] = None  # 100 x the last pld/time_saved_frac


@dataclass
class Summary:
    baseline: str
    target_val_loss: Optional[float]
    runs: list[RunSummary]
    messages: list[str] = field(default_factory=list)
    unigram_plateau: Optional[float] = None  # nats of validation MLM loss
    plateau_source: Optional[str] = None
    # The baseline's final val/mlm_loss (the target's evaluation) < plateau; None: unknown
    target_below_plateau: Optional[bool] = None


def _last(run: Run, tag: str) -> Optional[float]:
    series = run.get(tag)
    return series.last if series is not None else None


def summarize(runs: Sequence[Run], baseline_name: Optional[str] = None,
              plateau: Optional[float] = None, plateau_source: Optional[str] = None) -> Summary:
    """The summary numbers; `plateau` is the unigram plateau (None: unknown)."""
    if not runs:
        raise ReportError("no runs")
    base = pick_baseline(runs, baseline_name)
    messages = []
    if len(runs) == 1:
        messages.append(f"only one run ({base.name}): its own numbers, no comparison")
    elif baseline_name is None and not any(not r.uses_pld for r in runs):
        messages.append(f"every run uses PLD; {base.name} (the first) is the baseline")
    for run in runs:
        missing = [t for t in (VAL_LOSS, TRAIN_LOSS, SAMPLES, ELAPSED) if run.get(t) is None]
        if missing:
            messages.append(f"{run.name}: missing {', '.join(missing)}; "
                            "the numbers that need them are n/a")

    axis = time_axis(runs)
    if axis == ELAPSED and any(run.get(TRAIN_TIME) is not None for run in runs):
        messages.append(f"not every run logged {TRAIN_TIME}: all are timed by {ELAPSED} "
                        "(validation and checkpoints included)")
    target = _last(base, VAL_LOSS)
    base_tps = time_per_sample(base, axis)
    base_ttq = time_to_target(base, target, axis) if target is not None else None
    if target is None:
        messages.append(f"baseline {base.name} has no {VAL_LOSS}: no time to quality")

    rows = []
    for run in runs:
        tps = time_per_sample(run, axis)
        ttq = time_to_target(run, target, axis) if target is not None else None
        measurable = target is not None and on_axis(run, VAL_LOSS, axis) is not None
        if measurable and ttq is None:
            best = float(run.get(VAL_LOSS).values.min())
            messages.append(f"{run.name}: never reached the target val/loss {target:.4f} "
                            f"(best {best:.4f})")
        samples = run.get(SAMPLES)
        val_mlm = run.get(VAL_MLM_LOSS)
        best_mlm = float(np.nanmin(val_mlm.values)) if val_mlm is not None else None
        live = _last(run, TIME_SAVED_FRAC)
        rows.append(RunSummary(
            name=run.name, baseline=run is base, uses_pld=run.uses_pld,
            last_step=max((s.last_step for s in run.scalars.values()), default=None),
            samples=samples.last if samples is not None else None,
            elapsed_s=_last(run, axis),
            time_per_sample_s=tps,
            time_saving_pct=(100.0 * (1.0 - tps / base_tps)
                             if tps is not None and base_tps else None),
            encoder_flops_skipped_frac=_last(run, SKIPPED_FRAC),
            final_val_loss=_last(run, VAL_LOSS),
            target_reached=(ttq is not None) if measurable else None,
            time_to_target_s=ttq,
            time_to_target_speedup=(base_ttq / ttq if ttq and base_ttq is not None else None),
            best_val_mlm_loss=best_mlm,
            below_plateau=(best_mlm < plateau if plateau is not None and best_mlm is not None
                           else None),
            live_time_saved_pct=100.0 * live if live is not None else None,
        ))
    lengths = {r.name: r.samples for r in rows if r.samples is not None}
    if len(lengths) > 1 and max(lengths.values()) > 1.01 * min(lengths.values()):
        messages.append("runs differ in length (" + ", ".join(
            f"{n} {s:.0f} samples" for n, s in lengths.items()) + "): time per sample "
            "compares rates; time to quality compares the time to the baseline's final "
            "val/loss")
    summary = Summary(baseline=base.name, target_val_loss=target, runs=rows, messages=messages,
                      unigram_plateau=plateau, plateau_source=plateau_source)
    _check_savings_against_flops(summary)
    _check_plateau(summary, base)
    return summary


def _check_savings_against_flops(summary: Summary) -> None:
    """PLD saves at most the encoder work it skips (the heads, the optimizer and the
    input pipeline run in full): a larger measured saving is a change of machine load."""
    for r in summary.runs:
        if (r.baseline or not r.uses_pld or r.time_saving_pct is None
                or r.encoder_flops_skipped_frac is None):
            continue
        bound = 100.0 * r.encoder_flops_skipped_frac
        if r.time_saving_pct > bound:
            live = ("" if r.live_time_saved_pct is None else
                    f"; measured within the run, against its own full-depth step time, "
                    f"PLD saved {r.live_time_saved_pct:.1f}% ({TIME_SAVED_FRAC})")
            summary.messages.append(
                f"warning: {r.name}: the measured saving, {r.time_saving_pct:.1f}% of the "
                f"baseline's time per sample, exceeds the {bound:.1f}% of encoder FLOPs PLD "
                "skipped, the most that skipping layers can save: the machine's load "
                "differed between the runs, so this saving is mostly noise; compare runs "
                f"made under the same load{live}")


def _check_plateau(summary: Summary, base: Run) -> None:
    plateau = summary.unigram_plateau
    if plateau is None:
        summary.messages.append(f"unigram plateau {summary.plateau_source or 'unknown'}: "
                                "the losses are not checked against it")
        return
    for r in summary.runs:
        if r.below_plateau is False:
            summary.messages.append(
                f"warning: {r.name}: the validation MLM loss never fell below the unigram "
                f"plateau {plateau:.4f} (best {r.best_val_mlm_loss:.4f}): the run learned "
                "token frequencies, not language; train longer")
    if summary.target_val_loss is None:
        return
    val_mlm = base.get(VAL_MLM_LOSS)
    if val_mlm is None:
        summary.messages.append(f"the target is not checked against the unigram plateau: the "
                                f"baseline {base.name} has no {VAL_MLM_LOSS}")
        return
    final_mlm = val_mlm.last
    summary.target_below_plateau = final_mlm < plateau
    if not summary.target_below_plateau:
        for r in summary.runs:
            r.time_to_target_speedup = None
        summary.messages.append(
            f"no speedup to target: the target, the baseline's final val/loss "
            f"{summary.target_val_loss:.4f}, has a validation MLM loss of {final_mlm:.4f}, not "
            f"below the unigram plateau {plateau:.4f}: a run at that loss has learned token "
            "frequencies only, so reaching it sooner says nothing about learning; train the "
            "runs until the baseline's validation MLM loss is clearly below the plateau")


# ----------------------------------------------------------------------------- output

def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:{spec}}{suffix}"


def format_markdown(summary: Summary) -> str:
    target = _fmt(summary.target_val_loss, ".4f")
    plateau = (f"{summary.unigram_plateau:.4f} nats of validation MLM loss, "
               f"{summary.plateau_source}" if summary.unigram_plateau is not None
               else summary.plateau_source or "unknown")
    at_plateau = summary.target_below_plateau is False
    lines = [
        "# Run comparison",
        "",
        f"Baseline: **{summary.baseline}**. Time-to-quality target: the baseline's final "
        f"val/loss = {target}" + (" (its MLM loss is not below the unigram plateau: no "
                                  "speedup to target)." if at_plateau else "."),
        "",
        f"Unigram plateau: {plateau}.",
        "",
        "| run | PLD | steps | samples | train time (s) | time/sample (ms) | saving vs "
        "baseline | encoder FLOPs skipped | live saving estimate | final val/loss | "
        "best val MLM loss | time to target (s) | speedup to target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.runs:
        name = f"{r.name} (baseline)" if r.baseline else r.name
        lines.append(" | ".join([
            f"| {name}", "yes" if r.uses_pld else "no",
            _fmt(r.last_step, "d"), _fmt(r.samples, ".0f"), _fmt(r.elapsed_s, ".1f"),
            _fmt(None if r.time_per_sample_s is None else 1e3 * r.time_per_sample_s, ".3f"),
            _fmt(r.time_saving_pct, ".1f", "%"),
            _fmt(None if r.encoder_flops_skipped_frac is None
                 else 100 * r.encoder_flops_skipped_frac, ".1f", "%"),
            _fmt(r.live_time_saved_pct, ".1f", "%"),
            _fmt(r.final_val_loss, ".4f"),
            _fmt(r.best_val_mlm_loss, ".4f") + (" (not below plateau)"
                                                 if r.below_plateau is False else ""),
            "not reached" if r.target_reached is False else _fmt(r.time_to_target_s, ".1f"),
            ("n/a (target at plateau)" if at_plateau
             else _fmt(r.time_to_target_speedup, ".2f", "x")) + " |",
        ]))
    if summary.messages:
        lines += ["", "Notes:", ""] + [f"- {m}" for m in summary.messages]
    return "\n".join(lines) + "\n"


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
    `target` (the time-to-quality val/loss) and `plateau` (the unigram plateau, MLM
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


def write_report(runs: Sequence[Run], out_dir: str | Path, baseline_name: Optional[str] = None,
                 plateau: Optional[float] = None) -> tuple[Summary, list[Path]]:
    """`plateau`: the unigram plateau if given (--plateau), else found by find_plateau."""
    out_dir = Path(out_dir)
    if not runs:
        raise ReportError("no runs")
    plateau, source = find_plateau(runs, pick_baseline(runs, baseline_name), plateau)
    summary = summarize(runs, baseline_name, plateau, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = write_plots(runs, out_dir, summary.target_val_loss, plateau)
    summary.messages += [f"plot skipped: {note}" for note in skipped]
    (out_dir / "summary.md").write_text(format_markdown(summary))
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary, written + [out_dir / "summary.md", out_dir / "summary.json"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.ArgumentParser(
        "bing_bert_pld.report",
        description="Compare runs (PLD vs baseline) from their TensorBoard events.")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="training output dir (events in RUN_DIR/tensorboard) or event dir")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="where plots, summary.md and summary.json go")
    parser.add_argument("--baseline", default=None, metavar="NAME",
                        help="run name (its directory's name) to compare against; default: "
                             "the first run without PLD")
    parser.add_argument("--plateau", type=float, default=None, metavar="NATS",
                        help="the unigram plateau (validation MLM loss of predicting each "
                             "masked token from the corpus's token frequencies); default: "
                             "computed from the shards the runs' run_config.json names")
    args = parser.parse_args(argv)
    if args.plateau is not None and not (math.isfinite(args.plateau) and args.plateau > 0):
        parser.error(f"--plateau must be a positive number of nats, got {args.plateau}")
    try:
        runs = [load_run(path, name)
                for path, name in zip(args.run_dirs, unique_names(args.run_dirs))]
        summary, written = write_report(runs, args.out, args.baseline, args.plateau)
    except ReportError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    print(format_markdown(summary))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
