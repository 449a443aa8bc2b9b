"""The report command: read the runs, write the plots and the summary into --out, print the summary.

    python -m bing_bert_pld.report RUN_DIR [RUN_DIR ...] --out DIR [--baseline NAME]
        [--plateau NATS] [--print_comparison]

RUN_DIR is a training output directory or its event directory (events.py). Writes to DIR
the PNGs of plots.py and summary.md and summary.json (the Summary of numbers.py, whose
docstring defines each number); prints summary.md, and with --print_comparison each
run's time per sample and the time PLD saved, one line each.

TensorBoard shows the same curves when the runs share a log root:
    tensorboard --logdir runs/        # runs/pld/tensorboard, runs/baseline/tensorboard
(or --logdir_spec pld:PATH1,baseline:PATH2); pick the "Relative" horizontal axis for
wall-clock, and use the charts of the ELAPSED or SAMPLES scalars (run.metric_names) for
the exact axes.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from .. import cli
from .events import ReportError, Run, load_run, unique_names
from .numbers import Summary, find_plateau, pick_baseline, summarize
from .plots import write_plots
from .text import format_markdown, format_time_saved


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
    parser.add_argument("--print_comparison", action="store_true",
                        help="after the summary, print each run's time per sample and the "
                             "time PLD saved per sample against the baseline, one line each")
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
    if args.print_comparison:
        print()
        print(format_time_saved(summary), end="")
    return 0
