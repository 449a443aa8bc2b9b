"""Real 2-rank CPU runs through the launch scripts and the deepspeed launcher.

- launch/train_one_node.sh: a running job sent SIGUSR1 (then SIGTERM: launch/stop.sh,
  SLURM after its warning, an operator, to the script and to the ranks) saves one whole
  checkpoint and exits 0; the same command resumes from it with the step counter,
  samples, wall-clock and PLD theta continuing. Another process that the old stop
  command (pkill -f) would have hit is untouched.
- SIGTERM to the script's whole process group (SLURM, kill -- -PGID): the script waits
  while the ranks save, exits 0, and the next launch resumes.
- SIGUSR1 to the ranks while they start (imports), or to the script before the ranks
  exist: exit 0 with no step run and nothing saved; the next launch starts or resumes
  where the run was.
- launch/two_phase.sh: phase 2 starts from phase 1's final checkpoint at a longer
  sequence length.
DeepSpeed's launcher occasionally exits 250 ("terminate called without an active
exception") after all work finished: accepted only with that message and the run's own
proof of completion in the log and on disk.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from bing_bert_pld.pld import theta_at
from launch_helpers import assert_completed, catches, clean_env, free_port, kill_tree, trainer_ranks
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


ARGS = ["--max_seq_length", "64", "--max_predictions_per_seq", "10", "--log_interval", "1",
        "--val_interval", "100000", "--val_batches", "2", "--checkpoint_interval", "100000"]
SCRIPT = ["bash", str(REPO / "launch/train_one_node.sh")]
UNTIL_STOPPED = ["--max_steps", "100000", "--max_time_minutes", "3"]  # a limit it cannot reach


def one_node(tmp_path: Path) -> tuple[Path, dict]:
    """A run directory and the environment of train_one_node.sh for it."""
    data = shard_set(tmp_path / "data", 64, 10)
    config = tmp_path / "ds.json"
    config.write_text(json.dumps(DS_CONFIG))
    run = tmp_path / "run"
    return run, launch_env(DATA_DIR=str(data), OUTPUT_DIR=str(run), DS_CONFIG=str(config))


def launch(env: dict, log: Path, *args, **popen) -> subprocess.Popen:
    out = open(log, "w")
    job = subprocess.Popen([*SCRIPT, *ARGS, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                           cwd=log.parent, **popen)
    out.close()
    return job


def wait_until(condition, job: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not condition():
        assert job.poll() is None, f"exited {job.returncode} before {what}: " + log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"no {what}: " + log.read_text()[-4000:]
        time.sleep(0.02)


def run_to(env: dict, tmp_path: Path, max_steps: int) -> str:
    """A launch to --max_steps; its output."""
    result = subprocess.run([*SCRIPT, *ARGS, "--max_steps", str(max_steps)], env=env, capture_output=True,
                            text=True, cwd=tmp_path, timeout=LAUNCH_TIMEOUT)
    text = result.stdout + result.stderr
    assert_completed(result.returncode, text, f"stopped at step {max_steps} (max_steps)")
    return text


def assert_cleaned_up(run: Path) -> None:
    """No stale pid file: neither the script's nor a rank's."""
    assert not (run / "launch.pid").exists()
    assert not (run / "rank_pids").exists()


def test_sigusr1_then_sigterm_checkpoints_once_and_the_next_launch_resumes(tmp_path):
    run, env = one_node(tmp_path)
    # What the old stop command, pkill -f 'bing_bert_pld[.]train --local_rank=', also hit.
    bystander = subprocess.Popen(["bash", "-c", 'exec -a "python -u -m bing_bert_pld.train --local_rank=0" sleep 300'])

    # Launch 1: no step limit that it could reach; stopped by the signals.
    log1 = tmp_path / "launch1.log"
    job = launch(env, log1, *UNTIL_STOPPED)
    try:
        wait_until(lambda: steps_logged(run) >= 3, job, log1, "training steps")
        ranks = trainer_ranks(job.pid)
        assert len(ranks) == 2
        job.send_signal(signal.SIGUSR1)  # to the script, as SLURM or a user would
        wait_until(lambda: log1.read_text().count("asked rank ") == 2, job, log1,
                   "the stop passed on to both ranks")
        stop = subprocess.run(["bash", str(REPO / "launch/stop.sh"), str(run)], capture_output=True,
                              text=True, env=env, timeout=30)
        assert stop.returncode == 0, stop.stderr
        assert f"asked the launch script (pid {job.pid}) to stop the run in {run}" in stop.stdout
        while job.poll() is None:  # SIGTERM to the script and the ranks until the end
            for pid in [*ranks, job.pid]:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        returncode = job.wait()
    finally:
        kill_tree(job.pid)
        bystander.kill()
    text = log1.read_text()
    assert "received SIGUSR1: asking the ranks to save a checkpoint and stop" in text
    assert "received SIGTERM while stopping (after SIGUSR1): ignored, the ranks finish their checkpoint" in text
    assert bystander.wait() == -signal.SIGKILL  # alive until killed here: no stop reached it
    state = trainer_state(run)
    stopped = state["step"]
    assert_completed(returncode, text, f"stopped at step {stopped} (signal)")
    assert "Killing subprocess" not in text  # the deepspeed launcher never had to kill a rank
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("global_step")] \
        == [f"global_step{stopped}"]  # one checkpoint, written once
    assert (run / "checkpoints" / "latest").read_text().strip() == f"global_step{stopped}"
    assert stopped >= 3
    assert state["samples"] == stopped * GLOBAL_BATCH
    assert state["theta"] == pytest.approx(theta_at(stopped, 0.5, GAMMA))
    elapsed_at_stop = state["elapsed_s"]
    assert_cleaned_up(run)

    # Launch 2: the same command resumes and trains three more steps.
    text = run_to(env, tmp_path, stopped + 3)
    assert f"resumed from {run}/checkpoints/global_step{stopped} at step {stopped}" in text
    rows = training_rows(run)
    assert [row["step"] for row in rows] == list(range(1, stopped + 4))  # no gap, no repeat
    for row in rows[stopped:]:
        step = row["step"]
        assert row["train/samples"] == step * GLOBAL_BATCH
        assert row["pld/theta"] == pytest.approx(theta_at(step - 1, 0.5, GAMMA))  # gates of step
        assert row["perf/elapsed_s"] > elapsed_at_stop
    assert trainer_state(run)["step"] == stopped + 3


def test_sigterm_to_the_process_group_waits_for_the_checkpoint(tmp_path):
    """What SLURM and `kill -- -PGID` do: every process of the script's group gets SIGTERM.
    The deepspeed launcher is not among them (it would kill the ranks 30 s later); the
    script passes the stop on, waits while the ranks save, and exits 0 after them."""
    run, env = one_node(tmp_path)
    log1 = tmp_path / "launch1.log"
    job = launch(env, log1, *UNTIL_STOPPED, start_new_session=True)  # its own group, as under a shell
    try:
        wait_until(lambda: steps_logged(run) >= 2, job, log1, "training steps")
        ranks = trainer_ranks(job.pid)
        os.killpg(job.pid, signal.SIGTERM)
        returncode = job.wait(timeout=LAUNCH_TIMEOUT)
        still_running = [pid for pid in ranks if psutil.pid_exists(pid)]
    finally:
        kill_tree(job.pid)
    text = log1.read_text()
    assert still_running == []  # the script ended after its ranks
    assert "received SIGTERM: asking the ranks to save a checkpoint and stop" in text
    stopped = trainer_state(run)["step"]
    assert_completed(returncode, text, f"stopped at step {stopped} (signal)")
    assert "Killing subprocess" not in text
    assert (run / "checkpoints" / "latest").read_text().strip() == f"global_step{stopped}"
    assert_cleaned_up(run)

    text = run_to(env, tmp_path, stopped + 1)
    assert f"resumed from {run}/checkpoints/global_step{stopped} at step {stopped}" in text
    assert [row["step"] for row in training_rows(run)] == list(range(1, stopped + 2))


def test_sigusr1_to_starting_ranks_ends_the_launch_before_its_first_step(tmp_path):
    """The ranks catch SIGUSR1 from their first line on, before their imports: a stop while
    they start is remembered, and with no step run there is nothing to save."""
    run, env = one_node(tmp_path)
    log1 = tmp_path / "launch1.log"
    job = launch(env, log1, *UNTIL_STOPPED)
    try:
        def importing():  # both ranks handle SIGUSR1; neither has registered yet
            ranks = trainer_ranks(job.pid)
            return len(ranks) == 2 and all(catches(pid, signal.SIGUSR1) for pid in ranks)

        wait_until(importing, job, log1, "starting ranks")
        assert not (run / "rank_pids").exists()  # still in their imports
        for pid in trainer_ranks(job.pid):
            os.kill(pid, signal.SIGUSR1)
        returncode = job.wait(timeout=LAUNCH_TIMEOUT)
    finally:
        kill_tree(job.pid)
    text = log1.read_text()
    assert_completed(returncode, text, "stop requested (SIGUSR1) before the first step: no step ran "
                                       "in this launch, so there is nothing new to checkpoint")
    assert not (run / "checkpoints").exists()
    assert steps_logged(run) == 0
    assert_cleaned_up(run)

    run_to(env, tmp_path, 1)  # the next launch starts the run
    assert [row["step"] for row in training_rows(run)] == [1]


def test_sigusr1_to_the_script_before_the_ranks_exist_stops_the_launch(tmp_path):
    """On a run with a checkpoint: the stop is remembered, training is not started (or, if
    the launcher was already starting, ends before its first step); nothing is written,
    and the next launch resumes from the checkpoint as it was."""
    run, env = one_node(tmp_path)
    run_to(env, tmp_path, 1)
    checkpoint = run / "checkpoints" / "global_step1"
    saved = {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()}

    log2 = tmp_path / "launch2.log"
    job = launch(env, log2, *UNTIL_STOPPED)
    try:
        wait_until(lambda: catches(job.pid, signal.SIGUSR1), job, log2, "the script's trap")
        job.send_signal(signal.SIGUSR1)
        returncode = job.wait(timeout=LAUNCH_TIMEOUT)
    finally:
        kill_tree(job.pid)
    text = log2.read_text()
    assert returncode == 0, text[-4000:]
    assert ("stop requested (SIGUSR1) before training started: not starting it, no step ran" in text
            or "stop requested (SIGUSR1) before the first step: no step ran" in text), text[-4000:]
    assert (run / "checkpoints" / "latest").read_text().strip() == "global_step1"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("global_step")) \
        == ["global_step1"]
    assert {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()} == saved  # not rewritten
    assert_cleaned_up(run)

    text = run_to(env, tmp_path, 2)
    assert f"resumed from {checkpoint} at step 1" in text
    assert [row["step"] for row in training_rows(run)] == [1, 2]


def test_two_phase_runs_phase2_from_phase1_at_a_longer_sequence(tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps(DS_CONFIG))
    out = tmp_path / "two_phase"
    env = launch_env(PHASE1_DATA_DIR=str(shard_set(tmp_path / "seq64", 64, 10)),
                     PHASE2_DATA_DIR=str(shard_set(tmp_path / "seq128", 128, 20)),
                     OUTPUT_DIR=str(out), PHASE1_MAX_STEPS="3", PHASE2_MAX_STEPS="2",
                     PHASE1_DS_CONFIG=str(config), PHASE2_DS_CONFIG=str(config))
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

    first, second = run_config(phase1), run_config(phase2)
    # The script states no sequence length: each phase took its shards'.
    assert (first["run"]["max_seq_length"], second["run"]["max_predictions_per_seq"]) == (None, None)
    assert (first["data"]["seq_len"], first["data"]["max_pred"]) == (64, 10)
    assert (second["data"]["seq_len"], second["data"]["max_pred"]) == (128, 20)
    assert second["run"]["init_from"] == f"{phase1}/checkpoints"
    assert trainer_state(phase1)["step"] == 3
    assert trainer_state(phase2)["step"] == 2  # optimizer and schedule reset: steps restart
    assert [row["step"] for row in training_rows(phase2)] == [1, 2]
    assert training_rows(phase2)[0]["pld/theta"] == 1.0  # the PLD schedule restarts too
