"""DeepSpeedExamples' own PLD config, byte for byte: accepted, its client's LR schedule
reproduced, its Adam without bias correction honoured on CPU, and a few steps trained."""

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch

from bing_bert_pld import pld, run_options, train
from bing_bert_pld.config import ConfigError
from bing_bert_pld.ds_config import build_training_setup, optimizer_route
from bing_bert_pld.engine import build_client_optimizer
from bing_bert_pld.lr_schedules import warmup_exp_decay
from shard_factory import write_shard_set

REPO = Path(__file__).resolve().parents[1]
LEGACY_DIR = REPO / "ds_configs" / "legacy"
UPSTREAM = LEGACY_DIR / "deepspeed_bsz4k_progressive_layer_drop_config_seq128.json"
# DeepSpeedExamples training/bing_bert/deepspeed_bsz4k_progressive_layer_drop_config_seq128.json
# at 83757d9c937daabd1089a08051061706cb73900d (unchanged since fa1d1a71c486, 2020-11-10).
UPSTREAM_SHA256 = "74013fe0a90b9062f1d938c2606b59e5dce9be0adddc8bf3eff87a3fe2ff59b1"


def test_the_file_is_upstreams_byte_for_byte_as_recorded():
    digest = hashlib.sha256(UPSTREAM.read_bytes()).hexdigest()
    assert digest == UPSTREAM_SHA256
    recorded = re.findall(rf"`{UPSTREAM.name}` \| `training/bing_bert/{UPSTREAM.name}` \| `([0-9a-f]{{64}})`",
                          (LEGACY_DIR / "README.md").read_text())
    assert recorded == [digest]


def upstream_warmup_linear_decay_exp(global_step, decay_rate, decay_steps, total_steps, warmup):
    """DeepSpeedExamples bing_bert pytorch_pretrained_bert/optimization.py, the "LE" schedule."""
    x = global_step / total_steps
    warmup_end = warmup * total_steps
    if warmup == 0.0:
        return 1.0
    elif x < warmup:
        return x / warmup
    return decay_rate ** ((global_step - warmup_end) / decay_steps)


@pytest.mark.parametrize("step", [0, 1, 2000, 3999, 4000, 4001, 5000, 104_000, 199_999])
def test_bing_bert_schedule_is_the_clients(step):
    setup = run_options.load_setup(UPSTREAM, cuda_available=True, lr_schedule="bing_bert")
    assert setup.lr_schedule.name == "WarmupExpDecay"
    ours = warmup_exp_decay(step, **setup.lr_schedule.params)
    theirs = upstream_warmup_linear_decay_exp(step, 0.99, 1000, 200_000, 0.02)
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)
    assert warmup_exp_decay(3000, **setup.lr_schedule.params) == 0.75  # linear: 3000 / 4000


def test_options_are_refused_where_they_would_set_something_twice(tmp_path):
    with_scheduler = tmp_path / "scheduled.json"
    with_scheduler.write_text(json.dumps({**json.loads(UPSTREAM.read_text()), "scheduler": {
        "type": "WarmupLR", "params": {"warmup_num_steps": 10}}}))
    with pytest.raises(ConfigError, match=r"--lr_schedule bing_bert: .*scheduled.json already has a "
                                          r"scheduler block \(WarmupLR\)"):
        run_options.load_setup(with_scheduler, False, lr_schedule="bing_bert")
    with pytest.raises(ConfigError, match="only applies with --lr_schedule bing_bert"):
        run_options.load_setup(UPSTREAM, False, lr_schedule_total_steps=1000)
    with pytest.raises(ConfigError, match="must be a positive integer, got 0"):
        run_options.load_setup(UPSTREAM, False, lr_schedule="bing_bert", lr_schedule_total_steps=0)
    short = run_options.load_setup(UPSTREAM, False, lr_schedule="bing_bert", lr_schedule_total_steps=1000)
    assert warmup_exp_decay(10, **short.lr_schedule.params) == 0.5  # warmup: 2% of 1000 steps


def test_precision_option_replaces_the_precision_block_only():
    raw = json.loads(UPSTREAM.read_text())
    setup = run_options.load_setup(UPSTREAM, False, precision="bf16")
    assert setup.original == raw  # the record keeps the file as written
    assert setup.deepspeed["bf16"] == {"enabled": True} and "fp16" not in setup.deepspeed
    fp32 = run_options.load_setup(UPSTREAM, False, precision="fp32").deepspeed
    assert "fp16" not in fp32 and "bf16" not in fp32
    untouched = {k: v for k, v in raw.items() if k not in ("fp16", "optimizer", "progressive_layer_drop")}
    assert {k: fp32[k] for k in untouched} == untouched
    assert (fp32["prescale_gradients"], fp32["gradient_predivide_factor"]) == (True, 8)


