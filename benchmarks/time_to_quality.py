"""Time to quality: PLD and baseline trained for the same wall-clock budget.

    python -m benchmarks.time_to_quality [--minutes 2] [--fresh] [--out runs/time_to_quality]

The quickstart's setup (launch/quickstart.sh), through the real trainer
(`python -m bing_bert_pld.train`, one process): the quickstart corpus, the
bert-quickstart model (12 Pre-LN layers, hidden 128) and ds_configs/cpu_small_pld.json
vs ds_configs/cpu_small_baseline.json, which must differ only in the
`progressive_layer_drop` block. Each run's budget is split into --slices pieces run
alternately (baseline, PLD, PLD, baseline, ...) through the trainer's exact resume,
so a change in the machine's background load hits both runs alike. The time compared
is the trainer's perf/train_time_s: training steps only, so start-up, validation and
checkpoints are outside it (the budget itself runs on perf/elapsed_s, which has them).

Data: --data, else the quickstart's shards (work/quickstart/data_seq128) when
launch/quickstart.sh made them, else the same corpus built here with the same
data_prep command (English Wikipedia excerpt from gensim + World English Bible).

The comparison is bing_bert_pld.report's: final validation loss of each run, and the
training time each needed to reach the baseline's final validation loss (its first
evaluation at or below it), with the ratio. Plots and summary go to OUT/report.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from bing_bert_pld import report
from bing_bert_pld.config import read_json_object

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_DATA = REPO / "work" / "quickstart" / "data_seq128"
CONFIGS = {"baseline": REPO / "ds_configs" / "cpu_small_baseline.json",
           "pld": REPO / "ds_configs" / "cpu_small_pld.json"}
PLD_KEY = "progressive_layer_drop"


def check_configs_differ_only_in_pld(paths: dict[str, Path]) -> None:
    values = {name: read_json_object(path, "DeepSpeed config") for name, path in paths.items()}
    if PLD_KEY not in values["pld"] or not values["pld"][PLD_KEY].get("enabled"):
        raise SystemExit(f"{paths['pld']}: no enabled '{PLD_KEY}' block")
    values["pld"].pop(PLD_KEY)
    values["baseline"].pop(PLD_KEY, None)
    if values["pld"] != values["baseline"]:
        raise SystemExit(f"{paths['pld']} and {paths['baseline']} differ in more than the "
                         f"'{PLD_KEY}' block: the comparison would not isolate PLD")


def build_quickstart_data(out: Path) -> Path:
    """The corpus and shards of launch/quickstart.sh, under `out`."""
    data = out / "data_seq128"
    if (out / "data_seq128.complete").is_file():
        return data
    from data_prep.corpora import bert_uncased_vocab, wiki_dump_excerpt, write_bible_books

    books = write_bible_books(out / "corpus" / "bible")
    command = [sys.executable, "-m", "data_prep", "all",
               "--source", f"wiki=wiki-xml:{wiki_dump_excerpt()}",
               "--source", f"bible=books:{books}", "--vocab", str(bert_uncased_vocab()),
               "--seq-len", "128", "--max-pred", "20", "--duplication", "2",
               "--rows-per-shard", "8192", "--output", str(data),
               "--work-dir", str(out / "prep_work"), "--no-progress"]
    print("building the quickstart data:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    (out / "data_seq128.complete").touch()
    return data


def train_command(args, name: str, data: Path, manifest: dict, minutes: float) -> list[str]:
    return [sys.executable, "-m", "bing_bert_pld.train",
            "--deepspeed_config", str(CONFIGS[name]), "--model_config", args.model_config,
            "--train_dir", str(data / "train"), "--val_dir", str(data / "validation"),
            "--output_dir", str(args.out / name),
            "--max_seq_length", str(manifest["seq_len"]),
            "--max_predictions_per_seq", str(manifest["max_pred"]),
            "--max_time_minutes", f"{minutes:.6f}", "--seed", str(args.seed),
            "--log_interval", str(args.log_interval), "--val_interval", str(args.val_interval),
            "--val_batches", str(args.val_batches), "--checkpoint_interval", "100000000"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per run")
    parser.add_argument("--slices", type=int, default=2, help="alternating pieces per run")
    parser.add_argument("--data", type=Path, default=None, help="data_prep output directory")
    parser.add_argument("--out", type=Path, default=Path("runs/time_to_quality"))
    parser.add_argument("--model-config", default="bert-quickstart")
    parser.add_argument("--log-interval", type=int, default=5)
    parser.add_argument("--val-interval", type=int, default=10)
    parser.add_argument("--val-batches", type=int, default=4,
                        help="validation batches per evaluation; their time is spent from the "
                             "budget (perf/elapsed_s), not counted in the compared time")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs in --out")
    args = parser.parse_args(argv)

    check_configs_differ_only_in_pld(CONFIGS)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        data = (QUICKSTART_DATA if (QUICKSTART_DATA.parent / "data_seq128.complete").is_file()
                else build_quickstart_data(args.out))
    manifest = read_json_object(data / "manifest.json", "data_prep manifest")
    names = ("baseline", "pld")
    for name in names:
        if args.fresh:
            shutil.rmtree(args.out / name, ignore_errors=True)
            (args.out / f"{name}.log").unlink(missing_ok=True)
        elif (args.out / name).exists():
            raise SystemExit(f"{args.out / name} exists: pass --fresh to start over")

    for piece in range(args.slices):
        minutes = args.minutes * (piece + 1) / args.slices  # elapsed continues on resume
        for name in (names if piece % 2 == 0 else names[::-1]):
            print(f"[{name}] training up to {minutes:.2f} min (log: {args.out / name}.log)",
                  flush=True)
            with open(args.out / f"{name}.log", "a") as log:
                subprocess.run(train_command(args, name, data, manifest, minutes),
                               check=True, stdout=log, stderr=subprocess.STDOUT)

    runs = [report.load_run(args.out / name, name) for name in names]
    summary, _ = report.write_report(runs, args.out / "report", baseline_name="baseline")
    rows = {r.name: r for r in summary.runs}
    base, pld = rows["baseline"], rows["pld"]
    print(report.format_markdown(summary))
    print(f"data {data}; model {args.model_config}; {args.minutes} min per run in "
          f"{args.slices} slices; configs {CONFIGS['pld'].name} vs {CONFIGS['baseline'].name}")
    print(f"final val/loss: baseline {base.final_val_loss:.4f} ({base.last_step} steps), "
          f"PLD {pld.final_val_loss:.4f} ({pld.last_step} steps)")
    if pld.time_to_target_s is not None and base.time_to_target_s is not None:
        print(f"time to the baseline's final val/loss: baseline {base.time_to_target_s:.1f} s, "
              f"PLD {pld.time_to_target_s:.1f} s: {pld.time_to_target_speedup:.2f}x")
    else:
        print("time to the baseline's final val/loss: PLD did not reach it within the budget")
    print(f"report: {args.out / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
