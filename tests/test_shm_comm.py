"""DeepSpeed's /dev/shm allreduce buffers: our runs leave none behind and never touch
another run's; the first launch on a machine says it is compiling the op."""

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from bing_bert_pld import shm_comm
from launch_helpers import assert_completed, clean_env, free_port

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "drivers" / "shm_release.py"
UID = os.getuid()


@pytest.fixture
def planted():
    """Create /dev/shm files by name (what shm.cpp would leave); removed afterwards."""
    made = []

    def plant(name: str) -> Path:
        path = shm_comm.SHM_DIR / name
        path.write_bytes(b"x")
        made.append(path)
        return path

    yield plant
    for path in made:
        path.unlink(missing_ok=True)


def test_the_file_name_is_the_one_shm_cpp_builds():
    # snprintf("%s_%d_%s_%s", SHM_BUFFER_NAME, getuid(), addr, port), then "%s_%d" with the rank
    assert shm_comm.buffer_path("127.0.0.1", "29500", 3, uid=1000) == Path(
        "/dev/shm/deepspeed_allreduce_buffer_1000_127.0.0.1_29500_3")


def test_clean_removes_one_runs_files_only(planted):
    port = str(free_port())
    ours = [planted(f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_{port}_{r}") for r in (0, 1, 12)]
    others = [planted(f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_{port}1_0"),  # port 10x larger
              planted(f"deepspeed_allreduce_buffer_{UID}_10.0.0.7_{port}_0"),  # another address
              planted(f"deepspeed_allreduce_buffer_{UID + 1}_127.0.0.1_{port}_0"),  # another user
              planted(f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_{port}_0.tmp")]
    result = subprocess.run(["python", "-m", "bing_bert_pld.shm_comm", "clean", "127.0.0.1", port],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"removed {p}" for p in ours]
    assert [p.exists() for p in ours + others] == [False] * 3 + [True] * 4


def test_clean_refuses_a_port_that_is_not_a_number():
    result = subprocess.run(["python", "-m", "bing_bert_pld.shm_comm", "clean", "127.0.0.1", "*"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (result.returncode, result.stderr) == (2, "error: port must be a number, got '*'\n")


def test_the_build_notice_is_printed_when_no_build_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("LOCAL_RANK", "0")
    out = io.StringIO()
    assert shm_comm.announce_build(out)
    assert out.getvalue() == (
        "first launch on this machine: compiling DeepSpeed's CPU communication op "
        f"(deepspeed_shm_comm, about 1-4 minutes, once; cached in {tmp_path}/deepspeed_shm_comm)\n")

    monkeypatch.setenv("LOCAL_RANK", "1")  # one line per host, not per rank
    assert not shm_comm.announce_build(out)

    monkeypatch.setenv("LOCAL_RANK", "0")
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").touch()
    assert not shm_comm.announce_build(out)
    assert out.getvalue().count("\n") == 1


def test_extensions_dir_is_where_torch_builds(monkeypatch):
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert shm_comm.extensions_dir() / "deepspeed_shm_comm" == Path(
        _get_build_directory("deepspeed_shm_comm", verbose=False))


@pytest.mark.slow
def test_a_two_rank_run_leaves_no_shm_file_and_the_shm_allreduce_still_works(tmp_path, planted):
    port = str(free_port())
    other = planted(f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_{free_port()}_0")  # another run's
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", port, str(DRIVER), str(tmp_path)]
    result = subprocess.run(cmd, env=clean_env(DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO)),
                            capture_output=True, text=True, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text())
             for r in range(2) if (tmp_path / f"rank{r}.json").exists()]
    assert len(ranks) == 2, result.stdout[-4000:] + result.stderr[-4000:]
    assert_completed(result.returncode, result.stdout + result.stderr, "")
    for rank, record in enumerate(ranks):
        # each rank's buffer existed (the op ran) and was unlinked by that rank after the barrier
        assert record["released"] == [str(shm_comm.buffer_path("127.0.0.1", port, rank))]
        assert record["remaining_after_init"] == []  # once every rank is through init
        assert record["allreduce"] == [3.0, 3.0, 3.0]  # 1 + 2 through the unlinked buffers
    assert shm_comm.run_buffers("127.0.0.1", port) == []
    assert other.exists()


def test_the_launch_script_removes_what_ranks_killed_in_init_left(tmp_path, planted):
    """Ranks killed before the barrier that unlinks the names (here a stand-in launcher
    that creates the files and dies) leave their files: the script's exit removes them,
    and only them."""
    port = str(free_port())
    other = planted(f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_{free_port()}_0")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "deepspeed").write_text(
        "#!/usr/bin/env bash\n"
        "port=\"$(sed -n 's/.*--master_port \\([0-9]*\\).*/\\1/p' <<< \"$*\")\"\n"
        "for rank in 0 1; do echo x > \"/dev/shm/deepspeed_allreduce_buffer_$(id -u)_127.0.0.1_${port}_$rank\"; done\n"
        "exit 137\n")
    (bin_dir / "deepspeed").chmod(0o755)
    data = tmp_path / "data"
    for split in ("train", "validation"):
        (data / split).mkdir(parents=True)
        (data / split / "shard_00000.hdf5").touch()
    env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", DATA_DIR=str(data),
                    OUTPUT_DIR=str(tmp_path / "run"), MASTER_PORT=port, NUM_GPUS="2")
    try:
        result = subprocess.run(["bash", str(REPO / "launch" / "train_one_node.sh"), "--max_steps", "1"],
                                env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 137, result.stderr
        assert [line for line in result.stderr.splitlines() if line.startswith("removed ")] == [
            f"removed {shm_comm.buffer_path('127.0.0.1', port, rank)}" for rank in (0, 1)]
        assert shm_comm.run_buffers("127.0.0.1", port) == []
        assert other.exists()
    finally:
        shm_comm.remove_run_buffers("127.0.0.1", port)
