"""Launch scripts without launching: the commands they print and how they fail."""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])


def run_script(script: str, env: dict, *args, cwd=None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in {"DATA_DIR", "OUTPUT_DIR", "HOSTFILE", "DS_CONFIG", "MASTER_ADDR",
                         "MASTER_PORT", "NUM_NODES", "NUM_GPUS"}}
    return subprocess.run(["bash", str(LAUNCH / script), *map(str, args)],
                          env={**base, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", **env},
                          capture_output=True, text=True, cwd=cwd or REPO, timeout=60)


@pytest.fixture
def shards(tmp_path) -> Path:
    """A directory shaped like data_prep's output (contents are not read here)."""
    data = tmp_path / "data"
    for split in ("train", "validation"):
        (data / split).mkdir(parents=True)
        (data / split / "shard_00000.hdf5").touch()
    return data


def printed_command(stdout: str, program: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.startswith(f"+ {program} "))
    return subprocess.run(["bash", "-c", 'for a in ' + line[2:] + '; do printf "%s\\n" "$a"; done'],
                          capture_output=True, text=True, check=True).stdout.splitlines()


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_are_strict(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if script.name != "lib.sh":  # sourced by the others
        assert "set -euo pipefail" in script.read_text()


@pytest.mark.parametrize("env, message", [
    ({}, "DATA_DIR is not set"),
    ({"DATA_DIR": "/nonexistent/data"}, "OUTPUT_DIR is not set"),
    ({"DATA_DIR": "/nonexistent/data", "OUTPUT_DIR": "runs/x"}, "DATA_DIR split /nonexistent/data/train does not exist"),
])
def test_one_node_fails_clearly_on_missing_settings(env, message):
    result = run_script("train_one_node.sh", env)
    assert result.returncode == 2
    assert message in result.stderr


def test_one_node_checks_config_and_rank_count(shards, tmp_path):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "validation").mkdir()
    result = run_script("train_one_node.sh", {"DATA_DIR": str(empty), "OUTPUT_DIR": "runs/x"})
    assert result.returncode == 2 and f"{empty}/train has no *.hdf5 shards" in result.stderr
    result = run_script("train_one_node.sh", {"DATA_DIR": str(shards), "OUTPUT_DIR": "runs/x",
                                              "DS_CONFIG": "ds_configs/nope.json"})
    assert result.returncode == 2 and "DS_CONFIG ds_configs/nope.json does not exist" in result.stderr
    result = run_script("train_one_node.sh", {"DATA_DIR": str(shards), "OUTPUT_DIR": "runs/x",
                                              "NUM_GPUS": "two"})
    assert result.returncode == 2 and "NUM_GPUS must be a positive integer" in result.stderr


def test_one_node_command_on_cpu(shards, tmp_path):
    output = tmp_path / "runs" / "my run"  # a space survives the quoting
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")  # a machine without GPUs
    (tmp_path / "nvidia-smi").chmod(0o755)
    result = run_script("train_one_node.sh", {"DATA_DIR": str(shards), "OUTPUT_DIR": str(output),
                                              "DRY_RUN": "1", "PATH": f"{tmp_path}:{os.environ['PATH']}"},
                        "--max_time_minutes", "5", "--log_interval", "2")
    assert result.returncode == 0, result.stderr
    command = printed_command(result.stdout, "deepspeed")
    assert option(command, "--num_gpus") == "2"  # no GPU here: 2 CPU ranks
    assert option(command, "--master_port") == "29500"
    assert option(command, "--module") == "bing_bert_pld.train"
    assert option(command, "--deepspeed_config").endswith("ds_configs/cpu_small_pld.json")
    assert option(command, "--model_config") == "bert-small"
    assert option(command, "--output_dir") == str(output)
    assert option(command, "--train_dir") == f"{shards}/train"
    assert command[-4:] == ["--max_time_minutes", "5", "--log_interval", "2"]
    result = run_script("train_one_node.sh", {"DATA_DIR": str(shards), "OUTPUT_DIR": "o", "DRY_RUN": "1",
                                              "PATH": f"{tmp_path}:{os.environ['PATH']}", "NUM_GPUS": "4", "MASTER_PORT": "29999",
                                              "DS_CONFIG": "ds_configs/bert_base_seq128_baseline_bf16.json",
                                              "MODEL_CONFIG": "bert-base"})
    assert result.returncode == 0, result.stderr
    command = printed_command(result.stdout, "deepspeed")
    assert (option(command, "--num_gpus"), option(command, "--master_port")) == ("4", "29999")
    assert option(command, "--deepspeed_config") == "ds_configs/bert_base_seq128_baseline_bf16.json"


def write_hostfile(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_multi_node_derives_master_from_hostfile(shards, tmp_path):
    hostfile = write_hostfile(tmp_path / "hostfile",
                              "# two nodes\nnode01 slots=8\n\nnode02 slots=8  # second\n")
    result = run_script("train_multi_node.sh", {"HOSTFILE": str(hostfile), "DATA_DIR": str(shards),
                                                "OUTPUT_DIR": "/shared/runs/x", "DRY_RUN": "1"},
                        "--max_steps", "100", "--log_interval", "50")
    assert result.returncode == 0, result.stderr
    assert "hosts: node01 node02; master node01:29500" in result.stdout
    command = printed_command(result.stdout, "deepspeed")
    assert option(command, "--hostfile") == str(hostfile)
    assert option(command, "--master_addr") == "node01"
    assert option(command, "--master_port") == "29500"
    assert option(command, "--launcher") == "pdsh"
    assert option(command, "--module") == "bing_bert_pld.train"
    assert option(command, "--train_dir") == f"{shards}/train"
    assert option(command, "--val_dir") == f"{shards}/validation"
    assert option(command, "--deepspeed_config").endswith("ds_configs/bert_base_seq128_pld_bf16.json")
    assert command[-4:] == ["--max_steps", "100", "--log_interval", "50"]  # passed through


def test_multi_node_settings_override_defaults(shards, tmp_path):
    hostfile = write_hostfile(tmp_path / "hostfile", "a slots=4\nb slots=4\nc slots=4\n")
    result = run_script("train_multi_node.sh", {
        "HOSTFILE": str(hostfile), "DATA_DIR": str(shards), "OUTPUT_DIR": "out", "DRY_RUN": "1",
        "NUM_NODES": "2", "NUM_GPUS": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "6000",
        "LAUNCHER": "openmpi", "DS_CONFIG": "ds_configs/bert_large_seq128_pld_bf16.json",
        "MODEL_CONFIG": "bert-large"})
    assert result.returncode == 0, result.stderr
    assert "hosts: a b; master 10.0.0.1:6000" in result.stdout
    command = printed_command(result.stdout, "deepspeed")
    assert (option(command, "--num_nodes"), option(command, "--num_gpus")) == ("2", "2")
    assert (option(command, "--master_addr"), option(command, "--master_port")) == ("10.0.0.1", "6000")
    assert option(command, "--launcher") == "openmpi"
    assert option(command, "--model_config") == "bert-large"


@pytest.mark.parametrize("hostfile_text, env, message", [
    ("node01 slots=8\nnode02\n", {}, "line 2: expected 'hostname slots=N', got 'node02'"),
    ("node01 slots=0\n", {}, "line 1: expected 'hostname slots=N'"),
    ("# nothing\n\n", {}, "lists no hosts"),
    ("node01 slots=8\n", {"NUM_NODES": "2"}, "NUM_NODES must be 1..1"),
])
def test_multi_node_rejects_bad_hostfiles(shards, tmp_path, hostfile_text, env, message):
    hostfile = write_hostfile(tmp_path / "hostfile", hostfile_text)
    result = run_script("train_multi_node.sh", {"HOSTFILE": str(hostfile), "DATA_DIR": str(shards),
                                                "OUTPUT_DIR": "out", "DRY_RUN": "1", **env})
    assert result.returncode == 2
    assert message in result.stderr


def test_multi_node_needs_a_hostfile(shards):
    result = run_script("train_multi_node.sh", {"DATA_DIR": str(shards), "OUTPUT_DIR": "out"})
    assert result.returncode == 2 and "HOSTFILE is not set" in result.stderr
    result = run_script("train_multi_node.sh", {"HOSTFILE": "/nonexistent/hostfile",
                                                "DATA_DIR": str(shards), "OUTPUT_DIR": "out"})
    assert result.returncode == 2 and "HOSTFILE /nonexistent/hostfile does not exist" in result.stderr


@pytest.mark.parametrize("env, message", [
    ({}, "PHASE1_DATA_DIR is not set"),
    ({"PHASE1_DATA_DIR": "d1", "PHASE2_DATA_DIR": "d2", "OUTPUT_DIR": "o"}, "PHASE1_MAX_STEPS is not set"),
    ({"PHASE1_DATA_DIR": "d1", "PHASE2_DATA_DIR": "d2", "OUTPUT_DIR": "o", "PHASE1_MAX_STEPS": "10",
      "PHASE2_MAX_STEPS": "ten"}, "PHASE2_MAX_STEPS must be a positive integer, got 'ten'"),
    ({"PHASE1_DATA_DIR": "d1", "PHASE2_DATA_DIR": "d2", "OUTPUT_DIR": "o", "PHASE1_MAX_STEPS": "10",
      "PHASE2_MAX_STEPS": "5", "PHASE2_KEEP_OPTIMIZER": "yes"}, "PHASE2_KEEP_OPTIMIZER must be 0 or 1"),
    ({"PHASE1_DATA_DIR": "/nonexistent/d1", "PHASE2_DATA_DIR": "d2", "OUTPUT_DIR": "o",
      "PHASE1_MAX_STEPS": "10", "PHASE2_MAX_STEPS": "5"}, "PHASE1_DATA_DIR split /nonexistent/d1/train does not exist"),
])
def test_two_phase_fails_clearly(env, message):
    result = run_script("two_phase.sh", env)
    assert result.returncode == 2
    assert message in result.stderr


def test_quickstart_rejects_a_bad_time_budget():
    result = run_script("quickstart.sh", {"QUICKSTART_MINUTES": "three", "SKIP_SETUP": "1"})
    assert result.returncode == 2 and "QUICKSTART_MINUTES must be a number" in result.stderr


def test_slurm_submit_dry_run(shards, tmp_path):
    result = run_script("slurm_submit.sh", {
        "DATA_DIR": str(shards), "OUTPUT_DIR": str(tmp_path / "runs/x"), "NODES": "4",
        "GPUS_PER_NODE": "8", "TIME_LIMIT": "2:00:00", "LOG_ROOT": str(tmp_path / "logs"),
        "PARTITION": "gpu", "DRY_RUN": "1"}, "--", "--max_steps", "1000")
    assert result.returncode == 0, result.stderr
    command = printed_command(result.stdout, "sbatch")
    assert option(command, "--nodes") == "4"
    assert option(command, "--ntasks-per-node") == "8"
    assert option(command, "--gpus-per-node") == "8"
    assert option(command, "--time") == "2:00:00"
    assert option(command, "--partition") == "gpu"
    assert option(command, "--output") == f"{tmp_path}/logs/%x-%j.out"
    assert "--cpus-per-task" not in command and "--mem-per-cpu" not in command  # the script's #SBATCH lines
    script = command.index("launch/slurm_train.sbatch")
    assert command[script + 1:] == [
        "--data-dir", str(shards), "--output-dir", f"{tmp_path}/runs/x",
        "--ds-config", str(REPO / "ds_configs/bert_base_seq128_pld_bf16.json"), "--model-config", "bert-base",
        "--python", option(command, "--python"), "--log-root", f"{tmp_path}/logs", "--", "--max_steps", "1000"]
    assert Path(option(command, "--python")).is_absolute()


def test_slurm_submit_options_win_over_the_environment(shards, tmp_path):
    result = run_script("slurm_submit.sh", {
        "DATA_DIR": "/elsewhere", "OUTPUT_DIR": str(tmp_path / "env"), "NODES": "4", "DRY_RUN": "1"},
        "--nodes=2", "--gpus-per-node", "4", "--cpus-per-task", "12", "--mem-per-cpu", "6G",
        "--signal-lead", "900", "--data-dir", shards, "--output-dir", tmp_path / "opt",
        "--model-config", "bert-large", "--master-port", "23456", "--", "--max_steps", "5", "--seed", "2")
    assert result.returncode == 0, result.stderr
    command = printed_command(result.stdout, "sbatch")
    assert [option(command, o) for o in ("--nodes", "--ntasks-per-node", "--gpus-per-node",
                                         "--cpus-per-task", "--mem-per-cpu")] == ["2", "4", "4", "12", "6G"]
    assert "--signal=B:USR1@900" in command
    assert [option(command, o) for o in ("--data-dir", "--output-dir", "--model-config", "--master-port")] == [
        str(shards), f"{tmp_path}/opt", "bert-large", "23456"]
    assert command[-5:] == ["--", "--max_steps", "5", "--seed", "2"]


@pytest.mark.parametrize("args, message", [
    (["--node", "4"], "error: unknown option '--node' (bash launch/slurm_submit.sh --help lists them; "
                      "the trainer's arguments go after --, e.g. -- --max_steps 200000)"),
    (["--max_steps", "10"], "error: unknown option '--max_steps'"),
    (["--cpus-per-task", "0"], "error: --cpus-per-task (CPUS_PER_TASK) must be a positive integer, got '0'"),
    (["--mem-per-cpu", "lots"], "error: --mem-per-cpu (MEM_PER_CPU) must be a size such as 4G or 4000M, got 'lots'"),
    (["--python", "/nonexistent/python"], "error: --python (PYTHON) '/nonexistent/python' is not a program on this PATH"),
    (["--time"], "error: --time needs a value"),
])
def test_slurm_submit_rejects_bad_options_before_submitting(shards, tmp_path, args, message):
    result = run_script("slurm_submit.sh", {"DATA_DIR": str(shards), "OUTPUT_DIR": str(tmp_path / "o")}, *args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith(message), result.stderr
    assert "+ sbatch" not in result.stdout


def test_sbatch_header_asks_for_a_warning_signal_and_requeue():
    header = [line for line in (LAUNCH / "slurm_train.sbatch").read_text().splitlines()
              if line.startswith("#SBATCH")]
    assert "#SBATCH --requeue" in header
    assert "#SBATCH --open-mode=append" in header
    signal = next(line for line in header if line.startswith("#SBATCH --signal="))
    assert re.fullmatch(r"#SBATCH --signal=B:USR1@\d+", signal)


def test_a_shard_set_without_a_validation_split_trains_without_val_dir(shards):
    """data_prep --validation-fraction 0 writes no validation/; the trainer's --val_dir is optional."""
    (shards / "validation" / "shard_00000.hdf5").unlink()
    (shards / "validation").rmdir()
    result = run_script("train_one_node.sh", {"DATA_DIR": str(shards), "OUTPUT_DIR": "o", "DRY_RUN": "1"})
    assert result.returncode == 0, result.stderr
    command = printed_command(result.stdout, "deepspeed")
    assert option(command, "--train_dir") == f"{shards}/train" and "--val_dir" not in command
    (shards / "validation").mkdir()  # present but empty: a broken set, not "no split"
    result = run_script("train_one_node.sh", {"DATA_DIR": str(shards), "OUTPUT_DIR": "o", "DRY_RUN": "1"})
    assert result.returncode == 2 and f"{shards}/validation has no *.hdf5 shards" in result.stderr
