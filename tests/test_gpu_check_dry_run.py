"""The GPU check (benchmarks/gpu_check.py): its --dry-run on CPU runs every step of the GPU
run with tiny sizes and writes the same JSON; a failing or overrunning step never stops
the next one."""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch_helpers import clean_env

from benchmarks import gpu_check, gpu_steps

REPO = Path(__file__).resolve().parents[1]
STEPS = ["environment", "preflight", "gpu_tests", "data", "pretrain_straight", "pretrain_stop",
         "pretrain_resume", "resume_check"] + [
    f"{bench}_{size}{variant}" for size in ("bert_base", "bert_large")
    for bench, variant in (("sdpa", ""), ("pld_speedup", ""), ("pld_speedup", "_compiled"),
                           ("vs_huggingface", ""), ("vs_huggingface", "_compiled"))]
RECORD_KEYS = {"name", "status", "seconds", "cpu_seconds", "timeout_s", "error", "result"}


def write_corpus(root: Path) -> Path:
    """The carried corpus's layout: the first books of the Bible and the vocab."""
    from data_prep.corpora import bert_uncased_vocab, bible_books

    (root / "books").mkdir(parents=True)
    for name, text in bible_books()[:gpu_steps.DRY_RUN.books]:
        (root / "books" / name).write_text(text, encoding="utf-8")
    (root / "vocab.txt").write_bytes(bert_uncased_vocab().read_bytes())
    return root


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_check")
    out = root / "out"
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out),
           "--work-root", str(root / "work"), "--corpus", str(write_corpus(root / "corpus"))]
    result = subprocess.run(cmd, cwd=REPO, env=clean_env(drop=("OUT",)), capture_output=True,
                            text=True, timeout=900)
    assert (out / "gpu_check.json").is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads((out / "gpu_check.json").read_text()), out


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_one_json_and_one_log(dry_run):
    result, doc, out = dry_run
    records = {r["name"]: r for r in doc["steps"]}
    failed = {n: r["error"] for n, r in records.items() if r["status"] not in ("ok", "skipped")}
    assert result.returncode == 0, (failed, result.stdout[-3000:])
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    assert doc["mode"] == "dry-run" and doc["finished"] is not None
    assert [r["name"] for r in doc["steps"]] == STEPS
    assert all(set(r) == RECORD_KEYS for r in doc["steps"])
    large = {name for name in STEPS if "bert_large" in name}
    compiled = {name for name in STEPS if name.endswith("_compiled")} - large
    ran = set(STEPS) - large - compiled
    assert {n for n, r in records.items() if r["status"] == "ok"} == ran
    assert all(records[n]["error"] == gpu_steps.DRY_RUN_SKIPS_LARGE for n in large)
    assert all(records[n]["error"] == gpu_steps.DRY_RUN_SKIPS_COMPILED for n in compiled)
    assert doc["summary"] == {"ok": len(ran), "skipped": len(large) + len(compiled)}
    assert all(0 <= records[n]["seconds"] <= records[n]["timeout_s"] for n in ran)
    log = (out / "gpu_check.log").read_text()
    assert all(f"] {name} (limit" in log for name in ran)


