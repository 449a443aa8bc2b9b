"""The README's first command, end to end on real text, with a short time budget."""

import json
import subprocess
from pathlib import Path

import pytest

from bing_bert_pld import shm_comm
from launch_helpers import clean_env, free_port

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run_quickstart(tmp_path: Path, port: int) -> str:
    env = clean_env(SKIP_SETUP="1", QUICKSTART_MINUTES="0.15", WORK_DIR=str(tmp_path / "work"),
                    RUNS_DIR=str(tmp_path / "runs"), DS_ACCELERATOR="cpu", MASTER_PORT=str(port))
    result = subprocess.run(["bash", str(REPO / "launch" / "quickstart.sh")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_quickstart_builds_data_trains_both_runs_and_compares_them(tmp_path):
    port = free_port()
    out = run_quickstart(tmp_path, port)
    runs = tmp_path / "runs"
    manifest = tmp_path / "work" / "data_seq128" / "manifest.json"
    # the vocabulary is trained on the corpus (no 90 MB package for a vocab.txt), at the
    # size of bert-base-uncased's, which the model configs expect
    assert json.loads(manifest.read_text())["vocab_size"] == 30522
    vocab = (tmp_path / "work" / "data_seq128" / "vocab.txt").read_text().splitlines()
    assert len(vocab) == 30522 and vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # both 2-rank runs removed DeepSpeed's /dev/shm buffers
    assert shm_comm.run_buffers("127.0.0.1", str(port)) == []
    for name in ("pld", "baseline"):
        assert (runs / name / "checkpoints" / "latest").is_file()
        assert any((runs / name / "tensorboard").glob("events.out.tfevents.*"))
        assert f"time per sample, {name:>8}: " in out
    assert "PLD saved" in out
    assert f"TensorBoard logs: {runs}/pld/tensorboard and {runs}/baseline/tensorboard" in out
    for plot in ("loss_vs_time.png", "loss_vs_samples.png", "pld.png", "throughput.png"):
        assert (runs / "report" / plot).stat().st_size > 10_000

    again = run_quickstart(tmp_path, port)  # reuses the corpus, the shards and both runs
    assert f"reusing {runs}/pld" in again and f"reusing {runs}/baseline" in again
    assert "reusing" in again.split("=== 3/5")[1].split("=== 4/5")[0]
