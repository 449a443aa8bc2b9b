"""The SLURM scripts under fake sbatch / srun / scontrol (tests/fake_slurm/).

The fakes run every task as a local process with the SLURM_* variables a real
allocation sets, and record what they were asked to do; a fake trainer (PYTHON) records
the distributed environment each rank got and can wait for the time-limit signal.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fake_slurm"
SBATCH_SCRIPT = REPO / "launch" / "slurm_train.sbatch"


@pytest.fixture
def slurm(tmp_path):
    """PATH with the fake commands, a log directory, a data set and SLURM-like settings."""
    bin_dir = tmp_path / "bin"
    shutil.copytree(FAKES, bin_dir)
    for tool in ("sbatch", "srun", "scontrol", "fake_trainer"):
        (bin_dir / tool).chmod(0o755)
    data = tmp_path / "data"
    for split in ("train", "validation"):
        (data / split).mkdir(parents=True)
        (data / split / "shard_00000.hdf5").touch()
    # A job starts without the distributed variables that other tests' processes set.
    inherited = {"DS_ACCELERATOR", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK",
                 "WORLD_SIZE", "LOCAL_SIZE"}
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith("SLURM_") and k not in inherited}
    env = {**keep, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "FAKE_SLURM_LOG": str(tmp_path / "fake_log"), "PYTHON": str(bin_dir / "fake_trainer"),
           "DATA_DIR": str(data), "OUTPUT_DIR": str(tmp_path / "runs" / "pld"),
           "LOG_ROOT": str(tmp_path / "logs")}
    return tmp_path, env


def records(tmp_path: Path, name: str) -> list[dict]:
    path = tmp_path / "fake_log" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def tasks(tmp_path: Path) -> dict[int, dict]:
    return {int(p.stem[4:]): json.loads(p.read_text())
            for p in (tmp_path / "fake_log").glob("task*.json")}


def job_env(env: dict, job_id: str, nodelist: str, per_node: int, gpus: int = 0, restart: int = 0) -> dict:
    """What slurmd gives a batch script (sbatch --nodes ... --ntasks-per-node ...)."""
    nodes = len(subprocess.run(["scontrol", "show", "hostnames", nodelist], env=env,
                               capture_output=True, text=True, check=True).stdout.split())
    job = {**env, "SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": "bert-pld",
           "SLURM_JOB_NODELIST": nodelist, "SLURM_NNODES": str(nodes),
           "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_NTASKS": str(per_node * nodes),
           "SLURM_SUBMIT_DIR": str(REPO), "SLURM_RESTART_COUNT": str(restart)}
    if gpus:
        job["SLURM_GPUS_ON_NODE"] = str(gpus)
    return job


def test_submit_runs_one_rank_per_gpu_on_every_host(slurm):
    tmp_path, env = slurm
    env = {**env, "FAKE_SBATCH_RUN": "1", "FAKE_SLURM_NODELIST": "gpu-node[07-08]",
           "FAKE_SLURM_JOB_ID": "4242", "NODES": "2", "GPUS_PER_NODE": "2"}
    result = subprocess.run(["bash", str(REPO / "launch/slurm_submit.sh"), "--max_steps", "500"],
                            env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Submitted batch job 4242" in result.stdout

    (sbatch,) = records(tmp_path, "sbatch")
    assert sbatch["cwd"] == str(REPO)  # the job finds the repository through SLURM_SUBMIT_DIR
    assert sbatch["env"]["DATA_DIR"] == env["DATA_DIR"]
    assert sbatch["argv"][-3:] == ["launch/slurm_train.sbatch", "--max_steps", "500"]

    job_log = tmp_path / "logs" / "bert-pld-4242"
    assert (job_log / "hostfile").read_text() == "gpu-node07 slots=2\ngpu-node08 slots=2\n"
    job_output = (tmp_path / "logs" / "bert-pld-4242.out").read_text()
    assert "2 nodes x 2 ranks = world size 4; hosts gpu-node07 gpu-node08; master gpu-node07:24242" in job_output
    assert "+ srun " in job_output  # the command is printed

    (srun,) = records(tmp_path, "srun")
    argv = srun["argv"]
    assert argv[argv.index("--nodes") + 1] == "2"
    assert argv[argv.index("--ntasks") + 1] == "4"
    assert argv[argv.index("--ntasks-per-node") + 1] == "2"
    assert "--kill-on-bad-exit=1" in argv

    ranks = tasks(tmp_path)
    assert sorted(ranks) == [0, 1, 2, 3]
    for rank, task in ranks.items():
        assert task["env"] == {"RANK": str(rank), "LOCAL_RANK": str(rank % 2), "WORLD_SIZE": "4",
                               "LOCAL_SIZE": "2", "MASTER_ADDR": "gpu-node07", "MASTER_PORT": "24242",
                               "SLURMD_NODENAME": f"gpu-node0{7 + rank // 2}", "DS_ACCELERATOR": None}
        trainer = task["argv"]
        assert trainer[:3] == ["-u", "-m", "bing_bert_pld.train"]
        assert trainer[trainer.index("--train_dir") + 1] == f"{env['DATA_DIR']}/train"
        assert trainer[trainer.index("--val_dir") + 1] == f"{env['DATA_DIR']}/validation"
        assert trainer[trainer.index("--output_dir") + 1] == env["OUTPUT_DIR"]
        assert trainer[trainer.index("--deepspeed_config") + 1].endswith(
            "ds_configs/bert_base_seq128_pld_fp16.json")
        assert trainer[-2:] == ["--max_steps", "500"]
        assert f"fake trainer rank {rank} started" in (job_log / f"restart0-rank{rank}.log").read_text()
    assert not [r for r in records(tmp_path, "scontrol") if r["argv"][0] == "requeue"]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_time_limit_signal_checkpoints_and_requeues(slurm):
    tmp_path, env = slurm
    job = {**job_env(env, "777", "node[1-2]", per_node=2, gpus=2, restart=3), "FAKE_TRAINER_WAIT": "1"}
    batch = subprocess.Popen(["bash", str(SBATCH_SCRIPT), "--max_steps", "9"], env=job, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: len(list((tmp_path / "fake_log").glob("task*.ready"))) == 4, 30, "4 ranks")
        batch.send_signal(signal.SIGUSR1)  # what SLURM sends --signal=B:USR1@300 before the limit
        output, _ = batch.communicate(timeout=30)
    finally:
        batch.kill()
    assert batch.returncode == 0, output
    assert {task["signal"] for task in tasks(tmp_path).values()} == {"SIGUSR1"}
    assert {"forwarded": "SIGUSR1"} in records(tmp_path, "srun")
    assert {"argv": ["requeue", "777"]} in records(tmp_path, "scontrol")
    assert "requeueing job 777" in output
    assert (tmp_path / "logs" / "bert-pld-777" / "restart3-rank0.log").exists()  # per-restart logs


def test_sigterm_stops_without_requeue(slurm):
    tmp_path, env = slurm
    job = {**job_env(env, "778", "node1", per_node=2), "FAKE_TRAINER_WAIT": "1"}
    batch = subprocess.Popen(["bash", str(SBATCH_SCRIPT), "--max_steps", "9"], env=job, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: len(list((tmp_path / "fake_log").glob("task*.ready"))) == 2, 30, "2 ranks")
        batch.send_signal(signal.SIGTERM)
        output, _ = batch.communicate(timeout=30)
    finally:
        batch.kill()
    assert batch.returncode == 0, output
    assert {task["signal"] for task in tasks(tmp_path).values()} == {"SIGUSR1"}
    assert {task["env"]["DS_ACCELERATOR"] for task in tasks(tmp_path).values()} == {"cpu"}  # no GPUs
    assert not [r for r in records(tmp_path, "scontrol") if r["argv"][0] == "requeue"]


def test_failed_training_is_not_requeued(slurm):
    tmp_path, env = slurm
    job = {**job_env(env, "779", "node1", per_node=2), "FAKE_TRAINER_EXIT": "3"}
    result = subprocess.run(["bash", str(SBATCH_SCRIPT)], env=job, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "training failed with status 3; not requeued" in result.stderr
    assert not [r for r in records(tmp_path, "scontrol") if r["argv"][0] == "requeue"]


@pytest.mark.parametrize("change, message", [
    ({"SLURM_JOB_ID": None}, "SLURM_JOB_ID is not set (this script runs as a SLURM job"),
    ({"SLURM_GPUS_ON_NODE": "4"}, "one task per GPU is needed: 2 tasks per node but 4 GPUs per node"),
    ({"OUTPUT_DIR": None}, "OUTPUT_DIR is not set"),
    ({"SLURM_SUBMIT_DIR": "/nonexistent"}, "cannot find the repository"),
])
def test_batch_script_fails_clearly(slurm, change, message):
    tmp_path, env = slurm
    job = job_env(env, "780", "node[1-2]", per_node=2)
    for key, value in change.items():
        if value is None:
            job.pop(key)
        else:
            job[key] = value
    result = subprocess.run(["bash", str(SBATCH_SCRIPT)], env=job, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert not records(tmp_path, "srun")