@pytest.mark.slow
def test_dry_run_steps_report_what_the_gpu_run_reports(dry_run):
    _, doc, _ = dry_run
    r = {record["name"]: record["result"] for record in doc["steps"]}
    assert r["environment"]["missing"] == [] and r["environment"]["cuda_available"] is False
    assert r["preflight"]["settings"]["target"] == "cuda"
    assert "Lamb" in r["preflight"]["settings"]["optimizer_route"]
    gpu_tests = r["gpu_tests"]
    assert gpu_tests["counts"]["skipped"] == len(gpu_tests["tests"]) >= 3  # no CUDA here
    assert gpu_tests["counts"]["failed"] == gpu_tests["counts"]["error"] == 0
    padding = r["data"]["padding"]
    assert r["data"]["books"] == gpu_steps.DRY_RUN.books and padding["rows"] > 100
    assert 0.5 < padding["rows_without_padding"] < 1  # real text: most rows fill seq 128

    straight, first, resumed = r["pretrain_straight"], r["pretrain_stop"], r["pretrain_resume"]
    steps = gpu_steps.DRY_RUN.pretrain_steps
    assert (straight["last_step"], first["last_step"], resumed["last_step"]) == (steps, steps // 2, steps)
    assert not straight["resumed"] and resumed["resumed"]
    assert straight["deepspeed_config"]["bf16"] == {"enabled": True}
    assert straight["deepspeed_config"]["optimizer"]["type"] == "Lamb"
    assert "Lamb" in straight["optimizer_route"]
    assert straight["final"]["pld/theta"] < 1  # PLD was on
    check = r["resume_check"]
    assert check["resume_reproduces"] and check["resumed_max_abs_diff"] == 0.0  # exact on CPU
    assert check["loss_falls"] and check["tolerance"] == 0.0

    kernels = r["sdpa_bert_base"]["kernels"]
    default = {k["case"]: k for k in kernels if k["backend"] == "default"}
    assert set(default) == {"full_no_mask", "full_all_true_mask", "padded_bool_mask",
                            "padded_float_mask", "padded_split", "sparse_no_mask", "sparse_bool_mask"}
    assert all(k["accepted"] and k["ran"] and k["ms"] > 0 for k in default.values())
    assert all(not k["accepted"] and k["error"] for k in kernels if k["backend"] == "efficient")
    assert set(r["sdpa_bert_base"]["model_paths"]) == {"unpadded batch", "padded batch"}

    pld = r["pld_speedup_bert_base"]
    assert pld["compile_layers"] is False and pld["precision"] == "bf16"
    assert pld["mfu_full"] is None and pld["measured_over_predicted"] > 0  # no peak on CPU
    assert pld["batch_size"] == 4 and pld["seq_len"] == 128 and pld["max_pred"] == 20
    hf = r["vs_huggingface_bert_base"]
    assert hf["loss_equal"] and hf["precision"] == "bf16" and hf["speedup"] > 0

    rows = {row["row"]: row for row in doc["rows"]}
    assert rows["MFU, BERT-base seq 128 bf16 training, full depth"]["value"] == gpu_check.NO_GPU
    assert rows["bf16 LAMB PLD pretraining: loss falls, resume reproduces"]["met"] is True
    assert rows["MFU, BERT-large seq 128 bf16 training, full depth"]["value"].startswith(
        "not measured: pld_speedup_bert_large skipped")


def test_a_step_that_fails_or_overruns_never_stops_the_next(tmp_path, monkeypatch):
    """Real child processes: one killed at its time limit, one failing, one depending on
    the failed one, one fine, and one that the budget no longer allows."""
    def sleeper(ctx):
        gpu_steps.run_checked(ctx, [sys.executable, "-c", "import time; time.sleep(60)"], "sleep")
        return {}

    def failing(ctx):
        raise gpu_steps.StepFailed("planned failure", {"measured": 1})

    def fine(ctx):
        done = gpu_steps.run_checked(ctx, [sys.executable, "-c", "print('hello')"], "hello")
        return {"said": done.output.strip()}

    def budget_eater(ctx):
        time.sleep(8)  # not a command: runs past the budget, which only stops later steps
        return {}

    steps = [gpu_steps.Step("sleeper", sleeper, 2), gpu_steps.Step("failing", failing, 5),
             gpu_steps.Step("dependent", fine, 5, needs=("failing",)), gpu_steps.Step("fine", fine, 5),
             gpu_steps.Step("budget_eater", budget_eater, 5), gpu_steps.Step("late", fine, 5)]
    monkeypatch.setattr(gpu_check, "MIN_START_S", 1.0)
    args = argparse.Namespace(out=str(tmp_path / "out"), work_root=str(tmp_path / "work"),
                              corpus=str(tmp_path), budget_s=8.0, only=None, dry_run=False)
    code = gpu_check.Runner(args, gpu_steps.DRY_RUN, steps).run()
    doc = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    records = {r["name"]: r for r in doc["steps"]}
    assert code == 1
    assert records["sleeper"]["status"] == "timeout" and 2 <= records["sleeper"]["seconds"] < 15
    assert "stopped at its time limit" in records["sleeper"]["error"]
    assert records["failing"]["status"] == "failed"
    assert records["failing"]["error"] == "planned failure"
    assert records["failing"]["result"] == {"measured": 1}
    assert records["dependent"]["status"] == "skipped"
    assert records["dependent"]["error"] == "needs failing, which ended failed"
    assert records["fine"]["status"] == "ok" and records["fine"]["result"] == {"said": "hello"}
    assert records["budget_eater"]["status"] == "ok"
    assert records["late"]["status"] == "skipped"
    assert records["late"]["error"].startswith("out of time")
