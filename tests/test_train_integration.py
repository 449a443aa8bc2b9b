"""Real multi-process runs: the deepspeed launcher, 2 CPU ranks over gloo, a tiny model.

1. PLD + LAMB: 6 steps uninterrupted vs 3 steps, stop, a new launch resumes to 6: the
   resumed losses equal the uninterrupted ones exactly; TensorBoard holds every scalar.
2. ZeRO stage 2 + Adam + PLD: both ranks drew the same gates and end with identical
   parameters.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from launch_helpers import assert_completed, clean_env, free_port
from shard_factory import write_shard_set

from bing_bert_pld import flops
from bing_bert_pld.config import BertConfig

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "drivers" / "train_and_digest.py"
SEQ, PRED, VOCAB = 32, 5, 512
SCALARS = {"train/loss", "train/mlm_loss", "train/nsp_loss", "train/lr", "train/samples",
           "pld/theta", "pld/expected_active_layers", "pld/active_layers",
           "pld/encoder_flops_skipped_frac", "perf/samples_per_sec", "perf/step_time_s",
           "perf/elapsed_s", "perf/train_time_s", "val/mlm_loss", "val/mlm_acc",
           "val/nsp_acc", "val/nsp_loss", "val/loss"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_shard_set(root, 2, 96, SEQ, PRED, VOCAB, seed=0, split="train")
    write_shard_set(root / "val", 1, 32, SEQ, PRED, VOCAB, seed=1, split="validation")
    return root


def launch(ds_config: dict, output: Path, data: Path, max_steps: int, **extra) -> subprocess.CompletedProcess:
    output.mkdir(parents=True, exist_ok=True)
    ds_path = output.parent / f"{output.name}_ds.json"
    ds_path.write_text(json.dumps(ds_config))
    args = {"deepspeed_config": ds_path, "model_config": "bert-tiny",
            "train_dir": data / "train", "val_dir": data / "val" / "validation",
            "output_dir": output, "max_seq_length": SEQ, "max_predictions_per_seq": PRED,
            "max_steps": max_steps, "log_interval": 1, "val_interval": 3,
            "checkpoint_interval": 3, **extra}
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
           str(DRIVER)] + [item for k, v in args.items() for item in (f"--{k}", str(v))]
    env = clean_env(DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO))
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    finished = all((output / f"rank{r}_digest.json").is_file() for r in range(2))
    assert finished, result.stdout[-4000:] + result.stderr[-4000:]
    assert_completed(result.returncode, result.stdout + result.stderr, "training: world size 2")
    for r in range(2):  # consumed: the next launch of the same run writes them again
        os.rename(output / f"rank{r}_digest.json", output / f"rank{r}_digest_{max_steps}.json")
    return result


def losses(output: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


PLD_LAMB = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2,
            "steps_per_print": 10**6, "gradient_clipping": 1.0,
            "optimizer": {"type": "Lamb", "params": {"lr": 2e-3, "weight_decay": 0.01}},
            "scheduler": {"type": "WarmupExpDecay", "params": {
                "total_steps": 6, "warmup_proportion": 0.3, "decay_rate": 0.9, "decay_steps": 2}},
            "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": 0.2}}


def test_resume_in_a_new_launch_reproduces_the_uninterrupted_run(tmp_path, data):
    launch(PLD_LAMB, tmp_path / "straight", data, max_steps=6)
    launch(PLD_LAMB, tmp_path / "split", data, max_steps=3)
    second = launch(PLD_LAMB, tmp_path / "split", data, max_steps=6)
    assert "resumed from" in second.stdout + second.stderr

    straight, split = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert sorted(straight) == sorted(split) == [1, 2, 3, 4, 5, 6]
    assert [split[s] for s in (4, 5, 6)] == [straight[s] for s in (4, 5, 6)]  # exact
    assert straight[6] < straight[1]

    # gates drawn after the resume continue the uninterrupted sequence
    full = json.loads((tmp_path / "straight" / "rank0_digest_6.json").read_text())["gates"]
    resumed = json.loads((tmp_path / "split" / "rank0_digest_6.json").read_text())["gates"]
    assert resumed == full[6:]  # steps 4-6, 2 micro-batches each

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "straight" / "tensorboard"))
    events.Reload()
    assert SCALARS <= set(events.Tags()["scalars"])
    theta = [e.value for e in events.Scalars("pld/theta")]
    assert theta[0] == 1.0 and all(a > b for a, b in zip(theta, theta[1:]))
    # Each micro-batch that ran k >= 1 blocks cost k - 1 full blocks and one sparse one.
    skipped = events.Scalars("pld/encoder_flops_skipped_frac")[-1].value
    f = flops.forward_flops(BertConfig.from_json("bert-tiny"), SEQ, PRED)
    block, last = f.layer.total, f.last_layer.total
    ran = sum((sum(g) - 1) * block + last for g in full if sum(g))
    assert skipped == pytest.approx(1 - ran / (len(full) * (3 * block + last)), abs=1e-6)


def test_zero2_adam_pld_ranks_agree_on_gates_and_parameters(tmp_path, data):
    config = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2,
              "steps_per_print": 10**6, "zero_optimization": {"stage": 2},
              "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "weight_decay": 0.01}},
              "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": 0.3}}
    launch(config, tmp_path / "zero2", data, max_steps=4, val_interval=100)
    ranks = [json.loads((tmp_path / "zero2" / f"rank{r}_digest_4.json").read_text()) for r in range(2)]
    assert len(ranks[0]["gates"]) == 8
    assert ranks[0]["gates"] == ranks[1]["gates"]
    assert any(not all(g) for g in ranks[0]["gates"])  # some layers were actually dropped
    assert ranks[0]["params"] == ranks[1]["params"]
