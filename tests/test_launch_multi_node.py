"""launch/train_multi_node.sh through the real deepspeed multi-node launcher.

The hostfile names two hosts; stand-ins for ssh and pdsh on PATH (tests/fake_hosts/)
run each host's command on this machine, with pdsh's %n node index. Everything else is
real: DeepSpeed's runner builds the per-node commands from the hostfile, each "node"
starts its launcher with its node rank, and the two ranks train together over gloo.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launch_helpers import assert_completed, clean_env, free_port, kill_tree
from shard_factory import write_shard_set

REPO = Path(__file__).resolve().parents[1]
SCRIPT = ["bash", str(REPO / "launch" / "train_multi_node.sh"), "--max_seq_length", "32",
          "--max_predictions_per_seq", "5", "--log_interval", "1"]
pytestmark = pytest.mark.slow


def two_hosts(tmp_path: Path) -> dict:
    """Shards, a two-host hostfile and the script's environment, the fakes on PATH."""
    data = tmp_path / "data"
    write_shard_set(data, 2, 64, 32, 5, 512, seed=0, split="train")
    write_shard_set(data, 1, 32, 32, 5, 512, seed=1, split="validation")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two machines, one rank each\nnode01 slots=1\nnode02 slots=1\n")
    env = clean_env()
    env.update(PATH=f"{REPO / 'tests' / 'fake_hosts'}:{os.environ['PATH']}",
               DS_ACCELERATOR="cpu", HOSTFILE=str(hostfile), DATA_DIR=str(data),
               OUTPUT_DIR=str(tmp_path / "run"), DS_CONFIG=str(REPO / "ds_configs" / "cpu_tiny_pld.json"),
               MODEL_CONFIG="bert-tiny", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), FAKE_HOSTS_LOG=str(tmp_path / "pdsh.log"))
    return env


def test_two_hosts_train_as_one_world(tmp_path):
    env = two_hosts(tmp_path)
    result = subprocess.run([*SCRIPT, "--max_steps", "3"], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    output = result.stdout + result.stderr
    checkpoint = tmp_path / "run" / "checkpoints" / "global_step3"
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file(), output[-4000:]
    assert_completed(result.returncode, output, "stopped at step 3 (max_steps)")

    assert "hosts: node01 node02; master 127.0.0.1:" in output
    pdsh = (tmp_path / "pdsh.log").read_text()
    assert "pdsh hosts=node01,node02 " in pdsh and "--node_rank=%n" in pdsh
    assert "training: world size 2, micro batch 8, accumulation 2, global batch 32" in output
    assert sorted(p.name for p in checkpoint.glob("rank*_state.pt")) == ["rank0_state.pt",
                                                                       "rank1_state.pt"]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert (state["step"], state["samples"], state["world_size"]) == (3, 96, 2)


def test_a_stop_reaches_the_ranks_on_every_host_through_pdsh(tmp_path):
    """SIGUSR1 to the script: every host runs the stop command for this run's registry
    through pdsh; both ranks save one checkpoint and the script exits 0."""
    env = two_hosts(tmp_path)
    run = tmp_path / "run"
    log = tmp_path / "launch.log"
    with open(log, "w") as out:
        job = subprocess.Popen([*SCRIPT, "--max_steps", "100000", "--max_time_minutes", "3"], env=env,
                               stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not (run / "metrics.jsonl").exists() or '"train/loss"' not in (run / "metrics.jsonl").read_text():
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.1)
        job.send_signal(signal.SIGUSR1)
        returncode = job.wait(timeout=120)
    finally:
        kill_tree(job.pid)
    output = log.read_text()
    state = json.loads((run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
                        / "trainer_state.json").read_text())
    assert_completed(returncode, output, f"stopped at step {state['step']} (signal)")
    assert "asking the 2 registered ranks (of 2) on node01 node02 to save a checkpoint and stop" in output
    stops = [line for line in (tmp_path / "pdsh.log").read_text().splitlines()
             if "bing_bert_pld.stop_signal signal" in line]
    assert len(stops) == 1 and stops[0].startswith("pdsh hosts=node01,node02 ")
    assert stops[0].endswith(f"-m bing_bert_pld.stop_signal signal {run}")
    assert "Killing subprocess" not in output
    assert not (run / "launch.pid").exists() and not (run / "rank_pids").exists()
