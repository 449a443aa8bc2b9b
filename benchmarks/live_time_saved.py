"""Check the live time-saved estimate: a PLD run's fitted full-depth step time vs a full-depth run's.

    python -m benchmarks.live_time_saved --steps 600            # the check (about 15 min on 2 idle cores)
    python -m benchmarks.live_time_saved --steps 40 --data DIR  # plumbing only
    python -m benchmarks.live_time_saved --report-only          # summarize the runs in --out again

The quickstart's configuration, trained by the quickstart's path (launch/train_one_node.sh:
the deepspeed launcher, 2 CPU ranks without a GPU): bert-quickstart (12 layers, hidden
128), seq 128 with 20 predictions, ds_configs/cpu_small_pld.json and then
ds_configs/cpu_small_baseline.json (the same file without the PLD block), for the same
--steps each, one after the other. The data is --data (a data_prep output: train/ and
vocab.txt) or the quickstart's corpus, built under OUT/data the first time (the English
Wikipedia excerpt gensim ships and the World English Bible, bert-base-uncased vocabulary).

It prints and writes to OUT/summary.json:
- the PLD run's live estimate at its last log line (pld/full_depth_step_time_s, which the
  trainer fits over its last 1000 steps, time_saved.py) as time per sample at full depth;
- the baseline's measured time per sample over the same steps (perf/train_time_s and
  train/samples between the two log lines that bound them);
- the estimate's error in percent (the issue's target: within 10%);
- beside them, each run's own measured time per sample, the live estimate of the saving
  (pld/time_saved_frac) and the encoder FLOPs skipped.
The runs are sequential: a change of machine load between them is an error of the
comparison, not of the estimate. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from bing_bert_pld import cli
from bing_bert_pld.metrics_log import read_metrics
from bing_bert_pld.run import metric_names as names
from bing_bert_pld.run.layout import RunDir
from bing_bert_pld.time_saved import SKIP_FIRST, WINDOW

REPO = Path(__file__).resolve().parents[1]
LOG_INTERVAL = 5
RUNS = {"pld": "cpu_small_pld.json", "baseline": "cpu_small_baseline.json"}


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.ArgumentParser("benchmarks.live_time_saved", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600, help="optimizer steps per run")
    p.add_argument("--ranks", type=int, default=2, help="CPU ranks (NUM_GPUS of the launcher)")
    p.add_argument("--model-config", default="bert-quickstart", metavar="NAME|JSON",
                   help="packaged model name or model JSON")
    p.add_argument("--data", type=Path, default=None,
                   help="data_prep output (train/, vocab.txt) of seq 128, 20 predictions; "
                        "default: build the quickstart corpus under OUT/data")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "live_time_saved", metavar="DIR",
                   help="the two runs and the summary (default: runs/live_time_saved/)")
    p.add_argument("--report-only", action="store_true", help="summarize the runs in --out")
    args = p.parse_args(argv)
    if args.steps < 4 * LOG_INTERVAL:
        p.error(f"--steps must be at least {4 * LOG_INTERVAL} (a few log lines per run)")
    return args


def build_data(out: Path) -> Path:
    """The quickstart's shards (launch/quickstart.sh, step 3), once."""
    data, marker = out / "data", out / "data.complete"
    if marker.is_file():
        return data
    from data_prep.corpora import bert_uncased_vocab, wiki_dump_excerpt, write_bible_books

    books = write_bible_books(out / "corpus" / "bible")
    command = [sys.executable, "-m", "data_prep", "all",
               "--source", f"wiki=wiki-xml:{wiki_dump_excerpt()}", "--source", f"bible=books:{books}",
               "--vocab", str(bert_uncased_vocab()), "--seq-len", "128", "--max-pred", "20",
               "--duplication", "2", "--rows-per-shard", "8192", "--output", str(data),
               "--work-dir", str(out / "prep_work"), "--no-progress"]
    print("building the quickstart data:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    marker.touch()
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(name: str, args, data: Path) -> Path:
    out = args.out / name
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: the same steps for both
    env = {**os.environ, "DATA_DIR": str(data), "OUTPUT_DIR": str(out),
           "DS_CONFIG": str(REPO / "ds_configs" / RUNS[name]), "MODEL_CONFIG": args.model_config,
           "NUM_GPUS": str(args.ranks), "MASTER_PORT": str(free_port())}
    command = ["bash", str(REPO / "launch" / "train_one_node.sh"), "--max_seq_length", "128",
               "--max_predictions_per_seq", "20", "--max_steps", str(args.steps),
               "--vocab_file", str(data / "vocab.txt"), "--log_interval", str(LOG_INTERVAL),
               "--val_interval", str(10 ** 9), "--val_batches", "1",
               "--checkpoint_interval", str(10 ** 9)]
    print(f"\n=== {name}: {args.steps} steps", flush=True)
    status = subprocess.run(command, env=env, cwd=REPO).returncode
    if status != 0:
        # The deepspeed launcher occasionally exits non-zero (250) after every rank has
        # finished (launch/quickstart.sh): the metrics say whether the run is complete.
        steps = [r["step"] for r in read_metrics(RunDir(out))]
        if max(steps, default=0) < args.steps:
            raise SystemExit(f"the {name} run failed (status {status})")
        print(f"warning: the {name} run exited with status {status} after its last step")
    return out


def per_sample_between(rows: list[dict], first_step: int) -> tuple[float, int, int]:
    """(training seconds per sample, from step, to step) between the log line at or
    after `first_step` and the last one."""
    logged = [r for r in rows if names.TRAIN_TIME in r]
    start = next(r for r in logged if r["step"] >= first_step)
    end = logged[-1]
    seconds = end[names.TRAIN_TIME] - start[names.TRAIN_TIME]
    return seconds / (end[names.SAMPLES] - start[names.SAMPLES]), start["step"], end["step"]


def summarize(pld_rows: list[dict], base_rows: list[dict]) -> dict:
    estimates = [r for r in pld_rows if names.FULL_DEPTH_STEP_TIME in r]
    if not estimates:
        raise SystemExit("the PLD run logged no live estimate (too few steps, or step times "
                         "too noisy for a positive slope): train longer")
    last = estimates[-1]
    samples_per_step = last[names.SAMPLES] / last["step"]
    estimate = last[names.FULL_DEPTH_STEP_TIME] / samples_per_step
    # The estimator skips the first steps of the launch and fits the last WINDOW steps.
    first = max(SKIP_FIRST, last["step"] - WINDOW)
    measured, from_step, to_step = per_sample_between(base_rows, first)
    pld_own, _, _ = per_sample_between(pld_rows, first)
    return {
        "steps": {"pld": pld_rows[-1]["step"], "baseline": base_rows[-1]["step"]},
        "samples_per_step": samples_per_step,
        "live_full_depth_ms_per_sample": 1e3 * estimate,
        "baseline_measured_ms_per_sample": 1e3 * measured,
        "baseline_steps": [from_step, to_step],
        "error_pct": 100.0 * (estimate - measured) / measured,
        "pld_measured_ms_per_sample": 1e3 * pld_own,
        "saving_across_runs_pct": 100.0 * (1.0 - pld_own / measured),
        "live_saving_pct": 100.0 * last[names.TIME_SAVED_FRAC],
        "live_time_saved_s": last[names.TIME_SAVED],
        "encoder_flops_skipped_pct": 100.0 * last[names.SKIPPED_FRAC],
        "load_average": os.getloadavg(),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        runs = {name: args.out / name for name in RUNS}
    else:
        data = args.data if args.data is not None else build_data(args.out)
        runs = {name: train(name, args, data) for name in RUNS}  # PLD first, then the baseline
    summary = summarize(read_metrics(RunDir(runs["pld"])), read_metrics(RunDir(runs["baseline"])))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    measured = f"baseline, measured (steps {summary['baseline_steps'][0]}-{summary['baseline_steps'][1]}):"
    print(f"""
{'live estimate (PLD run, fitted full depth):':<45}{summary['live_full_depth_ms_per_sample']:.3f} ms/sample
{measured:<45}{summary['baseline_measured_ms_per_sample']:.3f} ms/sample
{'error of the live estimate:':<45}{summary['error_pct']:+.1f}%  (target: within 10%)

PLD measured {summary['pld_measured_ms_per_sample']:.3f} ms/sample: {summary['saving_across_runs_pct']:.1f}% less than the baseline;
live estimate of the saving {summary['live_saving_pct']:.1f}% ({summary['live_time_saved_s']:.1f} s); encoder FLOPs skipped {summary['encoder_flops_skipped_pct']:.1f}%
load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in summary['load_average'])}
wrote {args.out / 'summary.json'}""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
