"""CUDA-only checks: skipped without a GPU (run by benchmarks/gpu_check.sh on one)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bing_bert_pld import pld
from bing_bert_pld.config import BertConfig
from bing_bert_pld.model import BertForPreTraining
from shard_factory import write_shard_set
from test_model import make_batch

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 0.05), (torch.float16, 0.02)])
def test_mixed_precision_forward_backward_with_gates_matches_fp32(dtype, tolerance):
    config = BertConfig.from_json("bert-tiny").replace(hidden_dropout_prob=0.0,
                                                       attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertForPreTraining(config).cuda().train()
    batch = make_batch(config).to("cuda")
    gates = pld.sample_gates(0.5, config.num_hidden_layers, seed=3, step=100, micro_step=0)
    reference = model(batch, layer_gates=gates).loss
    with torch.autocast("cuda", dtype=dtype):
        mixed = model(batch, layer_gates=gates).loss
    mixed.backward()
    assert abs(mixed.item() - reference.item()) < tolerance
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_trainer_on_one_gpu_with_fused_lamb(tmp_path, precision):
    write_shard_set(tmp_path / "data", 2, 64, 32, 5, 512, seed=0, split="train")
    ds = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2,
          "steps_per_print": 10**6, "gradient_clipping": 1.0,
          "optimizer": {"type": "Lamb", "params": {"lr": 1e-3, "weight_decay": 0.01}},
          precision: {"enabled": True},
          "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": 0.1}}
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    cmd = [sys.executable, "-m", "bing_bert_pld.train", "--deepspeed_config", str(tmp_path / "ds.json"),
           "--model_config", "bert-tiny", "--train_dir", str(tmp_path / "data" / "train"),
           "--output_dir", str(tmp_path / "run"), "--max_seq_length", "32",
           "--max_predictions_per_seq", "5", "--max_steps", "6", "--log_interval", "1"]
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    env["DS_ACCELERATOR"] = "cuda"
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    assert len(losses) == 6 and all(0 < loss < 20 for loss in losses)
    assert "DeepSpeed Basic Optimizer = FusedLamb" in result.stdout + result.stderr