def test_cpu_adam_without_bias_correction_takes_the_uncorrected_step():
    """FusedAdam's bias_correction false on CPU: DeepSpeedCPUAdam, as AdamW (adam_w_mode's
    default). One step from zero moments: m = 0.1 g, v = 0.001 g^2, so the update is
    lr * m / (sqrt(v) + eps) = lr * 0.1 / sqrt(0.001) ~ 3.16 lr, not lr (corrected)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    setup = build_training_setup(json.loads(UPSTREAM.read_text()), "upstream.json", cuda_available=False)
    assert setup.client_optimizer.params["bias_correction"] is False
    assert optimizer_route(setup).startswith("DeepSpeedCPUAdam (client, AdamW, bias_correction false)")
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32)
    optimizer = build_client_optimizer(setup, model)
    assert isinstance(optimizer, DeepSpeedCPUAdam) and optimizer.adam_w_mode
    assert all(group["bias_correction"] is False for group in optimizer.param_groups)
    before = model.weight.detach().double().clone()
    grad = torch.randn(32, 64)
    model.weight.grad, model.bias.grad = grad.clone(), torch.zeros(32)
    optimizer.step()
    lr, wd, g = 1e-3, 0.01, grad.double()
    m, v = 0.1 * g, 0.001 * g * g
    expected = before * (1 - lr * wd) - lr * m / (v.sqrt() + 1e-8)
    assert (model.weight.detach().double() - expected).abs().max().item() < 1e-6
    corrected = before * (1 - lr * wd) - lr * g / (g.abs() + 1e-8)
    assert (model.weight.detach().double() - corrected).abs().min().item() > 1e-3


def test_a_cpu_adam_op_that_cannot_be_built_is_one_clear_error(monkeypatch):
    import deepspeed.ops.adam.cpu_adam as cpu_adam

    def no_compiler(self):
        raise OSError("g++: command not found")

    monkeypatch.setattr(cpu_adam.CPUAdamBuilder, "load", no_compiler)
    setup = build_training_setup(json.loads(UPSTREAM.read_text()), "upstream.json", cuda_available=False)
    with pytest.raises(ConfigError, match=r"bias_correction false on CPU ranks needs DeepSpeed's "
                                          r"cpu_adam op, .*: OSError: g\+\+: command not found"):
        build_client_optimizer(setup, torch.nn.Linear(4, 4))


def test_the_upstream_file_trains_on_cpu_with_its_pld_schedule_and_lr(tmp_path):
    """1 process, bert-tiny: 4096 / 16 = 256 micro-batches a step, 2 steps."""
    write_shard_set(tmp_path / "data", 1, 64, 16, 3, 512, seed=0, split="train")
    args = train.parse_args([
        "--deepspeed_config", str(UPSTREAM), "--model_config", "bert-tiny",
        "--train_dir", str(tmp_path / "data" / "train"), "--output_dir", str(tmp_path / "run"),
        "--max_seq_length", "16", "--max_predictions_per_seq", "3", "--max_steps", "2",
        "--checkpoint_interval", "1000", "--lr_schedule", "bing_bert", "--precision", "bf16"])
    trainer = train.Trainer(args)
    engine = trainer.engine
    assert trainer.plan.setup.original == json.loads(UPSTREAM.read_text())
    assert (trainer.plan.setup.pld.theta_bar, trainer.plan.setup.pld.gamma) == (0.5, 0.001)
    assert (engine.gradient_accumulation_steps(), engine.train_batch_size()) == (256, 4096)
    assert engine.bfloat16_enabled()
    assert (engine.gradient_predivide_factor(), engine.postscale_gradients()) == (8, False)
    assert type(engine.optimizer.optimizer).__name__ == "DeepSpeedCPUAdam"
    thetas, losses = [], []
    threads = torch.get_num_threads()
    # 512 tiny micro-batches: one thread, because two threads on a loaded 2-core machine
    # spin-wait for each other on every small op (measured 1.26 s vs 23 ms a micro-batch).
    torch.set_num_threads(1)
    try:
        for _ in range(2):
            thetas.append(trainer.theta())
            losses.append(trainer.train_step()[0].item())
    finally:
        torch.set_num_threads(threads)
    assert thetas == [1.0, pld.theta_at(1, 0.5, 0.001)]  # theta(k) for the step at k
    assert trainer.pld.stats.total_micro_batches == 512  # every micro-batch took gates
    assert engine.get_lr()[0] == pytest.approx(1e-3 * 2 / 4000, rel=1e-12)  # for step 2
    assert all(math.isfinite(loss) and 0 < loss < 20 for loss in losses)
    trainer.loader.close()


def test_step_convention_differs_from_deepspeed_0_19_7_by_at_most_4_9975e_4():
    """pld.py / README: the step at global_steps == k uses theta(k); DeepSpeed <= 0.19.7
    used theta(k - 1) (theta(0) for k = 0 and 1). Largest gap (1 - theta_bar)(1 - e^-gamma)."""
    differences = [pld.theta_at(k, 0.5, 0.001) - pld.theta_at(max(k - 1, 0), 0.5, 0.001)
                   for k in range(20_000)]
    largest = max(abs(d) for d in differences)
    assert abs(differences[1]) == largest and differences[0] == 0.0
    assert largest == pytest.approx(0.5 * -math.expm1(-0.001), rel=1e-12)
    assert round(largest, 8) == 0.00049975
