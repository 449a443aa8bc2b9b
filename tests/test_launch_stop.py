"""Stopping one run and no other: launch/stop.sh and the rank registry
(bing_bert_pld/stop_signal.py), with stand-in ranks that handle a stop as the trainer does;
and the trainer, in one process, ending a launch that was stopped before its first step.

The stand-ins are real processes with the trainer's handlers and registration; the
launches through the deepspeed launcher are in test_launch_train.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bing_bert_pld import stop_signal, train
from bing_bert_pld.engine import init_distributed
from launch_helpers import catches
from shard_factory import write_shard_set

REPO = Path(__file__).resolve().parents[1]
STOP = REPO / "launch" / "stop.sh"
OLD_PATTERN = "bing_bert_pld[.]train --local_rank="  # the stop command documented before

# A rank as the trainer is one: the handlers first, then the registration; on a stop it
# writes which signal came and exits 0. Its extra arguments make its command line look
# like a rank's, so the old pkill pattern matches it.
STAND_IN = """
import sys, time
from pathlib import Path
from bing_bert_pld import stop_signal
request = stop_signal.install()
output_dir = Path(sys.argv[1])
entry = stop_signal.register(output_dir, 0)
while request.signal_name is None:
    time.sleep(0.02)
(output_dir / "stopped_by").write_text(request.signal_name)
entry.remove()
"""


def wait_for(condition, timeout=20.0, what="a condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stop(output_dir: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(STOP), str(output_dir)], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.fixture
def processes():
    started = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def start_rank(output_dir: Path, processes) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", STAND_IN, str(output_dir), "bing_bert_pld.train",
                                "--local_rank=0"], env={**os.environ, "PYTHONPATH": str(REPO)})
    processes.append(process)
    wait_for(lambda: (output_dir / "rank_pids" / "rank0.pid").exists(), what="the registration")
    return process


def test_stop_command_stops_this_run_and_no_other(tmp_path, processes):
    run_a, run_b = tmp_path / "run_a", tmp_path / "run_b"
    rank_a, rank_b = start_rank(run_a, processes), start_rank(run_b, processes)
    dummy = subprocess.Popen(["bash", "-c", 'exec -a "python -u -m bing_bert_pld.train --local_rank=0" sleep 60'])
    processes.append(dummy)
    wait_for(lambda: Path(f"/proc/{dummy.pid}/cmdline").read_bytes().startswith(b"python -u"),
             what="the dummy's command line")
    old = subprocess.run(["pgrep", "-f", OLD_PATTERN], capture_output=True, text=True).stdout.split()
    assert {rank_a.pid, rank_b.pid, dummy.pid} <= set(map(int, old))  # the old command hit all three

    result = stop(run_a)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"asked rank 0 pid {rank_a.pid} to save a checkpoint and stop\n"
    assert rank_a.wait(timeout=10) == 0
    assert (run_a / "stopped_by").read_text() == "SIGUSR1"
    assert not (run_a / "rank_pids").exists()  # the rank removed its entry, the last one the directory
    time.sleep(0.3)
    assert rank_b.poll() is None and dummy.poll() is None
    assert not (run_b / "stopped_by").exists()


def test_stop_command_goes_through_the_launch_script(tmp_path, processes):
    run = tmp_path / "run"
    run.mkdir()
    # A launch script as far as stop.sh can tell: a live process named in launch.pid.
    script = subprocess.Popen(["bash", "-c", f'trap "echo TERM > {run}/script_got; exit 0" TERM; '
                                             'while :; do sleep 0.05; done'])
    processes.append(script)
    wait_for(lambda: catches(script.pid, signal.SIGTERM), what="the trap")
    host = os.uname().nodename
    (run / "launch.pid").write_text(f"{host} {script.pid} {stop_signal.start_time(script.pid)}\n")
    result = stop(run)
    assert result.returncode == 0, result.stderr
    assert f"asked the launch script (pid {script.pid}) to stop the run in {run}" in result.stdout
    assert script.wait(timeout=10) == 0
    assert (run / "script_got").read_text() == "TERM\n"


@pytest.mark.parametrize("launch_pid, message", [
    (None, "no launch script or rank of the run in {run} is running on this host"),
    ("{host} {dead} 123", "no launch script or rank of the run in {run} is running on this host"),
    ("{host} {live} 1", "no launch script or rank of the run in {run} is running on this host"),
    ("node99 {live} 1", "the run in {run} was launched on node99 (pid {live}): run this there"),
])
def test_stop_command_refuses_what_it_cannot_stop(tmp_path, processes, launch_pid, message):
    run = tmp_path / "run"
    run.mkdir()
    live = subprocess.Popen(["sleep", "60"])  # a pid in use, but not by the run's launch script
    processes.append(live)
    dead = subprocess.Popen(["true"])
    dead.wait()
    values = {"host": os.uname().nodename, "dead": dead.pid, "live": live.pid, "run": run}
    if launch_pid:
        (run / "launch.pid").write_text(launch_pid.format(**values) + "\n")
    result = stop(run)
    assert result.returncode == 2
    assert result.stderr == f"error: {message.format(**values)}\n"
    assert live.poll() is None


def test_stop_command_needs_an_output_dir(tmp_path):
    result = stop(tmp_path / "nowhere")
    assert result.returncode == 2
    assert result.stderr == f"error: OUTPUT_DIR {tmp_path}/nowhere does not exist (or is not a directory)\n"


def test_registry_signals_live_registered_ranks_only(tmp_path, processes):
    """A registration names a process by pid and start time: a pid reused by another
    process, or a dead one, is not signalled."""
    registry = tmp_path / "rank_pids"
    registry.mkdir()
    host = os.uname().nodename
    ranks = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    processes.extend(ranks)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (registry / "rank0.pid").write_text(f"{host} {ranks[0].pid} {stop_signal.start_time(ranks[0].pid)}\n")
    (registry / "rank1.pid").write_text(f"{host} {ranks[1].pid} 1\n")  # its pid, another start
    (registry / "rank2.pid").write_text(f"node99 {ranks[2].pid} {stop_signal.start_time(ranks[2].pid)}\n")
    (registry / "rank3.pid").write_text(f"{host} {dead.pid} 1\n")
    (registry / "rank4.pid").write_text("half a li")  # not a registration
    assert stop_signal.main(["count", str(tmp_path)]) == 0
    signalled = stop_signal.signal_ranks_here(tmp_path)
    assert [(entry.rank, entry.pid) for entry in signalled] == [(0, ranks[0].pid)]
    assert ranks[0].wait(timeout=10) == -signal.SIGUSR1
    assert ranks[1].poll() is None and ranks[2].poll() is None
    assert len(stop_signal.registrations(tmp_path)) == 4
    stop_signal.clear(tmp_path)
    assert not registry.exists()


def test_a_run_directory_in_use_is_refused(tmp_path, processes):
    """A second launch into the directory of a running one would overwrite its checkpoints."""
    data = tmp_path / "data"
    for split in ("train", "validation"):
        (data / split).mkdir(parents=True)
        (data / split / "shard_00000.hdf5").touch()
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    processes.append(holder)
    (run / "launch.pid").write_text(f"{os.uname().nodename} {holder.pid} {stop_signal.start_time(holder.pid)}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "DATA_DIR": str(data),
           "OUTPUT_DIR": str(run)}
    result = subprocess.run(["bash", str(REPO / "launch/train_one_node.sh"), "--max_steps", "1"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert (f"error: OUTPUT_DIR {run} is in use by the launch script pid {holder.pid} on this host: "
            f"stop that run first (bash launch/stop.sh {run})") in result.stderr
    assert "+ deepspeed" in result.stdout and "DeepSpeed" not in result.stderr  # never launched
    assert (run / "launch.pid").read_text().split()[1] == str(holder.pid)  # left as it was


def test_a_stop_before_the_first_step_ends_the_launch_without_a_checkpoint(tmp_path):
    """In one process: a stop that the rank caught while it started (here: set before
    main) ends it after the engine is built, exit 0, no step and nothing saved."""
    write_shard_set(tmp_path / "data", 1, 32, 32, 5, 512, seed=0, split="train")
    init_distributed()
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "steps_per_print": 10**6,
                                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}))
    run = tmp_path / "run"
    request = stop_signal.install()
    request.signal_name = "SIGUSR1"
    try:
        code = train.main(["--deepspeed_config", str(config), "--model_config", "bert-tiny",
                           "--train_dir", str(tmp_path / "data" / "train"), "--output_dir", str(run),
                           "--max_seq_length", "32", "--max_predictions_per_seq", "5",
                           "--max_steps", "5", "--log_interval", "1"])
    finally:
        request.signal_name = None  # the process's one request: other tests train
    assert code == 0
    assert not (run / "checkpoints").exists()
    assert not (run / "rank_pids").exists()
    assert "train/loss" not in (run / "metrics.jsonl").read_text()
