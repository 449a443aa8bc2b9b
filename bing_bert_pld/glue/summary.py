"""The table over GLUE tasks and seeds, from the runs' results.json files.

    python -m bing_bert_pld.glue.summary RUNS_DIR [--out summary.md]

Finds every results.json under RUNS_DIR (launch/glue_all.sh writes
RUNS_DIR/<TASK>/seed<S>/results.json) and prints, in percent, each task's final dev
metrics as mean, standard deviation (over seeds, n - 1) and the value of every seed.
MNLI's two dev sets are rows MNLI-m and MNLI-mm. A task's score is the mean of its
metrics (GLUE's rule), MNLI's the mean of -m and -mm; the average is taken over the
tasks present except WNLI, as BERT reported dev results. Writes summary.md and
summary.json beside the runs unless --out says otherwise.
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import cli
from ..formatting import format_number
from .data import TASKS, get_task
from .finetune import RESULTS

SPLIT_SUFFIX = {"dev": "", "dev_matched": "-m", "dev_mismatched": "-mm"}
EXCLUDED_FROM_AVERAGE = ("WNLI",)


def collect(root: str | Path) -> list[dict]:
    runs = [json.loads(path.read_text()) for path in sorted(Path(root).rglob(RESULTS))]
    if not runs:
        raise FileNotFoundError(f"no {RESULTS} under {root}")
    return runs


def summarize(runs: list[dict]) -> dict:
    """{"rows": [{task, metric, mean, std, seeds: {seed: value}}], "task_scores", "average"}"""
    values: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    for run in runs:
        spec = get_task(run["task"])
        for split, metrics in run["metrics"].items():
            for metric, value in metrics.items():
                values[(spec.name, split, metric)][run["seed"]] = value
    order = list(TASKS)
    rows = []
    for (task, split, metric), by_seed in sorted(
            values.items(), key=lambda item: (order.index(item[0][0]), item[0][1],
                                              TASKS[item[0][0]].metrics.index(item[0][2]))):
        scores = np.array([100.0 * v if v is not None else math.nan for v in by_seed.values()])
        rows.append({"task": task + SPLIT_SUFFIX.get(split, f"-{split}"), "base_task": task,
                     "metric": metric, "mean": float(np.mean(scores)),
                     "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
                     "seeds": {seed: None if v is None else 100.0 * v
                               for seed, v in sorted(by_seed.items())}})
    task_scores = {}
    for task in order:
        means = [row["mean"] for row in rows if row["base_task"] == task]
        if means:
            task_scores[task] = float(np.mean(means))
    counted = {task: score for task, score in task_scores.items() if task not in EXCLUDED_FROM_AVERAGE}
    return {"rows": rows, "task_scores": task_scores,
            "average": float(np.mean(list(counted.values()))) if counted else math.nan,
            "average_over": list(counted)}


# a score cell: percent with two decimals; "nan" where a seed or task has no score
_score = functools.partial(format_number, spec=".2f", missing="nan")


def to_markdown(summary: dict) -> str:
    lines = ["| task | metric | mean | std | n | per seed |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for row in summary["rows"]:
        seeds = ", ".join(f"{seed}: {_score(value)}" for seed, value in row["seeds"].items())
        lines.append(f"| {row['task']} | {row['metric']} | {_score(row['mean'])} | "
                     f"{_score(row['std'])} | {len(row['seeds'])} | {seeds} |")
    lines.append("")
    lines.append("| task score | " + " | ".join(summary["task_scores"]) + " | average |")
    lines.append("| --- " * (len(summary["task_scores"]) + 2) + "|")
    lines.append("| mean over seeds | " + " | ".join(_score(v) for v in summary["task_scores"].values())
                 + f" | {_score(summary['average'])} |")
    lines.append("")
    lines.append(f"Average over {', '.join(summary['average_over']) or 'no task'} "
                 f"(WNLI excluded); values in percent.")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.ArgumentParser("bing_bert_pld.glue.summary", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", metavar="RUNS_DIR",
                        help="searched for results.json files (RUNS_DIR/<TASK>/seed<S>/results.json)")
    parser.add_argument("--out", metavar="PATH", help="markdown file (default: RUNS_DIR/summary.md; "
                        "summary.json is written beside it)")
    args = parser.parse_args(argv)
    summary = summarize(collect(args.runs_dir))
    markdown = to_markdown(summary)
    out = Path(args.out) if args.out else Path(args.runs_dir) / "summary.md"
    out.write_text(markdown)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
