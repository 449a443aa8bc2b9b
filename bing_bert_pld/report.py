"""Compare training runs (a PLD run and its baseline) from their TensorBoard events.

    python -m bing_bert_pld.report RUN_DIR [RUN_DIR ...] --out DIR [--baseline NAME]

RUN_DIR is a training output directory (events under RUN_DIR/tensorboard/) or the
event directory itself; a run is named after its directory. Writes to DIR:
- loss_vs_time.png, loss_vs_samples.png: validation and training loss against training
  time (perf/train_time_s, else perf/elapsed_s) and against samples seen (train/samples);
- pld.png: theta and active layers against the optimizer step;
- throughput.png: samples/s against the step;
- summary.md and summary.json, the summary also printed to the console.

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

The baseline is --baseline NAME, otherwise the first run without PLD (no pld/theta, or
theta always 1), otherwise the first run given. Missing scalars, a single run and runs
of different lengths are reported as messages, never as a crash.

TensorBoard shows the same curves when the runs share a log root:
    tensorboard --logdir runs/        # runs/pld/tensorboard, runs/baseline/tensorboard
(or --logdir_spec pld:PATH1,baseline:PATH2); pick the "Relative" horizontal axis for
wall-clock, and use perf/elapsed_s or train/samples charts for the exact axes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

EVENT_GLOB = "events.out.tfevents.*"

VAL_LOSS = "val/loss"
TRAIN_LOSS = "train/loss"
SAMPLES = "train/samples"
ELAPSED = "perf/elapsed_s"
TRAIN_TIME = "perf/train_time_s"  # training steps only: validation and checkpoints excluded
SAMPLES_PER_SEC = "perf/samples_per_sec"
THETA = "pld/theta"
EXPECTED_ACTIVE = "pld/expected_active_layers"
ACTIVE = "pld/active_layers"
SKIPPED_FRAC = "pld/encoder_flops_skipped_frac"


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

    def get(self, tag: str) -> Optional[Series]:
        return self.scalars.get(tag)

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
    return Run(name=name, scalars=scalars, path=str(event_dir))


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
    time_to_target_speedup: Optional[float]  # baseline time / run time


@dataclass
class Summary:
    baseline: str
    target_val_loss: Optional[float]
    runs: list[RunSummary]
    messages: list[str] = field(default_factory=list)


def _last(run: Run, tag: str) -> Optional[float]:
    series = run.get(tag)
    return series.last if series is not None else None


def summarize(runs: Sequence[Run], baseline_name: Optional[str] = None) -> Summary:
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
        ))
    lengths = {r.name: r.samples for r in rows if r.samples is not None}
    if len(lengths) > 1 and max(lengths.values()) > 1.01 * min(lengths.values()):
        messages.append("runs differ in length (" + ", ".join(
            f"{n} {s:.0f} samples" for n, s in lengths.items()) + "): time per sample "
            "compares rates; time to quality compares the time to the baseline's final "
            "val/loss")
    return Summary(baseline=base.name, target_val_loss=target, runs=rows, messages=messages)


# ----------------------------------------------------------------------------- output

def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:{spec}}{suffix}"


def format_markdown(summary: Summary) -> str:
    target = _fmt(summary.target_val_loss, ".4f")
    lines = [
        "# Run comparison",
        "",
        f"Baseline: **{summary.baseline}**. Time-to-quality target: the baseline's final "
        f"val/loss = {target}.",
        "",
        "| run | PLD | steps | samples | train time (s) | time/sample (ms) | saving vs "
        "baseline | encoder FLOPs skipped | final val/loss | time to target (s) | "
        "speedup to target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
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
            _fmt(r.final_val_loss, ".4f"),
            "not reached" if r.target_reached is False else _fmt(r.time_to_target_s, ".1f"),
            _fmt(r.time_to_target_speedup, ".2f", "x") + " |",
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


def write_plots(runs: Sequence[Run], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Write the PNGs that the available scalars allow; return (written, skipped notes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written, skipped = [], []
    color = {run.name: f"C{i}" for i, run in enumerate(runs)}  # one color per run everywhere

    def figure(filename, panels, xlabel):
        """panels: [(title, [(run, label, x, y, style)])]; a panel without curves says so."""
        if not any(curves for _, curves in panels):
            return False
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2),
                                 squeeze=False)
        for ax, (title, curves) in zip(axes[0], panels):
            for run, label, x, y, style in curves:
                ax.plot(x, y, style, color=color[run.name], label=label,
                        marker="." if len(x) < 50 else None)
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if curves:
                ax.legend()
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
    for by_time, filename, xlabel in ((True, "loss_vs_time.png", f"training time ({unit})"),
                                      (False, "loss_vs_samples.png", "samples")):
        panels = []
        for title, tag in (("validation loss", VAL_LOSS), ("training loss", TRAIN_LOSS)):
            curves = []
            for run in runs:
                placed = on_axis(run, tag, time_tag if by_time else SAMPLES)
                if placed is not None:
                    x = placed[0] / scale if by_time else placed[0]
                    curves.append((run, run.name, x, placed[1], "-"))
            panels.append((title, curves))
        if not figure(filename, panels, xlabel):
            axis = time_tag if by_time else SAMPLES
            skipped.append(f"{filename}: no run has {VAL_LOSS} or {TRAIN_LOSS} with {axis}")

    theta_curves, active_curves = [], []
    for run in runs:
        if run.get(THETA) is not None:
            theta_curves.append((run, run.name, run.get(THETA).steps, run.get(THETA).values, "-"))
        for tag, suffix, style in ((ACTIVE, "", "-"), (EXPECTED_ACTIVE, " expected", "--")):
            if run.get(tag) is not None:
                active_curves.append((run, run.name + suffix, run.get(tag).steps,
                                      run.get(tag).values, style))
    if not figure("pld.png", [("theta", theta_curves), ("active layers", active_curves)],
                  "optimizer step"):
        skipped.append(f"pld.png: no run has {THETA}, {ACTIVE} or {EXPECTED_ACTIVE}")

    rate_curves = [(r, r.name, r.get(SAMPLES_PER_SEC).steps, r.get(SAMPLES_PER_SEC).values, "-")
                   for r in runs if r.get(SAMPLES_PER_SEC) is not None]
    if not figure("throughput.png", [("samples/s", rate_curves)], "optimizer step"):
        skipped.append(f"throughput.png: no run has {SAMPLES_PER_SEC}")
    return written, skipped


def write_report(runs: Sequence[Run], out_dir: str | Path,
                 baseline_name: Optional[str] = None) -> tuple[Summary, list[Path]]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs, baseline_name)
    written, skipped = write_plots(runs, out_dir)
    summary.messages += [f"plot skipped: {note}" for note in skipped]
    (out_dir / "summary.md").write_text(format_markdown(summary))
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary, written + [out_dir / "summary.md", out_dir / "summary.json"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bing_bert_pld.report",
        description="Compare runs (PLD vs baseline) from their TensorBoard events.")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="training output dir (events in RUN_DIR/tensorboard) or event dir")
    parser.add_argument("--out", required=True, type=Path, help="where plots and summary go")
    parser.add_argument("--baseline", default=None, metavar="NAME",
                        help="run name (its directory's name) to compare against; default: "
                             "the first run without PLD")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(path, name)
                for path, name in zip(args.run_dirs, unique_names(args.run_dirs))]
        summary, written = write_report(runs, args.out, args.baseline)
    except ReportError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    print(format_markdown(summary))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
