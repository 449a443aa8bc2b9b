"""One offline run on a GPU machine that fills every GPU row of benchmarks/README.md.

    python -m benchmarks.gpu_check [--out DIR] [--budget-s 470] [--only STEP,STEP]
    python -m benchmarks.gpu_check --dry-run [--out DIR]    # the same plumbing on CPU

Nothing is installed or downloaded: the packages the GPU image lacks travel as wheels and
the text as a corpus folder (`python -m benchmarks.gpu_prepare` makes both;
benchmarks/README.md gives the device call). Two files go to DIR ($OUT on the device
machine, else gpu_check/), both rewritten after every step, so a run stopped from outside
still leaves them whole:
- gpu_check.json: "steps", each with status (ok, failed, timeout, skipped), seconds, time
  limit, error and result; "rows", the GPU rows of the benchmark table, each a measured
  value with its target or the reason it is missing; the sizes used and the elapsed time;
- gpu_check.log: every command and everything it printed.
Scratch work (shards, runs, checkpoints, the benchmarks' JSON) goes to a fresh folder under
--work-root, which is kept.

Every step has its own time limit, capped by what is left of --budget-s (470 s by
default: the whole run under 8 minutes); a step that fails or times out never stops the
next one, and a step that needs an earlier step's output is skipped with the reason. The
steps, in order (benchmarks/gpu_steps.py): environment (nvidia-smi, nvcc, versions, the
packages that import), preflight (config_check --target cuda on the bf16 BERT-base PLD
config), gpu_tests (tests/test_gpu.py), data (data_prep shards from the carried text),
pretrain_straight / pretrain_stop / pretrain_resume and resume_check (BERT-base seq 128,
bf16, LAMB, PLD through the deepspeed launcher on one GPU: loss falls, a resumed run
reproduces the uninterrupted one), then per model size the SDPA backends, pld_speedup and
vs_huggingface in bf16, eager and with compiled layers. --dry-run runs the same steps on
CPU with a tiny model, a few books and a few steps (and one model size), about a minute
on an idle machine; CI runs it (tests/test_gpu_check_dry_run.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

from bing_bert_pld import cli

from .gpu_steps import (DRY_RUN, DRY_RUN_TIMEOUT_S, GPU, REPO, Completed, Context, Sizes, Step,
                        StepFailed, plan)

BUDGET_S = 470  # under 8 minutes, leaving the device call time to install the wheels
MIN_START_S = 15  # a step is not started with less than this left of the budget
DISTRIBUTED_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR",
                         "MASTER_PORT")
NO_GPU = "not measured: no GPU (dry run)"


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def children_cpu_seconds() -> float:
    """User + system time of the ended children so far (what a command cost, whatever
    else the machine was running)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Runner:
    """Runs the plan's steps in order under the budget and keeps the JSON and log whole."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, steps: list[Step]):
        self.args, self.sizes, self.steps = args, sizes, steps
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        Path(args.work_root).mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_", dir=args.work_root))
        self.log_path = self.out / "gpu_check.log"
        self.log = open(self.log_path, "wb", buffering=0)
        self.started = time.monotonic()
        self.deadline = self.started + args.budget_s
        self.step_deadline = self.deadline
        self.killed = False  # a command of the current step hit its time limit
        self.step_cpu_seconds = 0.0
        self.env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}
        self.env.update(DS_ACCELERATOR=sizes.accelerator, PYTHONUNBUFFERED="1",
                        PYTHONPATH=os.pathsep.join(
                            [str(REPO)] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else [])))
        self.ctx = Context(sizes=sizes, dry_run=args.dry_run, corpus=Path(args.corpus),
                           work=self.work, command=self.command)
        self.records: list[dict] = []
        self.document = {
            "schema": 1, "mode": "dry-run" if args.dry_run else "gpu", "command": sys.argv,
            "started": now(), "finished": None, "budget_s": args.budget_s, "elapsed_s": 0.0,
            "out_dir": str(self.out), "work_dir": str(self.work),
            "sizes": dataclasses.asdict(sizes), "summary": {}, "rows": [], "steps": self.records}

    # ------------------------------------------------------------ commands

    def write_log(self, text: str) -> None:
        self.log.write(text.encode())

    def command(self, cmd: list[str], label: str, timeout: Optional[float] = None,
                env: Optional[dict] = None) -> Completed:
        """Run cmd in its own process group with output into the log; at the step's time
        limit (or `timeout`) the whole group is ended. Returns what it printed."""
        limit = self.step_deadline - time.monotonic()
        if timeout is not None:
            limit = min(limit, timeout)
        self.write_log(f"+ [{label}] {' '.join(cmd)}\n")
        if limit <= 0:
            self.killed = True
            self.write_log("  not started: the step's time is up\n")
            return Completed(None, "", 0.0)
        start = os.fstat(self.log.fileno()).st_size
        began, cpu_before = time.monotonic(), children_cpu_seconds()
        process = subprocess.Popen(cmd, cwd=REPO, env={**self.env, **(env or {})},
                                   stdout=self.log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            returncode = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            returncode = None
            self.killed = True
            self.end_group(process)
            self.write_log(f"\n  stopped at the time limit ({limit:.0f} s)\n")
        seconds, cpu = time.monotonic() - began, children_cpu_seconds() - cpu_before
        with open(self.log_path, "rb") as log:
            log.seek(start)
            output = log.read().decode(errors="replace")
        self.write_log(f"  [{label}] exit {returncode} after {seconds:.1f} s ({cpu:.1f} s CPU)\n")
        self.step_cpu_seconds += cpu
        return Completed(returncode, output, seconds, cpu)

    @staticmethod
    def end_group(process: subprocess.Popen) -> None:
        """SIGTERM to the group we started (launcher and ranks), SIGKILL if it lingers."""
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    # ------------------------------------------------------------ steps

    def status_of(self, name: str) -> Optional[str]:
        return next((r["status"] for r in self.records if r["name"] == name), None)

    def why_not(self, step: Step) -> Optional[str]:
        if step.skip:
            return step.skip
        if self.args.only and step.name not in self.args.only:
            return "not selected (--only)"
        for need in step.needs:
            status = self.status_of(need)
            if status != "ok":
                return f"needs {need}, which {'did not run' if status is None else 'ended ' + status}"
        left = self.deadline - time.monotonic()
        if left < MIN_START_S:
            return f"out of time: {left:.0f} s left of the {self.args.budget_s:.0f} s budget"
        return None

    def run(self) -> int:
        total = len(self.steps)
        self.write_log(f"gpu_check {self.document['mode']} started {now()}; work dir {self.work}\n")
        for index, step in enumerate(self.steps, 1):
            limit = DRY_RUN_TIMEOUT_S if self.args.dry_run else step.timeout_s
            record = {"name": step.name, "status": "skipped", "seconds": 0.0, "cpu_seconds": 0.0,
                      "timeout_s": None, "error": None, "result": {}}
            self.records.append(record)
            reason = self.why_not(step)
            if reason is not None:
                record["error"] = reason
                self.write_log(f"\n=== [{index}/{total}] {step.name}: skipped: {reason}\n")
            else:
                limit = min(limit, self.deadline - time.monotonic())
                record["timeout_s"] = round(limit)
                self.write_log(f"\n=== [{index}/{total}] {step.name} (limit {limit:.0f} s) {now()}\n")
                print(f"[{index}/{total}] {step.name} ...", flush=True)
                self.step_deadline, self.killed = time.monotonic() + limit, False
                self.step_cpu_seconds = 0.0
                began = time.monotonic()
                try:
                    self.ctx.results = {r["name"]: r for r in self.records}
                    record["result"] = step.run(self.ctx)
                    record["status"] = "ok"
                except StepFailed as failure:
                    record.update(status="timeout" if self.killed else "failed", error=str(failure),
                                  result=failure.result)
                except Exception as error:  # a bug in a step: recorded, the next step runs
                    record.update(status="failed", error=f"{type(error).__name__}: {error}")
                    self.write_log(traceback.format_exc())
                record["seconds"] = round(time.monotonic() - began, 1)
                record["cpu_seconds"] = round(self.step_cpu_seconds, 1)
                self.step_deadline = self.deadline
            line = f"[{index}/{total}] {step.name}: {record['status']}" + (
                f" in {record['seconds']:.1f} s ({record['cpu_seconds']:.1f} s CPU)"
                if record["status"] != "skipped" else "") + (
                f": {record['error'][:300]}" if record["error"] else "")
            print(line, flush=True)
            self.write_log(f"--- {line}\n")
            self.save()
        self.document["finished"] = now()
        self.save()
        self.print_summary()
        self.log.close()
        bad = [r for r in self.records if r["status"] in ("failed", "timeout")
               or (r["status"] == "skipped" and r["error"].startswith(("needs", "out of time")))]
        return 1 if bad else 0

    def save(self) -> None:
        self.document["elapsed_s"] = round(time.monotonic() - self.started, 1)
        counts: dict[str, int] = {}
        for record in self.records:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        self.document["summary"] = counts
        self.document["rows"] = table_rows({r["name"]: r for r in self.records}, self.args.dry_run)
        path = self.out / "gpu_check.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.document, indent=1, default=str))
        os.replace(tmp, path)

    def print_summary(self) -> None:
        print(f"\ngpu_check {self.document['mode']}: {self.document['summary']} in "
              f"{self.document['elapsed_s']:.0f} s; {self.out / 'gpu_check.json'}")
        for row in self.document["rows"]:
            met = {True: "met", False: "NOT met", None: "-"}[row["met"]]
            print(f"  {row['row']}: {row['value']} [target {row['target']}: {met}]")


# ---------------------------------------------------------------- the table's rows

def table_rows(records: dict, dry_run: bool) -> list[dict]:
    """The GPU rows of benchmarks/README.md from the step results: a value, or why not."""

    def result(name: str) -> Optional[dict]:
        record = records.get(name)
        return record["result"] if record and record["status"] == "ok" else None

    def missing(*names: str) -> str:
        if dry_run and any(result(name) is not None for name in names):
            return NO_GPU  # what ran, ran on CPU: no GPU number to give
        for name in names:
            record = records.get(name)
            if record is None:
                return f"not measured: {name} did not run"
            if record["status"] != "ok":
                return f"not measured: {name} {record['status']}: {(record['error'] or '')[:160]}"
        return NO_GPU if dry_run else "not measured"

    def row(label, target, value, met, sources):
        return {"row": label, "target": target, "value": value, "met": met, "sources": sources}

    rows = []
    for size, mfu_target in (("bert_base", 0.40), ("bert_large", 0.50)):
        model = "BERT-base" if size == "bert_base" else "BERT-large"
        names = (f"pld_speedup_{size}", f"pld_speedup_{size}_compiled")
        runs = {name: result(name) for name in names}
        mfus = {name: r["mfu_full"] for name, r in runs.items() if r and r.get("mfu_full") is not None}
        if mfus:
            best = max(mfus.values())
            value = ", ".join(f"{'compiled' if n.endswith('compiled') else 'eager'} "
                              f"{100 * m:.1f}% ({runs[n]['samples_per_sec_full']:.0f} samples/s, "
                              f"batch {runs[n]['batch_size']})" for n, m in mfus.items())
            rows.append(row(f"MFU, {model} seq 128 bf16 training, full depth", f">= {mfu_target:.0%}",
                            value, best >= mfu_target, list(names)))
        else:
            rows.append(row(f"MFU, {model} seq 128 bf16 training, full depth", f">= {mfu_target:.0%}",
                            missing(*names), None, list(names)))
        ratios = {n: r["measured_over_predicted"] for n, r in runs.items() if r}
        if ratios and not dry_run:
            value = ", ".join(f"{'compiled' if n.endswith('compiled') else 'eager'} {v:.3f} "
                              f"(measured {runs[n]['measured_speedup']:.3f}x vs "
                              f"{runs[n]['predicted_speedup']:.3f}x predicted)" for n, v in ratios.items())
            rows.append(row(f"PLD speedup, {model}, measured / FLOPs-predicted", ">= 0.95", value,
                            max(ratios.values()) >= 0.95, list(names)))
        else:
            rows.append(row(f"PLD speedup, {model}, measured / FLOPs-predicted", ">= 0.95",
                            missing(*names), None, list(names)))
        names = (f"vs_huggingface_{size}", f"vs_huggingface_{size}_compiled")
        runs = {name: result(name) for name in names}
        done = {n: r for n, r in runs.items() if r}
        if done and not dry_run:
            parts = [f"{'compiled (both)' if n.endswith('compiled') else 'eager'} {r['speedup']:.2f}x"
                     for n, r in done.items()]
            best_ours = max(r["samples_per_sec"]["ours"] for r in done.values())
            best_hf = max(r["samples_per_sec"]["hf"] for r in done.values())
            parts.append(f"best vs best {best_ours / best_hf:.2f}x ({best_ours:.0f} vs {best_hf:.0f} "
                         f"samples/s)")
            if not all(r["loss_equal"] for r in done.values()):
                parts.append("LOSSES DIFFER")
            rows.append(row(f"ours vs HF BertForPreTraining, {model}, bf16", ">= 1.5x",
                            ", ".join(parts), best_ours / best_hf >= 1.5, list(names)))
        else:
            rows.append(row(f"ours vs HF BertForPreTraining, {model}, bf16", ">= 1.5x",
                            missing(*names), None, list(names)))
    check = result("resume_check")
    sources = ["pretrain_straight", "pretrain_stop", "pretrain_resume", "resume_check"]
    if check:
        straight = result("pretrain_straight") or {}
        value = (f"loss {check['loss_start']:.3f} -> {check['loss_end']:.3f} over {check['steps']} "
                 f"steps; resumed at {check['resumed_at']}: max |difference| "
                 f"{check['resumed_max_abs_diff']:.3g} (tolerance {check['tolerance']:.3g}); "
                 f"{straight.get('samples_per_sec_median') or 0:.0f} samples/s; "
                 f"{straight.get('optimizer_route') or 'optimizer route not logged'}")
        rows.append(row("bf16 LAMB PLD pretraining: loss falls, resume reproduces", "both",
                        value, check["loss_falls"] and check["resume_reproduces"], sources))
    else:
        rows.append(row("bf16 LAMB PLD pretraining: loss falls, resume reproduces", "both",
                        missing(*sources), None, sources))
    sdpa = result("sdpa_bert_base")
    if sdpa:
        default = {k["case"]: k for k in sdpa["kernels"] if k["backend"] == "default"}
        value = "; ".join(
            f"{case} {', '.join(default[case].get('ran', []))} {default[case]['ms']:.3f} ms"
            for case in ("full_no_mask", "full_all_true_mask", "padded_bool_mask",
                         "padded_split", "sparse_no_mask", "sparse_bool_mask")
            if case in default and default[case]["accepted"])
        value += (f"; model step masked / mask-free "
                  f"{sdpa['model_step']['masked_over_mask_free']:.3f}")
        rows.append(row("SDPA kernel and time per attention path, BERT-base", "fastest exact",
                        value, None, ["sdpa_bert_base"]))
    else:
        rows.append(row("SDPA kernel and time per attention path, BERT-base", "fastest exact",
                        missing("sdpa_bert_base"), None, ["sdpa_bert_base"]))
    tests, flight = result("gpu_tests"), result("preflight")
    rows.append(row("CUDA tests (tests/test_gpu.py)", "all pass",
                    f"{tests['counts']}" if tests else missing("gpu_tests"),
                    (tests["counts"]["passed"] > 0 and not tests["counts"]["skipped"])
                    if tests and not dry_run else None,
                    ["gpu_tests"]))
    rows.append(row("preflight: optimizer route and fused ops", "passes",
                    (f"{flight['settings'].get('optimizer_route', '?')}; fused ops: "
                     f"{flight['settings'].get('fused_ops', 'not reported')}") if flight
                    else missing("preflight"), bool(flight) if flight else None, ["preflight"]))
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = cli.ArgumentParser("benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "gpu_check"), metavar="DIR",
                        help="where gpu_check.json and gpu_check.log go (default: $OUT, else gpu_check/)")
    parser.add_argument("--work-root", default=tempfile.gettempdir(), metavar="DIR",
                        help="a fresh scratch folder is made under it (default: the system temp dir)")
    parser.add_argument("--corpus", default=str(REPO / ".gpu_corpus"), metavar="DIR",
                        help="books/ and vocab.txt, from python -m benchmarks.gpu_prepare "
                             "(default: .gpu_corpus/)")
    parser.add_argument("--budget-s", type=float, default=None, metavar="SECONDS",
                        help=f"the whole run's time budget in seconds (default: {BUDGET_S}; dry run 1800)")
    parser.add_argument("--only", default=None, metavar="STEPS",
                        help="comma-separated step names to run (the rest are skipped), e.g. to "
                             "finish a run that its budget cut short; default: every step")
    parser.add_argument("--dry-run", action="store_true",
                        help="the same steps on CPU: tiny model, few books, few steps")
    args = parser.parse_args(argv)
    sizes = DRY_RUN if args.dry_run else GPU
    steps = plan(sizes)
    names = [step.name for step in steps]
    if args.only is not None:
        args.only = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in args.only if name not in names]
        if unknown:
            parser.error(f"--only: unknown step(s) {unknown}; the steps are {names}")
    if args.budget_s is None:
        args.budget_s = 1800.0 if args.dry_run else float(BUDGET_S)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    return Runner(args, sizes, steps).run()


if __name__ == "__main__":
    sys.exit(main())
