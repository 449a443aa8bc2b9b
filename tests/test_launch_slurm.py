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
import sys
import time
from pathlib import Path

import pytest

from bing_bert_pld import stop_signal
from launch_helpers import catches

REPO = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fake_slurm"
SBATCH_SCRIPT = REPO / "launch" / "slurm_train.sbatch"


@pytest.fixture
def slurm(tmp_path):
    """PATH with the fake commands, a log directory, a data set and SLURM-like settings."""
    bin_dir = tmp_path / "bin"
    shutil.copytree(FAKES, bin_dir)
    for tool in ("sbatch", "srun", "scontrol", "fake_trainer"):
        # This interpreter, not whatever python3 a job's PATH finds (--export=NONE): it has
        # bing_bert_pld installed, as the interpreter slurm_submit.sh passes with --python.
        script = bin_dir / tool
        script.write_text(f"#!{sys.executable}\n" + script.read_text().split("\n", 1)[1])
        script.chmod(0o755)
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
    result = subprocess.run(["bash", str(REPO / "launch/slurm_submit.sh"), "--", "--max_steps", "500"],
                            env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Submitted batch job 4242" in result.stdout

    (sbatch,) = records(tmp_path, "sbatch")
    assert sbatch["cwd"] == str(REPO)  # the job finds the repository through SLURM_SUBMIT_DIR
    assert sbatch["argv"][-3:] == ["--", "--max_steps", "500"]
    # the #SBATCH lines' resources, where the command line gives none
    assert (sbatch["options"]["--cpus-per-task"], sbatch["options"]["--mem-per-cpu"]) == ("8", "4G")

    job_log = tmp_path / "logs" / "bert-pld-4242"
    assert (job_log / "hostfile").read_text() == "gpu-node07 slots=2\ngpu-node08 slots=2\n"
    job_output = (tmp_path / "logs" / "bert-pld-4242.out").read_text()
    assert "2 nodes x 2 ranks = world size 4; hosts gpu-node07 gpu-node08; master gpu-node07:24242" in job_output
    assert "per rank: 8 CPUs, 4096 MB per CPU\n" in job_output
    assert "+ srun " in job_output  # the command is printed

    (srun,) = records(tmp_path, "srun")
    argv = srun["argv"]
    assert argv[argv.index("--nodes") + 1] == "2"
    assert argv[argv.index("--ntasks") + 1] == "4"
    assert argv[argv.index("--ntasks-per-node") + 1] == "2"
    assert argv[argv.index("--cpus-per-task") + 1] == "8"  # srun >= 22.05 does not inherit it
    assert "--export=ALL" in argv
    assert "--kill-on-bad-exit=1" in argv

    ranks = tasks(tmp_path)
    assert sorted(ranks) == [0, 1, 2, 3]
    for rank, task in ranks.items():
        assert task["env"] == {"RANK": str(rank), "LOCAL_RANK": str(rank % 2), "WORLD_SIZE": "4",
                               "LOCAL_SIZE": "2", "MASTER_ADDR": "gpu-node07", "MASTER_PORT": "24242",
                               "SLURMD_NODENAME": f"gpu-node0{7 + rank // 2}", "DS_ACCELERATOR": None,
                               "SLURM_CPUS_PER_TASK": "8", "DATA_DIR": env["DATA_DIR"]}
        trainer = task["argv"]
        assert trainer[:3] == ["-u", "-m", "bing_bert_pld.train"]
        assert trainer[trainer.index("--train_dir") + 1] == f"{env['DATA_DIR']}/train"
        assert trainer[trainer.index("--val_dir") + 1] == f"{env['DATA_DIR']}/validation"
        assert trainer[trainer.index("--output_dir") + 1] == env["OUTPUT_DIR"]
        assert trainer[trainer.index("--deepspeed_config") + 1] == str(
            REPO / "ds_configs/bert_base_seq128_pld_bf16.json")  # the README's precision
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


def start_batch(env: dict, tmp_path: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SBATCH_SCRIPT), "--max_steps", "9"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(batch: subprocess.Popen, timeout: float = 30) -> str:
    try:
        output, _ = batch.communicate(timeout=timeout)
    finally:
        batch.kill()
    return output


def ready(tmp_path: Path, ranks: int):
    return lambda: len(list((tmp_path / "fake_log").glob("task*.ready"))) == ranks


def test_time_limit_signal_while_ranks_start_is_passed_on_once_they_can_take_it(slurm):
    """SLURM's SIGUSR1 while the ranks' interpreters start (when SIGUSR1 still kills
    them): held until every rank has registered, then passed on through srun."""
    tmp_path, env = slurm
    job = {**job_env(env, "781", "node[1-2]", per_node=2), "FAKE_TRAINER_WAIT": "1",
           "FAKE_TRAINER_REGISTER_DELAY": "1.5"}
    batch = start_batch(job, tmp_path)
    try:
        wait_for(lambda: len(list((tmp_path / "fake_log").glob("task*.json"))) == 4, 30, "4 ranks started")
        assert not list((tmp_path / "fake_log").glob("task*.ready"))  # none can take it yet
        batch.send_signal(signal.SIGUSR1)
    finally:
        output = finish(batch)
    assert batch.returncode == 0, output
    assert {task["signal"] for task in tasks(tmp_path).values()} == {"SIGUSR1"}
    assert records(tmp_path, "srun").count({"forwarded": "SIGUSR1"}) == 1
    assert {"argv": ["requeue", "781"]} in records(tmp_path, "scontrol")
    assert not (Path(env["OUTPUT_DIR"]) / "launch.pid").exists()
    assert not (Path(env["OUTPUT_DIR"]) / "rank_pids").exists()


def test_time_limit_signal_before_the_ranks_exist_requeues_without_starting_them(slurm):
    tmp_path, env = slurm
    job = {**job_env(env, "782", "node1", per_node=2), "FAKE_TRAINER_WAIT": "1",
           "FAKE_SCONTROL_DELAY": "1"}
    lookups = len(records(tmp_path, "scontrol"))  # job_env's own
    batch = start_batch(job, tmp_path)
    try:
        # The script asks scontrol for its hosts (slowly) before it starts anything.
        wait_for(lambda: len(records(tmp_path, "scontrol")) > lookups, 30, "the host lookup")
        assert catches(batch.pid, signal.SIGUSR1)  # its trap is set: it remembers the stop
        batch.send_signal(signal.SIGUSR1)
    finally:
        output = finish(batch)
    assert batch.returncode == 0, output
    assert "stop requested (SIGUSR1) before training started: not starting it, no step ran" in output
    assert "requeueing job 782" in output
    assert not records(tmp_path, "srun")
    assert {"argv": ["requeue", "782"]} in records(tmp_path, "scontrol")


def test_sigusr1_then_sigterm_still_requeues_after_the_ranks_saved(slurm):
    """SLURM's SIGTERM (or an operator's) while the ranks save after the warning: ignored
    by the script; the ranks finish, the job exits 0 and is requeued."""
    tmp_path, env = slurm
    job = {**job_env(env, "783", "node1", per_node=2), "FAKE_TRAINER_WAIT": "1",
           "FAKE_TRAINER_SAVE_SECONDS": "1.5"}
    batch = start_batch(job, tmp_path)
    try:
        wait_for(ready(tmp_path, 2), 30, "2 ranks")
        ranks = [entry.pid for entry in stop_signal.registrations(Path(env["OUTPUT_DIR"]))]
        batch.send_signal(signal.SIGUSR1)
        wait_for(lambda: {"forwarded": "SIGUSR1"} in records(tmp_path, "srun"), 10, "the stop to reach srun")
        for pid in ranks:
            os.kill(pid, signal.SIGTERM)
        batch.send_signal(signal.SIGTERM)
    finally:
        output = finish(batch)
    assert batch.returncode == 0, output
    assert "received SIGTERM while stopping (after SIGUSR1): ignored, the ranks finish their checkpoint" in output
    assert all((tmp_path / "fake_log" / f"task{rank}.done").exists() for rank in (0, 1))
    assert {tuple(task["signals"]) for task in tasks(tmp_path).values()} == {("SIGUSR1", "SIGTERM")}
    assert {"argv": ["requeue", "783"]} in records(tmp_path, "scontrol")


def test_sigterm_to_the_process_group_waits_for_the_ranks(slurm):
    """scancel / kill -- -PGID: the script waits while the ranks save, then exits 0."""
    tmp_path, env = slurm
    job = {**job_env(env, "784", "node1", per_node=2), "FAKE_TRAINER_WAIT": "1",
           "FAKE_TRAINER_SAVE_SECONDS": "2"}
    batch = start_batch(job, tmp_path, start_new_session=True)
    try:
        wait_for(ready(tmp_path, 2), 30, "2 ranks")
        os.killpg(batch.pid, signal.SIGTERM)
    finally:
        output = finish(batch)
    done = [(tmp_path / "fake_log" / f"task{rank}.done").exists() for rank in (0, 1)]
    assert batch.returncode == 0, output
    assert done == [True, True]  # both ranks had finished when the script exited
    assert {task["signal"] for task in tasks(tmp_path).values()} == {"SIGUSR1"}  # from srun
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


def test_submit_works_under_export_none(slurm):
    """Sites that set SBATCH_EXPORT=NONE give the job none of the submitting shell's
    variables: the settings reach it as arguments of the batch script instead."""
    tmp_path, env = slurm
    env = {**env, "FAKE_SBATCH_RUN": "1", "FAKE_SLURM_NODELIST": "node[1-2]", "FAKE_SLURM_JOB_ID": "5151",
           "SBATCH_EXPORT": "NONE", "GPUS_PER_NODE": "0", "TASKS_PER_NODE": "2"}
    result = subprocess.run(["bash", str(REPO / "launch/slurm_submit.sh"), "--cpus-per-task", "3",
                             "--model-config", "bert-small", "--", "--max_steps", "7"],
                            env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    job_output = (tmp_path / "logs" / "bert-pld-5151.out").read_text()
    assert "2 nodes x 2 ranks = world size 4" in job_output, job_output
    ranks = tasks(tmp_path)
    assert sorted(ranks) == [0, 1, 2, 3], job_output
    for rank, task in ranks.items():
        assert task["env"]["DATA_DIR"] is None  # the fake sbatch really dropped the environment
        assert {k: task["env"][k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "DS_ACCELERATOR",
                                            "SLURM_CPUS_PER_TASK")} == {
            "RANK": str(rank), "WORLD_SIZE": "4", "MASTER_ADDR": "node1", "DS_ACCELERATOR": "cpu",
            "SLURM_CPUS_PER_TASK": "3"}
        trainer = task["argv"]
        assert trainer[trainer.index("--train_dir") + 1] == f"{env['DATA_DIR']}/train"
        assert trainer[trainer.index("--output_dir") + 1] == env["OUTPUT_DIR"]
        assert trainer[trainer.index("--model_config") + 1] == "bert-small"
        assert trainer[-2:] == ["--max_steps", "7"]


def test_settings_only_in_the_environment_do_not_reach_an_export_none_job(slurm):
    """Why the settings are arguments: the same job given them through the environment."""
    tmp_path, env = slurm
    env = {**env, "FAKE_SBATCH_RUN": "1", "FAKE_SLURM_NODELIST": "node1", "FAKE_SLURM_JOB_ID": "5152"}
    (tmp_path / "logs").mkdir()
    result = subprocess.run(["sbatch", "--export=NONE", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
                             f"--output={tmp_path}/logs/%x-%j.out", "launch/slurm_train.sbatch",
                             "--", "--max_steps", "7"],
                            env=env, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert "error: DATA_DIR is not set" in (tmp_path / "logs" / "bert-pld-5152.out").read_text()
    assert not records(tmp_path, "srun")


def test_direct_sbatch_from_the_repository_root_finds_its_log_directory(slurm):
    """#SBATCH --output=logs/%x-%j.out: sbatch cannot create logs/, so the repository
    carries it (logs/.gitkeep, not ignored) and a plain sbatch from its root starts."""
    tmp_path, env = slurm
    assert (REPO / "logs" / ".gitkeep").is_file()
    ignored = subprocess.run(["git", "check-ignore", "-q", "logs/.gitkeep"], cwd=REPO)
    assert ignored.returncode == 1  # 1: not ignored, so a checkout has logs/
    job_id = str(90000 + os.getpid() % 10000)
    env = {**env, "FAKE_SBATCH_RUN": "1", "FAKE_SLURM_NODELIST": "node1", "FAKE_SLURM_JOB_ID": job_id}
    job_output = REPO / "logs" / f"bert-pld-{job_id}.out"
    try:
        result = subprocess.run(["sbatch", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
                                 "launch/slurm_train.sbatch", "--data-dir", env["DATA_DIR"],
                                 "--output-dir", env["OUTPUT_DIR"], "--log-root", env["LOG_ROOT"],
                                 "--", "--max_steps", "7"],
                                env=env, capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 0, result.stderr
        assert f"job {job_id} (restart 0): 1 nodes x 2 ranks" in job_output.read_text()
    finally:
        job_output.unlink(missing_ok=True)


def test_batch_script_options_then_the_trainers_arguments(slurm):
    """Its own options first (either form), then -- or the first other argument: the
    trainer's (the older `slurm_train.sbatch --max_steps N` form)."""
    tmp_path, env = slurm
    job = {k: v for k, v in job_env(env, "786", "node1", per_node=2).items() if k not in ("DATA_DIR", "OUTPUT_DIR")}
    result = subprocess.run(["bash", str(SBATCH_SCRIPT), f"--data-dir={env['DATA_DIR']}", "--output-dir",
                             env["OUTPUT_DIR"], "--master-port", "23000", "--max_steps", "9", "--log-root", "x"],
                            env=job, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert {task["env"]["MASTER_PORT"] for task in tasks(tmp_path).values()} == {"23000"}
    assert {tuple(task["argv"][-4:]) for task in tasks(tmp_path).values()} == {("--max_steps", "9", "--log-root", "x")}

    result = subprocess.run(["bash", str(SBATCH_SCRIPT), "--data-dir"], env=job, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (2, "error: slurm_train.sbatch: --data-dir needs a value\n")
