"""The README's first command, end to end on real text, with a short time budget."""

import subprocess
from pathlib import Path

import pytest

from launch_helpers import clean_env

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run_quickstart(tmp_path: Path) -> str:
    env = clean_env(SKIP_SETUP="1", QUICKSTART_MINUTES="0.15", WORK_DIR=str(tmp_path / "work"),
                    RUNS_DIR=str(tmp_path / "runs"), DS_ACCELERATOR="cpu")
    result = subprocess.run(["bash", str(REPO / "launch" / "quickstart.sh")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_quickstart_builds_data_trains_both_runs_and_compares_them(tmp_path):
    out = run_quickstart(tmp_path)
    runs = tmp_path / "runs"
    manifest = tmp_path / "work" / "data_seq128" / "manifest.json"
    assert manifest.is_file()
    for name in ("pld", "baseline"):
        assert (runs / name / "checkpoints" / "latest").is_file()
        assert any((runs / name / "tensorboard").glob("events.out.tfevents.*"))
        assert f"time per sample, {name:>8}: " in out
    assert "PLD saved" in out
    assert f"TensorBoard logs: {runs}/pld/tensorboard and {runs}/baseline/tensorboard" in out
    for plot in ("loss_vs_time.png", "loss_vs_samples.png", "pld.png", "throughput.png"):
        assert (runs / "report" / plot).stat().st_size > 10_000

    again = run_quickstart(tmp_path)  # reuses the corpus, the shards and both runs
    assert f"reusing {runs}/pld" in again and f"reusing {runs}/baseline" in again
    assert "reusing" in again.split("=== 3/5")[1].split("=== 4/5")[0]
