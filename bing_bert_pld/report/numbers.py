"""The comparison numbers from the runs' scalars: time per sample and saved, time to quality, plateau checks.

- time per sample = training time / samples seen (SAMPLES) at the run's last logged
  step, and the saving against the baseline in percent; training time is TRAIN_TIME (the
  time spent in training steps) when every run compared logged it, else ELAPSED for all
  of them (one clock for all, said in a message);
- encoder FLOPs saved = the last SKIPPED_FRAC;
- time to quality: the target is the baseline's final VAL_LOSS; each run's time is the
  training time at its first evaluation with VAL_LOSS <= target (evaluations only, no
  interpolation between them), and the ratio is baseline time / run time.
A scalar logged at steps other than the time axis's is placed on it by linear
interpolation over steps (linear extrapolation past the ends). The names are those of
run.metric_names.

What the report refuses to state as a result (each said in a "warning:" note instead):
- a saving larger than the fraction of encoder FLOPs PLD skipped: skipping layers cannot
  save more than their share of the work, so the machine's load differed between the
  runs (both numbers are printed; TIME_SAVED_FRAC, measured within the PLD run itself,
  is printed beside them);
- a speedup to a target at or above the unigram plateau (unigram.py): when the
  baseline's final validation MLM loss is not below it, the target marks learned token
  frequencies, and reaching it sooner says nothing. The plateau is computed from the
  shards named in the runs' run_config.json (the newest checkpoint's), or given with
  --plateau; a run whose validation MLM loss never fell below it is named.

The baseline is --baseline NAME, otherwise the first run without PLD (no THETA logged,
or theta always 1), otherwise the first run given. Missing scalars, a single run and
runs of different lengths are reported as messages, never as a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..run.metric_names import (ELAPSED, SAMPLES, SKIPPED_FRAC, TIME_SAVED_FRAC, TRAIN_LOSS,
                                TRAIN_TIME, VAL_LOSS, VAL_MLM_LOSS)
from ..unigram import plateau_of_data
from .events import ReportError, Run


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
    """Seconds on the time `axis` at the first evaluation with VAL_LOSS <= target, None
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
    target_reached: Optional[bool]  # None when the run lacks VAL_LOSS or the time axis
    time_to_target_s: Optional[float]
    # baseline time / run time; None also when the target is not below the plateau
    time_to_target_speedup: Optional[float]
    best_val_mlm_loss: Optional[float] = None
    below_plateau: Optional[bool] = None  # best VAL_MLM_LOSS < plateau; None: unknown
    live_time_saved_pct: Optional[float] = None  # 100 x the last TIME_SAVED_FRAC


@dataclass
class Summary:
    baseline: str
    target_val_loss: Optional[float]
    runs: list[RunSummary]
    messages: list[str] = field(default_factory=list)
    unigram_plateau: Optional[float] = None  # nats of validation MLM loss
    plateau_source: Optional[str] = None
    # The baseline's final VAL_MLM_LOSS (the target's evaluation) < plateau; None: unknown
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
            messages.append(f"{run.name}: never reached the target {VAL_LOSS} {target:.4f} "
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
            f"{VAL_LOSS}")
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
            f"no speedup to target: the target, the baseline's final {VAL_LOSS} "
            f"{summary.target_val_loss:.4f}, has a validation MLM loss of {final_mlm:.4f}, not "
            f"below the unigram plateau {plateau:.4f}: a run at that loss has learned token "
            "frequencies only, so reaching it sooner says nothing about learning; train the "
            "runs until the baseline's validation MLM loss is clearly below the plateau")


def find_plateau(runs: Sequence[Run], baseline: Run,
                 given: Optional[float] = None) -> tuple[Optional[float], str]:
    """(the unigram plateau in nats of validation MLM loss, where it comes from): --plateau,
    else computed from the shards in the baseline's run_config.json (else another run's)."""
    if given is not None:
        return given, "given with --plateau"
    from ..shard_validation import DataError  # h5py, loaded only when shards are read

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
