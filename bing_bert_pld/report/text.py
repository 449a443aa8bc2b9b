"""The summary as text: summary.md's table and notes, and the console's time-per-sample lines."""

from __future__ import annotations


from ..formatting import format_number
from ..run.metric_names import VAL_LOSS
from .numbers import Summary


def format_markdown(summary: Summary) -> str:
    target = format_number(summary.target_val_loss, ".4f")
    plateau = (f"{summary.unigram_plateau:.4f} nats of validation MLM loss, "
               f"{summary.plateau_source}" if summary.unigram_plateau is not None
               else summary.plateau_source or "unknown")
    at_plateau = summary.target_below_plateau is False
    lines = [
        "# Run comparison",
        "",
        f"Baseline: **{summary.baseline}**. Time-to-quality target: the baseline's final "
        f"{VAL_LOSS} = {target}" + (" (its MLM loss is not below the unigram plateau: no "
                                  "speedup to target)." if at_plateau else "."),
        "",
        f"Unigram plateau: {plateau}.",
        "",
        "| run | PLD | steps | samples | train time (s) | time/sample (ms) | saving vs "
        f"baseline | encoder FLOPs skipped | live saving estimate | final {VAL_LOSS} | "
        "best val MLM loss | time to target (s) | speedup to target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.runs:
        name = f"{r.name} (baseline)" if r.baseline else r.name
        lines.append(" | ".join([
            f"| {name}", "yes" if r.uses_pld else "no",
            format_number(r.last_step, "d"), format_number(r.samples, ".0f"), format_number(r.elapsed_s, ".1f"),
            format_number(None if r.time_per_sample_s is None else 1e3 * r.time_per_sample_s, ".3f"),
            format_number(r.time_saving_pct, ".1f", suffix="%"),
            format_number(None if r.encoder_flops_skipped_frac is None
                 else 100 * r.encoder_flops_skipped_frac, ".1f", suffix="%"),
            format_number(r.live_time_saved_pct, ".1f", suffix="%"),
            format_number(r.final_val_loss, ".4f"),
            format_number(r.best_val_mlm_loss, ".4f") + (" (not below plateau)"
                                                 if r.below_plateau is False else ""),
            "not reached" if r.target_reached is False else format_number(r.time_to_target_s, ".1f"),
            ("n/a (target at plateau)" if at_plateau
             else format_number(r.time_to_target_speedup, ".2f", suffix="x")) + " |",
        ]))
    if summary.messages:
        lines += ["", "Notes:", ""] + [f"- {m}" for m in summary.messages]
    return "\n".join(lines) + "\n"


def format_time_saved(summary: Summary) -> str:
    """Each run's time per sample, then what each other run saved per sample against the
    baseline, with the share of encoder FLOPs it skipped (--print_comparison; the lines
    launch/quickstart.sh ends with). A number a run did not log reads n/a; with one run
    compared the saving is called PLD's, with several each is named."""
    lines = []
    for r in summary.runs:
        ms = None if r.time_per_sample_s is None else 1000 * r.time_per_sample_s
        lines.append(f"time per sample, {r.name:>8}: {format_number(ms, '.2f', suffix=' ms')} "
                     f"({format_number(r.samples, '.0f')} samples in {format_number(r.elapsed_s, '.0f', suffix=' s')})")
    base = next(r for r in summary.runs if r.baseline)
    compared = [r for r in summary.runs if not r.baseline]
    for r in compared:
        who = "PLD" if len(compared) == 1 else r.name  # one run against its baseline: PLD's
        skipped = "encoder FLOPs skipped: " + format_number(
            None if r.encoder_flops_skipped_frac is None else 100 * r.encoder_flops_skipped_frac,
            ".1f", suffix="%")
        if r.time_saving_pct is None:  # a time per sample missing or zero
            lines.append(f"{who} saved: n/a (no time per sample to compare); {skipped}")
            continue
        saved_ms = 1000 * (base.time_per_sample_s - r.time_per_sample_s)
        if saved_ms >= 0:
            lines.append(f"{who} saved {saved_ms:.2f} ms per sample ({r.time_saving_pct:.1f}% of "
                         f"the baseline's time per sample); {skipped}")
        else:
            lines.append(f"{who} saved no time here: {-saved_ms:.2f} ms per sample slower "
                         f"({-r.time_saving_pct:.1f}%); {skipped}. Timings on a busy machine are "
                         "noisy: compare runs made on an idle one, or train longer.")
    return "\n".join(lines) + "\n"
