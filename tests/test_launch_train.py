"""Real 2-rank CPU runs through the launch scripts and the deepspeed launcher.

- launch/train_one_node.sh: a running job sent SIGUSR1 saves a checkpoint and exits 0;
  the same command resumes from it with the step counter, samples, wall-clock and PLD
  theta continuing.
- launch/two_phase.sh: phase 2 starts from phase 1's final checkpoint at a longer
  sequence length.
DeepSpeed's launcher occasionally exits 250 ("terminate called without an active
exception") after all work finished: accepted only with that message and the run's own
proof of completion in the log and on disk.
"""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bing_bert_pld.pld import theta_at
from launch_helpers import assert_completed, clean_env, free_port
from shard_factory import write_shard_set

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY_VOCAB = 512  # bert-tiny
GAMMA = 0.05
DS_CONFIG = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
             "steps_per_print": 10**6, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
             "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": GAMMA}}
GLOBAL_BATCH = 4 * 2
LAUNCH_TIMEOUT = 240


def shard_set(directory: Path, seq_len: int, max_pred: int) -> Path:
    write_shard_set(directory, 2, 128, seq_len, max_pred, TINY_VOCAB, seed=0, split="train")
    write_shard_set(directory, 1, 32, seq_len, max_pred, TINY_VOCAB, seed=1, split="validation")
    return directory


def launch_env(**extra) -> dict:
    return clean_env(drop={"DATA_DIR", "OUTPUT_DIR", "DS_CONFIG"}, PYTHONPATH=str(REPO),
                     DS_ACCELERATOR="cpu", NUM_GPUS="2", MODEL_CONFIG="bert-tiny",
                     MASTER_PORT=str(free_port()), **extra)


def training_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "train/loss" in row]


def steps_logged(run_dir: Path) -> int:
    """While the run writes: complete lines only."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"train/loss"' in line for line in path.read_text().splitlines(keepends=True)
               if line.endswith("\n"))


def trainer_state(run_dir: Path) -> dict:
    root = run_dir / "checkpoints"
    return json.loads((root / (root / "latest").read_text().strip() / "trainer_state.json").read_text())


def test_sigusr1_checkpoints_and_the_next_launch_resumes(tmp_path):
    data = shard_set(tmp_path / "data", 64, 10)
    config = tmp_path / "ds.json"
    config.write_text(json.dumps(DS_CONFIG))
    run = tmp_path / "run"
    env = launch_env(DATA_DIR=str(data), OUTPUT_DIR=str(run), DS_CONFIG=str(config))
    args = ["--max_seq_length", "64", "--max_predictions_per_seq", "10", "--log_interval", "1",
            "--val_interval", "100000", "--val_batches", "2", "--checkpoint_interval", "100000"]
    script = ["bash", str(REPO / "launch/train_one_node.sh")]

    # Launch 1: no step limit that it could reach; stopped by the signal.
    log1 = tmp_path / "launch1.log"
    with open(log1, "w") as out:
        job = subprocess.Popen([*script, *args, "--max_steps", "100000", "--max_time_minutes", "3"],
                               env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.monotonic() + LAUNCH_TIMEOUT
            while steps_logged(run) < 3:
                assert job.poll() is None, log1.read_text()[-4000:]
                assert time.monotonic() < deadline, "no training steps: " + log1.read_text()[-4000:]
                time.sleep(0.2)
            job.send_signal(signal.SIGUSR1)  # to the script, as SLURM or a user would
            returncode = job.wait(timeout=120)
        finally:
            job.kill()
    text = log1.read_text()
    assert "received SIGUSR1: asking the ranks to save a checkpoint and stop" in text
    state = trainer_state(run)
    stopped = state["step"]
    assert_completed(returncode, text, f"stopped at step {stopped} (signal)")
    assert (run / "checkpoints" / "latest").read_text().strip() == f"global_step{stopped}"
    assert stopped >= 3
    assert state["samples"] == stopped * GLOBAL_BATCH
    assert state["theta"] == pytest.approx(theta_at(stopped, 0.5, GAMMA))
    elapsed_at_stop = state["elapsed_s"]

    # Launch 2: the same command resumes and trains three more steps.
    result = subprocess.run([*script, *args, "--max_steps", str(stopped + 3)], env=env,
                            capture_output=True, text=True, cwd=tmp_path, timeout=LAUNCH_TIMEOUT)
    text = result.stdout + result.stderr
    assert_completed(result.returncode, text, f"stopped at step {stopped + 3} (max_steps)")
    assert f"resumed from {run}/checkpoints/global_step{stopped} at step {stopped}" in text
    rows = training_rows(run)
    assert [row["step"] for row in rows] == list(range(1, stopped + 4))  # no gap, no repeat
    for row in rows[stopped:]:
        step = row["step"]
        assert row["train/samples"] == step * GLOBAL_BATCH
        assert row["pld/theta"] == pytest.approx(theta_at(step - 1, 0.5, GAMMA))  # gates of step
        assert row["perf/elapsed_s"] > elapsed_at_stop
    assert trainer_state(run)["step"] == stopped + 3


def test_two_phase_runs_phase2_from_phase1_at_a_longer_sequence(tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps(DS_CONFIG))
    out = tmp_path / "two_phase"
    env = launch_env(PHASE1_DATA_DIR=str(shard_set(tmp_path / "seq64", 64, 10)),
                     PHASE2_DATA_DIR=str(shard_set(tmp_path / "seq128", 128, 20)),
                     OUTPUT_DIR=str(out), PHASE1_MAX_STEPS="3", PHASE2_MAX_STEPS="2",
                     PHASE1_DS_CONFIG=str(config), PHASE2_DS_CONFIG=str(config),
                     PHASE1_SEQ_LEN="64", PHASE1_MAX_PRED="10",
                     PHASE2_SEQ_LEN="128", PHASE2_MAX_PRED="20")
    result = subprocess.run(["bash", str(REPO / "launch/two_phase.sh"), "--log_interval", "1",
                             "--val_batches", "2"], env=env, capture_output=True, text=True,
                            cwd=tmp_path, timeout=2 * LAUNCH_TIMEOUT)
    text = result.stdout + result.stderr
    phase1, phase2 = out / "phase1", out / "phase2"
    assert_completed(result.returncode, text, f"=== done: phase 1 in {phase1} (step 3), "
                                              f"phase 2 in {phase2} (step 2)")
    assert f"initialized from {phase1}/checkpoints (optimizer and schedule reset)" in text

    def run_config(run_dir: Path) -> dict:
        root = run_dir / "checkpoints"
        return json.loads((root / (root / "latest").read_text().strip() / "run_config.json").read_text())

    first, second = run_config(phase1)["run"], run_config(phase2)["run"]
    assert (first["max_seq_length"], first["max_predictions_per_seq"]) == (64, 10)
    assert (second["max_seq_length"], second["max_predictions_per_seq"]) == (128, 20)
    assert second["init_from"] == f"{phase1}/checkpoints"
    assert trainer_state(phase1)["step"] == 3
    assert trainer_state(phase2)["step"] == 2  # optimizer and schedule reset: steps restart
    assert [row["step"] for row in training_rows(phase2)] == [1, 2]
    assert training_rows(phase2)[0]["pld/theta"] == 1.0  # the PLD schedule restarts too
