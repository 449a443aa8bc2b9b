"""A real 2-rank run (the deepspeed launcher, `--module bing_bert_pld.train`) stopped on a
checkpoint step, killed during its final save, relaunched: it matches the uninterrupted run.

The faults come from run/checkpoint.py's test hook (BBP_TEST_FAULT_IN_SAVE), which makes each
rank signal itself inside a save, after its files are written and before publication:
1. straight: 6 steps, a checkpoint every 2.
2. "4:USR1,4:KILL": the stop request arrives during the save of step 4, a checkpoint step.
   The code before the fix saved step 4 a second time on the stop, into the tag `latest`
   named; that second save would get the KILL and leave global_step4 broken. Now there
   is no second save: the run exits cleanly with global_step4 as it was published.
3. "6:KILL": relaunched, it resumes at 4 and is killed during its final save (step 6):
   `latest` still names global_step4, the half-written save sits under .saving-*.
4. Relaunched again: resumes from global_step4, publishes global_step6, removes the
   leftover, and its losses and weights equal the straight run's exactly.
"""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from launch_helpers import assert_completed, clean_env, free_port
from shard_factory import write_shard_set

from bing_bert_pld.run.checkpoint import FAULT_ENV

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SEQ, PRED, VOCAB = 32, 5, 512
DS = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
      "steps_per_print": 10**6, "gradient_clipping": 1.0,
      "optimizer": {"type": "Lamb", "params": {"lr": 2e-3, "weight_decay": 0.01}},
      "scheduler": {"type": "WarmupExpDecay", "params": {
          "total_steps": 6, "warmup_proportion": 0.3, "decay_rate": 0.9, "decay_steps": 2}},
      "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": 0.2}}


def launch(tmp_path: Path, output: Path, max_steps: int, fault: str = "") -> subprocess.CompletedProcess:
    data = tmp_path / "data"
    if not data.exists():
        write_shard_set(data, 2, 64, SEQ, PRED, VOCAB, seed=0, split="train")
    ds_path = tmp_path / "ds.json"
    ds_path.write_text(json.dumps(DS))
    args = {"deepspeed_config": ds_path, "model_config": "bert-tiny", "train_dir": data / "train",
            "output_dir": output, "max_seq_length": SEQ, "max_predictions_per_seq": PRED,
            "max_steps": max_steps, "log_interval": 1, "checkpoint_interval": 2}
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
           "--module", "bing_bert_pld.train"] + [x for k, v in args.items() for x in (f"--{k}", str(v))]
    env = clean_env(DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO), **{FAULT_ENV: fault})
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def losses(output: Path) -> dict[int, float]:
    """The last value logged for each step (a killed launch's steps were trained again)."""
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def weights(tag_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=True)["module"]


def stamps(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_stopped_on_a_checkpoint_step_then_killed_in_the_final_save_resumes_exactly(tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "run"
    done = launch(tmp_path, straight, 6)
    assert_completed(done.returncode, done.stdout + done.stderr, "stopped at step 6 (max_steps)")

    stopped = launch(tmp_path, run, 6, fault="4:USR1,4:KILL")
    log = stopped.stdout + stopped.stderr
    assert_completed(stopped.returncode, log, "stopped at step 4 (signal)")
    root = run / "checkpoints"
    assert f"step 4 is checkpointed already in {root / 'global_step4'}: not saving it again" in log
    assert sorted(p.name for p in root.iterdir()) == ["global_step2", "global_step4", "latest"]
    published = stamps(root / "global_step4")

    killed = launch(tmp_path, run, 6, fault="6:KILL")
    log = killed.stdout + killed.stderr
    assert killed.returncode != 0, log[-3000:]
    assert f"resumed from {root / 'global_step4'} at step 4" in log
    assert (root / "latest").read_text() == "global_step4"
    names = sorted(p.name for p in root.iterdir())
    assert names[0].startswith(".saving-global_step6-") and names[1:] == [
        "global_step2", "global_step4", "latest"], names
    assert stamps(root / "global_step4") == published

    resumed = launch(tmp_path, run, 6)
    log = resumed.stdout + resumed.stderr
    assert_completed(resumed.returncode, log, "stopped at step 6 (max_steps)")
    assert f"resumed from {root / 'global_step4'} at step 4" in log
    assert sorted(p.name for p in root.iterdir()) == ["global_step2", "global_step4",
                                                     "global_step6", "latest"]
    reference, split = losses(straight), losses(run)
    assert sorted(split) == [1, 2, 3, 4, 5, 6]
    assert split == reference  # exact, steps 5 and 6 included
    want, got = weights(straight / "checkpoints" / "global_step6"), weights(root / "global_step6")
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[name], want[name]) for name in want)
