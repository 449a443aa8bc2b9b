"""Time to quality: the PLD paper's comparison, on 2 CPU cores, past the unigram plateau.

    python -m benchmarks.time_to_quality --minutes 10 --seeds 1 2 --arms all --fresh
    python -m benchmarks.time_to_quality --smoke --fresh        # plumbing only, ~3 minutes
    python -m benchmarks.time_to_quality --report-only          # redo the summary and plot

Arms, trained by the real trainer (`python -m bing_bert_pld.train`, one process) on the
same data for the same wall-clock budget (`--minutes` per run, perf/elapsed_s):
- postln_baseline: Post-LN BERT at its stable learning rate (--lr-low, 1e-4), the paper's
  baseline;
- preln_baseline: Pre-LN at the PLD learning rate (--lr-high, 1e-3), no PLD;
- preln_pld: Pre-LN at --lr-high with PLD (theta_bar --theta, gamma --gamma);
- postln_high (optional, `--arms all`): Post-LN at --lr-high, to see whether it diverges
  or lags, the paper's reason for Pre-LN.
Their DeepSpeed JSONs come from one dict and differ only in the lr and the PLD block;
their model configs only in `pre_layer_norm` (configs/ in --out holds both). Each run's
budget is split into --slices pieces, run round-robin through the trainer's exact
resume, so the machine's background load hits every arm alike. The time compared is
perf/train_time_s (training steps only; start-up and validation excluded). Run it on an
otherwise idle machine, or pass --threads 1 where other jobs share the cores (two
threads on two busy cores spin-wait for each other, several times slower).

The configuration is chosen so that validation MLM loss leaves the unigram plateau
within minutes on 2 cores, with the depth of BERT kept (12 layers, where PLD matters):
hidden 128, 2 heads, FFN 512; a 4096-entry WordPiece vocabulary trained on the corpus
(data_prep --vocab-size), sequences of 64 tokens with up to 10 predictions; the corpus is
the quickstart's (English Wikipedia excerpt from gensim + World English Bible), 5% of
documents held out for validation. AdamW, micro-batch 32, linear warmup over 100 steps
then x0.99 every 1000 steps (the shape of bing_bert's PLD schedule).

It prints, and writes to OUT/summary.md, summary.json and curves.png:
- the unigram plateau (bing_bert_pld/unigram.py), a line in the plot;
- per seed, two targets: the Post-LN baseline's final validation MLM loss and the Pre-LN
  baseline's; each run's training time to reach each (interpolated between
  evaluations), and the ratios baseline time / run time;
- over seeds, the mean and range of every ratio; Post-LN at the high lr: diverged
  (non-finite loss), stuck (final loss not below the plateau) or how far it lags.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchmarks import quality_metrics as qm
from bing_bert_pld import cli
from bing_bert_pld.config import read_json_object
from bing_bert_pld.report.events import load_run
from bing_bert_pld.report.numbers import on_axis, time_per_sample
from bing_bert_pld.run.metric_names import SAMPLES, TRAIN_TIME, VAL_MLM_LOSS as VAL_MLM
from bing_bert_pld.formatting import format_number

REPO = Path(__file__).resolve().parents[1]
ARMS = {  # name: (pre_layer_norm, "low"/"high" learning rate, PLD)
    "postln_baseline": (False, "low", False),
    "preln_baseline": (True, "high", False),
    "preln_pld": (True, "high", True),
    "postln_high": (False, "high", False),
}
DEFAULT_ARMS = ("postln_baseline", "preln_baseline", "preln_pld")
PLATEAU_MARGIN = 0.1  # nats: a target closer to the plateau than this is flagged


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.ArgumentParser("benchmarks.time_to_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget per run, in minutes")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="one run per arm and seed")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS),
                   help=f"any of {list(ARMS)}, or 'all'")
    p.add_argument("--slices", type=int, default=2, help="round-robin pieces per run")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of each run (OMP_NUM_THREADS); default: every core. "
                        "1 on a machine that other jobs keep busy")
    p.add_argument("--out", type=Path, default=Path("runs/time_to_quality"), metavar="DIR",
                   help="the runs, summary.md, summary.json and curves.png")
    p.add_argument("--data", type=Path, default=None,
                   help="a data_prep output directory (train/, validation/, manifest.json); "
                        "default: build the corpus below under OUT/data")
    p.add_argument("--vocab-size", type=int, default=4096, help="WordPiece vocabulary trained on the corpus")
    p.add_argument("--seq-len", type=int, default=64, metavar="TOKENS", aliases=("--max_seq_length",),
                   help="tokens per sequence")
    p.add_argument("--max-pred", type=int, default=10, metavar="N", aliases=("--max_predictions_per_seq",),
                   help="masked positions per sequence")
    p.add_argument("--layers", type=int, default=12, help="encoder layers")
    p.add_argument("--hidden", type=int, default=128, help="hidden size")
    p.add_argument("--heads", type=int, default=2, help="attention heads")
    p.add_argument("--intermediate", type=int, default=512, help="FFN size")
    p.add_argument("--micro-batch", type=int, default=32, metavar="SAMPLES",
                   help="sequences per rank per step")
    p.add_argument("--lr-low", type=float, default=1e-4, help="Post-LN's stable learning rate")
    p.add_argument("--lr-high", type=float, default=1e-3, help="the PLD learning rate")
    p.add_argument("--warmup-steps", type=int, default=100, metavar="STEPS", help="linear LR warmup")
    p.add_argument("--theta", type=float, default=0.5, help="PLD theta_bar")
    p.add_argument("--gamma", type=float, default=0.01,
                   help="PLD gamma; the paper's rule is ~100 / total steps")
    p.add_argument("--log-interval", type=int, default=5, metavar="STEPS", help="as the trainer's")
    p.add_argument("--val-interval", type=int, default=25, metavar="STEPS",
                   help="as the trainer's; a multiple of --log_interval")
    p.add_argument("--val-batches", type=int, default=16, metavar="BATCHES", help="as the trainer's")
    p.add_argument("--smoke", action="store_true",
                   help="plumbing check: 0.3 min per run, hidden 32, validation every 5 steps")
    p.add_argument("--fresh", action="store_true", help="delete earlier runs in --out")
    p.add_argument("--report-only", action="store_true", help="summarize the runs in --out")
    args = p.parse_args(argv)
    if args.arms == ["all"]:
        args.arms = list(ARMS)
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {list(ARMS)} or 'all'")
    if args.smoke:
        args.minutes, args.hidden, args.intermediate = 0.3, 32, 64
        args.val_interval, args.val_batches, args.slices = 5, 2, 1
    if args.val_interval % args.log_interval:
        p.error("--val-interval must be a multiple of --log-interval (exact training times)")
    return args


# ----------------------------------------------------------------------------- setup

def build_data(args) -> Path:
    """The quickstart's corpus through data_prep, with a vocabulary trained on it."""
    data = args.out / "data"
    marker = args.out / "data.complete"
    if marker.is_file():
        return data
    from data_prep.corpora import wiki_dump_excerpt, write_bible_books

    books = write_bible_books(args.out / "corpus" / "bible")
    command = [sys.executable, "-m", "data_prep", "all",
               "--source", f"wiki=wiki-xml:{wiki_dump_excerpt()}", "--source", f"bible=books:{books}",
               "--vocab-size", str(args.vocab_size), "--seq-len", str(args.seq_len),
               "--max-pred", str(args.max_pred), "--duplication", "2",
               "--validation-fraction", "0.05", "--rows-per-shard", "8192",
               "--output", str(data), "--work-dir", str(args.out / "prep_work"), "--no-progress"]
    print("building the data:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    marker.touch()
    return data


def write_configs(args, vocab_size: int) -> dict[str, tuple[Path, Path]]:
    """{arm: (DeepSpeed JSON, model JSON)} under OUT/configs."""
    configs = args.out / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    model = {"vocab_size": vocab_size, "hidden_size": args.hidden,
             "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
             "intermediate_size": args.intermediate, "max_position_embeddings": 128}
    paths = {}
    for pre_ln in (True, False):
        path = configs / f"{'preln' if pre_ln else 'postln'}.model.json"
        path.write_text(json.dumps({**model, "pre_layer_norm": pre_ln}, indent=2) + "\n")
        paths[pre_ln] = path
    out = {}
    for arm in args.arms:
        pre_ln, lr, pld = ARMS[arm]
        ds = {"train_micro_batch_size_per_gpu": args.micro_batch, "gradient_accumulation_steps": 1,
              "steps_per_print": 10 ** 9, "gradient_clipping": 1.0,
              "optimizer": {"type": "AdamW", "params": {
                  "lr": args.lr_low if lr == "low" else args.lr_high, "betas": [0.9, 0.999],
                  "eps": 1e-6, "weight_decay": 0.01}},
              # warmup_proportion x total_steps = --warmup-steps, then x0.99 every 1000.
              "scheduler": {"type": "WarmupExpDecay", "params": {
                  "total_steps": 50 * args.warmup_steps, "warmup_proportion": 0.02,
                  "decay_rate": 0.99, "decay_steps": 1000, "warmup_degree": 1.0}}}
        if pld:
            ds["progressive_layer_drop"] = {"enabled": True, "theta": args.theta, "gamma": args.gamma}
        path = configs / f"{arm}.ds.json"
        path.write_text(json.dumps(ds, indent=2) + "\n")
        out[arm] = (path, paths[pre_ln])
    return out


def run_name(arm: str, seed: int) -> str:
    return f"{arm}-s{seed}"


def train_command(args, arm: str, seed: int, configs, data: Path, manifest: dict,
                  minutes: float) -> list[str]:
    ds, model = configs[arm]
    return [sys.executable, "-m", "bing_bert_pld.train", "--deepspeed_config", str(ds),
            "--model_config", str(model), "--train_dir", str(data / "train"),
            "--val_dir", str(data / "validation"), "--output_dir", str(args.out / "runs" / run_name(arm, seed)),
            "--max_seq_length", str(manifest["seq_len"]),
            "--max_predictions_per_seq", str(manifest["max_pred"]),
            "--max_time_minutes", f"{minutes:.6f}", "--seed", str(seed),
            "--log_interval", str(args.log_interval), "--val_interval", str(args.val_interval),
            "--val_batches", str(args.val_batches), "--checkpoint_interval", "100000000"]


def train_all(args, configs, data: Path, manifest: dict) -> None:
    runs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    for piece in range(args.slices):
        minutes = args.minutes * (piece + 1) / args.slices  # elapsed continues on resume
        shift = piece % len(runs)
        for arm, seed in runs[shift:] + runs[:shift]:  # each piece starts with another run
            name = run_name(arm, seed)
            log = args.out / "logs" / f"{name}.log"
            print(f"[{name}] training up to {minutes:.2f} min (log: {log})", flush=True)
            env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
            with open(log, "a") as handle:
                subprocess.run(train_command(args, arm, seed, configs, data, manifest, minutes),
                               check=True, stdout=handle, stderr=subprocess.STDOUT, env=env)


# ----------------------------------------------------------------------------- results

@dataclass
class Curve:
    name: str
    arm: str
    seed: int
    times: list  # training seconds at each validation
    samples: list
    losses: list  # validation MLM loss
    steps: int
    train_time: float
    time_per_sample: Optional[float]

    @property
    def final(self) -> float:
        return self.losses[-1] if self.losses else math.nan


def load_curve(args, arm: str, seed: int) -> Curve:
    name = run_name(arm, seed)
    run = load_run(args.out / "runs" / name, name)
    placed = on_axis(run, VAL_MLM, TRAIN_TIME)
    by_samples = on_axis(run, VAL_MLM, SAMPLES)
    if placed is None or by_samples is None:
        raise SystemExit(f"{name}: no {VAL_MLM} or {TRAIN_TIME} in {run.path}")
    train_time = run.get(TRAIN_TIME)
    return Curve(name, arm, seed, placed[0].tolist(), by_samples[0].tolist(), placed[1].tolist(),
                 train_time.last_step, float(train_time.last),
                 time_per_sample(run, TRAIN_TIME))


def summarize(curves: dict[tuple[str, int], Curve], plateau: qm.Plateau, seeds, arms) -> dict:
    """Per seed: targets, each run's time to them and the ratios; then over seeds."""
    per_seed, ratios = {}, {}
    for seed in seeds:
        targets = {label: curves[(arm, seed)].final for label, arm in
                   (("postln", "postln_baseline"), ("preln", "preln_baseline")) if arm in arms}
        rows = {}
        for arm in arms:
            c = curves[(arm, seed)]
            row = {"final_val_mlm": c.final, "steps": c.steps, "train_time_s": c.train_time,
                   "time_per_sample_s": c.time_per_sample,
                   "diverged": not all(math.isfinite(v) for v in c.losses),
                   "below_plateau_by": plateau.validation - c.final}
            for label, target in targets.items():
                row[f"time_to_{label}_s"] = qm.time_to_reach(c.times, c.losses, target)
            rows[arm] = row
        for label, base_arm in (("postln", "postln_baseline"), ("preln", "preln_baseline")):
            if base_arm not in arms:
                continue
            for arm in arms:
                value = qm.speedup(rows[base_arm][f"time_to_{label}_s"], rows[arm][f"time_to_{label}_s"])
                rows[arm][f"speedup_vs_{label}"] = value
                ratios.setdefault(f"{arm} vs {label}", []).append(value)
        per_seed[seed] = {"targets": targets, "runs": rows}
    over_seeds = {key: dict(zip(("mean", "min", "max"), qm.spread(values)))
                  for key, values in ratios.items()}
    return {"plateau": vars(plateau), "per_seed": per_seed, "speedups": over_seeds}


def post_ln_high_verdict(summary: dict, plateau: qm.Plateau) -> Optional[str]:
    lines = []
    for seed, entry in summary["per_seed"].items():
        row = entry["runs"].get("postln_high")
        if row is None:
            return None
        pre = entry["runs"].get("preln_baseline", {}).get("final_val_mlm")
        if row["diverged"]:
            lines.append(f"seed {seed}: diverged (non-finite validation loss)")
        elif row["below_plateau_by"] < PLATEAU_MARGIN:
            lines.append(f"seed {seed}: stuck at the plateau (final {row['final_val_mlm']:.4f})")
        else:
            lag = "" if pre is None else f", {row['final_val_mlm'] - pre:+.4f} vs Pre-LN at the same lr"
            lines.append(f"seed {seed}: final {row['final_val_mlm']:.4f}{lag}")
    return "Post-LN at the high lr: " + "; ".join(lines)


def format_summary(summary: dict, verdict: Optional[str]) -> str:
    plateau = summary["plateau"]
    lines = [f"unigram plateau: {plateau['validation']:.4f} on validation (train entropy "
             f"{plateau['train_entropy']:.4f}; {plateau['train_tokens']} / "
             f"{plateau['validation_tokens']} masked tokens)", ""]
    for seed, entry in summary["per_seed"].items():
        targets = ", ".join(
            f"{k} baseline {v:.4f} ({plateau['validation'] - v:.3f} below the plateau"
            + ("" if plateau["validation"] - v >= PLATEAU_MARGIN else
               ": NOT clearly below it, so its speedups compare how fast runs learned "
               "frequencies") + ")" for k, v in entry["targets"].items())
        lines += [f"seed {seed}: targets (final validation MLM loss) {targets}", "",
                  "| run | final val MLM | below plateau | steps | train time (s) | ms/sample | "
                  "to Post-LN target (s) | speedup | to Pre-LN target (s) | speedup |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for arm, row in entry["runs"].items():
            tps = row["time_per_sample_s"]
            lines.append(
                f"| {arm} | {row['final_val_mlm']:.4f} | {row['below_plateau_by']:.3f} | {row['steps']} "
                f"| {row['train_time_s']:.1f} | {format_number(None if tps is None else 1000 * tps, '.1f', '-')} "
                f"| {format_number(row.get('time_to_postln_s'), '.1f', '-' if 'time_to_postln_s' not in row else 'not reached')} "
                f"| {format_number(row.get('speedup_vs_postln'), '.2f', '-', 'x')} "
                f"| {format_number(row.get('time_to_preln_s'), '.1f', '-' if 'time_to_preln_s' not in row else 'not reached')} "
                f"| {format_number(row.get('speedup_vs_preln'), '.2f', '-', 'x')} |")
        lines.append("")
    lines.append("speedups over seeds (baseline time to its own final loss / run time): mean [min, max]")
    for key, s in summary["speedups"].items():
        lines.append(f"- {key}: " + ("never reached" if s["mean"] is None else
                                     f"{format_number(s['mean'], '.2f', '-', 'x')} [{s['min']:.2f}, {s['max']:.2f}]"))
    if verdict:
        lines += ["", verdict]
    return "\n".join(lines) + "\n"


def plot(curves: dict, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted({arm for arm, _ in curves}, key=list(ARMS).index)
    color = {arm: f"C{i}" for i, arm in enumerate(arms)}
    styles = ["-", "--", ":", "-."]
    seeds = sorted({seed for _, seed in curves})
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for (arm, seed), c in sorted(curves.items()):
        style = styles[seeds.index(seed) % len(styles)]
        axes[0].plot([t / 60 for t in c.times], c.losses, style, color=color[arm], label=c.name)
        axes[1].plot(c.samples, c.losses, style, color=color[arm], label=c.name)
    plateau = summary["plateau"]["validation"]
    for ax, xlabel in zip(axes, ("training time (min)", "samples")):
        ax.axhline(plateau, color="gray", linewidth=1.2, label=f"unigram plateau {plateau:.3f}")
        for seed, entry in summary["per_seed"].items():
            for label, value in entry["targets"].items():
                ax.axhline(value, color="gray", linestyle=":", linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation MLM loss")
        ax.grid(alpha=0.3)
        finite = [v for c in curves.values() for v in c.losses if math.isfinite(v)]
        if finite:
            ax.set_ylim(min(finite) - 0.1, max(plateau + 0.6, min(max(finite), plateau + 2.0)))
    axes[0].legend(fontsize=8)
    axes[0].set_title("validation MLM loss vs training time (dotted: targets)")
    axes[1].set_title("validation MLM loss vs samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or build_data(args)
    manifest = read_json_object(data / "manifest.json", "data_prep manifest")
    plateau = qm.unigram_plateau(sorted((data / "train").glob("*.hdf5")),
                                 sorted((data / "validation").glob("*.hdf5")), manifest["vocab_size"])
    print(f"unigram plateau: {plateau.validation:.4f} on validation "
          f"(train entropy {plateau.train_entropy:.4f})", flush=True)
    if not args.report_only:
        for arm in args.arms:
            for seed in args.seeds:
                run_dir = args.out / "runs" / run_name(arm, seed)
                if args.fresh:
                    shutil.rmtree(run_dir, ignore_errors=True)
                    (args.out / "logs" / f"{run_name(arm, seed)}.log").unlink(missing_ok=True)
                elif run_dir.exists():
                    raise SystemExit(f"{run_dir} exists: pass --fresh to start over, "
                                     "or --report-only to summarize it")
        (args.out / "logs").mkdir(parents=True, exist_ok=True)
        configs = write_configs(args, manifest["vocab_size"])
        train_all(args, configs, data, manifest)
    curves = {(arm, seed): load_curve(args, arm, seed) for arm in args.arms for seed in args.seeds}
    summary = summarize(curves, plateau, args.seeds, args.arms)
    verdict = post_ln_high_verdict(summary, plateau)
    text = format_summary(summary, verdict)
    header = (f"data {data} (vocab {manifest['vocab_size']}, seq {manifest['seq_len']}, "
              f"max_pred {manifest['max_pred']}); model {args.layers} layers, hidden {args.hidden}, "
              f"heads {args.heads}, FFN {args.intermediate}; micro-batch {args.micro_batch}; "
              f"lr low {args.lr_low} / high {args.lr_high}; PLD theta {args.theta} gamma "
              f"{args.gamma}; {args.minutes} min per run in {args.slices} slices; seeds {args.seeds}; "
              f"threads {args.threads or 'all cores'}; load average at the end "
              f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}\n\n")
    print(header + text)
    (args.out / "summary.md").write_text(header + text)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(curves, summary, args.out / "curves.png")
    print(f"plot: {args.out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
