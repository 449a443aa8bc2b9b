"""One run directory summarised for people and scripts: its checkpoints, progress, configuration and vocabulary.

    python -m bing_bert_pld.run info RUN_DIR            readable lines
    python -m bing_bert_pld.run info RUN_DIR --json     one JSON object
    python -m bing_bert_pld.run info RUN_DIR --get step one value (for shell scripts)

Nothing is written, and nothing but JSON files and directory listings is read: no
torch, no pickles. `--verify` also checks the checkpoint `latest` names against its
manifest (sizes and sha256), as a resume would.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

from .. import cli
from ..formatting import format_number
from .config import section, sequence_shape
from .files import read_json_object
from .layout import LATEST, RUN_CONFIG, TRAINER_STATE, VOCAB, RunDir, published_tags, read_latest

# --get KEY: the values a script may ask for, each a number, a string or null.
SCALARS = ("run_dir", "latest", "step", "samples", "elapsed_s", "train_time_s", "seq_len",
           "max_pred", "vocab_file", "vocab_sha256", "lowercase", "world_size")


def info(run_dir: Path, verify: bool = False) -> dict[str, Any]:
    """What RUN_DIR holds. A run without a checkpoint has step 0 and no latest."""
    run = RunDir(Path(run_dir))
    root = run.checkpoints
    latest, problem = read_latest(root)
    state: dict = {}
    run_config: Optional[dict] = None
    if latest is not None:
        state, state_problem = read_json_object(root / latest / TRAINER_STATE)
        problem = problem or (state_problem and f"{root / latest}: {state_problem}")
        run_config, _ = read_json_object(root / latest / RUN_CONFIG)
        state = state or {}
    if run_config is None:
        run_config, _ = read_json_object(run.run_config)
    run_config = run_config or {}
    counts, count_problem = _counts(state)
    problem = problem or (count_problem and f"{root / latest / TRAINER_STATE}: {count_problem}")
    if verify and latest is not None and problem is None:
        from .checkpoint import verify as verify_checkpoint  # torch: only when asked

        damage = verify_checkpoint(root / latest)
        problem = damage and f"{root / latest} is damaged: {damage}"
    data = section(run_config, "data")
    shape = sequence_shape(run_config)
    vocab_in_run = [p for p in ((root / latest / VOCAB) if latest else None, run.vocab) if p and p.is_file()]
    return {
        "run_dir": str(run.root.resolve()),
        "latest": latest,
        "problem": problem,  # what is wrong with `latest` or its checkpoint; null when fine
        "checkpoints": published_tags(root),
        **counts,
        "world_size": state.get("world_size", run_config.get("world_size")),
        "seq_len": shape["seq_len"],
        "max_pred": shape["max_pred"],
        "vocab_file": str(vocab_in_run[0].resolve()) if vocab_in_run else None,
        "vocab_sha256": run_config.get("vocab_sha256"),
        "lowercase": data.get("lowercase"),
        "model_config": section(run_config, "model_config") or None,
        "train_dir": section(run_config, "run").get("train_dir"),
    }


def _counts(state: dict) -> tuple[dict, Optional[str]]:
    """The progress numbers of a trainer_state.json (0 without a checkpoint), and what is
    wrong with them when one is not a number."""
    numbers = {"step": state.get("step", 0), "samples": state.get("samples", 0),
               "elapsed_s": state.get("elapsed_s", 0.0)}
    numbers["train_time_s"] = state.get("train_time_s", numbers["elapsed_s"])
    bad = [key for key, value in numbers.items()
           if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)]
    for key in bad:
        numbers[key] = None
    problem = f"not a finite number: {', '.join(bad)}" if bad else None
    return numbers, problem


def _lines(summary: dict) -> list[str]:
    lines = [f"run directory  {summary['run_dir']}"]
    if summary["latest"] is None:
        lines.append(f"checkpoints    none{'' if not summary['problem'] else ' usable: ' + summary['problem']}")
    else:
        lines.append(f"latest         {summary['latest']} (of {len(summary['checkpoints'])} checkpoints)"
                     + (f"  PROBLEM: {summary['problem']}" if summary["problem"] else ""))
        lines.append(f"progress       step {summary['step']}, {summary['samples']} samples, "
                     f"{format_number(summary['elapsed_s'], '.1f', '?')} s elapsed "
                     f"({format_number(summary['train_time_s'], '.1f', '?')} s training)")
    lines.append(f"sequences      seq_len {summary['seq_len']}, max_pred {summary['max_pred']}")
    lines.append(f"vocabulary     {summary['vocab_file'] or 'none in the run'}"
                 + ("" if summary["lowercase"] is None else f" (lowercase {summary['lowercase']})"))
    model = summary["model_config"] or {}
    if model:
        lines.append(f"model          {model.get('num_hidden_layers')} layers, hidden "
                     f"{model.get('hidden_size')}, vocab {model.get('vocab_size')}, "
                     f"{'Pre' if model.get('pre_layer_norm') else 'Post'}-LN")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = cli.ArgumentParser(
        "bing_bert_pld.run", description="Read a run directory (the trainer's --output_dir).")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("info", help="what a run directory holds: checkpoints, progress, "
                                            "configuration, vocabulary")
    show.add_argument("run_dir", metavar="RUN_DIR", help="the trainer's --output_dir")
    output = show.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object")
    output.add_argument("--get", choices=SCALARS, metavar="KEY",
                        help=f"print one value (null: unknown); one of {', '.join(SCALARS)} "
                             "(default: every value, as readable lines)")
    show.add_argument("--verify", action="store_true",
                      help=f"also check the checkpoint '{LATEST}' names against its manifest "
                           "(sizes and sha256); exit 1 when it is damaged")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"error: {run_dir}: no such run directory", file=sys.stderr)
        return 2
    summary = info(run_dir, verify=args.verify)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif args.get:
        value = summary[args.get]
        print(json.dumps(value) if value is None or isinstance(value, bool) else value)
    else:
        print("\n".join(_lines(summary)))
    return 1 if args.verify and summary["problem"] else 0
