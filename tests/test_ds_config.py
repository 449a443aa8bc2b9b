"""Reading DeepSpeed JSONs: our blocks out, DeepSpeed's own validation on the rest."""

import json
import math

import pytest
from deepspeed.runtime.config import DeepSpeedConfig, DeepSpeedConfigError

from bing_bert_pld import lr_schedules
from bing_bert_pld.config import ConfigError
from bing_bert_pld.ds_config import (build_training_setup, describe, load_training_setup,
                                     resolve_batch_sizes)

LEGACY = {  # DeepSpeedExamples' PLD config layout with LAMB (the verbatim file: ds_configs/legacy/)
    "train_batch_size": 4096,
    "train_micro_batch_size_per_gpu": 16,
    "steps_per_print": 1000,
    "prescale_gradients": False,
    "optimizer": {"type": "Lamb", "params": {"lr": 1e-3, "weight_decay": 0.01,
                                             "bias_correction": False, "max_coeff": 0.3,
                                             "min_coeff": 0.01}},
    "gradient_clipping": 1.0,
    "wall_clock_breakdown": False,
    "fp16": {"enabled": True, "loss_scale": 0},
    "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": 0.001},
}


def test_current_deepspeed_rejects_the_legacy_block():
    with pytest.raises(DeepSpeedConfigError, match="Progressive Layer Dropping has been removed"):
        DeepSpeedConfig(dict(LEGACY), mpu=None)


def test_legacy_block_configures_our_pld_and_is_removed(tmp_path):
    path = tmp_path / "deepspeed_bsz4k_progressive_layer_drop_config_seq128.json"
    path.write_text(json.dumps(LEGACY))
    setup = load_training_setup(path, cuda_available=True)
    assert (setup.pld.theta_bar, setup.pld.gamma) == (0.5, 0.001)
    assert "progressive_layer_drop" not in setup.deepspeed
    assert setup.deepspeed["optimizer"]["type"] == "Lamb"  # with CUDA DeepSpeed builds FusedLamb
    assert setup.original == LEGACY
    # what DeepSpeed receives passes its own validation
    ds = DeepSpeedConfig(dict(setup.deepspeed, train_batch_size=16), mpu=None)
    assert ds.train_micro_batch_size_per_gpu == 16


def test_disabled_legacy_block_means_pld_off():
    setup = build_training_setup(
        dict(LEGACY, progressive_layer_drop={"enabled": False}), "x.json", True)
    assert setup.pld is None and "progressive_layer_drop" not in setup.deepspeed


def test_lamb_without_cuda_becomes_a_client_optimizer():
    setup = build_training_setup(LEGACY, "x.json", cuda_available=False)
    assert "optimizer" not in setup.deepspeed
    assert setup.client_optimizer.kind == "lamb"
    assert setup.client_optimizer.params["lr"] == 1e-3


@pytest.mark.parametrize("block, message", [
    ({"enabled": True, "theta": 0.0}, r"theta_bar\) must be in \(0, 1\], got 0.0"),
    ({"enabled": True, "theta": 1.2}, r"must be in \(0, 1\], got 1.2"),
    ({"enabled": True, "gamma": -0.01}, r"gamma must be a finite number >= 0, got -0.01"),
    ({"enabled": True, "theta_bar": 0.5}, r"unknown key 'theta_bar' \(did you mean 'theta'\?\) in "
                                          r"'progressive_layer_drop'; it takes \['enabled', 'gamma', 'theta'\]"),
    ({"enabled": "yes"}, r"progressive_layer_drop.enabled must be true or false, got the string 'yes'"),
    ("on", r"must be an object"),
])
def test_bad_pld_blocks_name_file_and_value(block, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_training_setup(dict(LEGACY, progressive_layer_drop=block), "cfg.json", True)
    assert "cfg.json" in str(err.value)


def test_unparsable_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"train_batch_size": 8,')
    with pytest.raises(ConfigError, match=r"broken.json: not valid JSON"):
        load_training_setup(path, cuda_available=False)
    with pytest.raises(ConfigError, match="does not exist"):
        load_training_setup(tmp_path / "absent.json", cuda_available=False)


def test_lamb_with_zero_is_refused_with_the_reason():
    config = dict(LEGACY, zero_optimization={"stage": 2})
    with pytest.raises(ConfigError, match=r"LAMB with zero_optimization.stage 2 is refused.*trust ratio"):
        build_training_setup(config, "x.json", cuda_available=True)


def test_adam_with_zero_on_cpu_is_a_whitelisted_client_optimizer():
    config = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2},
              "optimizer": {"type": "Adam", "params": {"lr": 1e-4, "weight_decay": 0.01}}}
    setup = build_training_setup(config, "x.json", cuda_available=False)
    assert setup.client_optimizer.kind == "adamw"  # DeepSpeed's Adam is AdamW by default
    assert setup.deepspeed["zero_allow_untested_optimizer"] is True


def test_unknown_optimizer_params_are_errors():
    config = dict(LEGACY, optimizer={"type": "Lamb", "params": {"lr": 1e-3, "learning_rate": 1}})
    with pytest.raises(ConfigError, match=r"x.json: unknown key 'learning_rate' in 'optimizer.params' "
                                          r"of Lamb; it needs \['lr'\] and optionally \['betas', "):
        build_training_setup(config, "x.json", cuda_available=False)
    config = dict(LEGACY, optimizer={"type": "Lamb", "params": {"betas": [0.9, 0.99]}})
    with pytest.raises(ConfigError, match=r"x.json: missing key 'lr' in 'optimizer.params' of Lamb"):
        build_training_setup(config, "x.json", cuda_available=False)


def test_our_schedulers_are_taken_out_and_deepspeeds_stay():
    ours = dict(LEGACY, scheduler={"type": "WarmupExpDecay", "params": {
        "warmup_proportion": 0.02, "decay_rate": 0.99, "decay_steps": 1000, "total_steps": 200000}})
    setup = build_training_setup(ours, "x.json", True)
    assert "scheduler" not in setup.deepspeed
    assert setup.lr_schedule.params == {"warmup_proportion": 0.02, "decay_rate": 0.99,
                                        "decay_steps": 1000, "total_steps": 200000,
                                        "warmup_degree": 2.0}
    with pytest.raises(ConfigError, match=r"missing key 'total_steps' in 'scheduler.params' of "
                                          r"WarmupPolyDecay; it needs \['total_steps', 'warmup_proportion'\] "
                                          r"and optionally \['end_ratio', 'power'\]"):
        build_training_setup(dict(LEGACY, scheduler={"type": "WarmupPolyDecay", "params": {
            "warmup_proportion": 0.1}}), "x.json", True)
    theirs = dict(LEGACY, scheduler={"type": "WarmupLR", "params": {"warmup_num_steps": 10}})
    assert build_training_setup(theirs, "x.json", True).deepspeed["scheduler"]["type"] == "WarmupLR"
    with pytest.raises(ConfigError, match=r"missing keys 'decay_rate', 'decay_steps' in 'scheduler.params'"):
        build_training_setup(dict(LEGACY, scheduler={"type": "WarmupExpDecay", "params": {
            "total_steps": 100, "warmup_proportion": 0.1}}), "x.json", True)


def test_warmup_exp_decay_golden_values():
    f = lambda s: lr_schedules.warmup_exp_decay(s, total_steps=200_000, warmup_proportion=0.02,
                                                decay_rate=0.99, decay_steps=1000)
    assert f(0) == 0.0
    assert f(2000) == pytest.approx(0.25)  # (0.5)^2: bing_bert's quadratic warmup
    assert f(4000) == 1.0
    assert f(5000) == pytest.approx(0.99)
    assert f(104_000) == pytest.approx(0.99 ** 100)


def test_warmup_poly_decay_golden_values():
    f = lambda s: lr_schedules.warmup_poly_decay(s, total_steps=1000, warmup_proportion=0.1,
                                                 power=2.0, end_ratio=0.1)
    assert f(50) == 0.5
    assert f(100) == 1.0
    assert f(550) == pytest.approx(0.1 + 0.9 * 0.25)
    assert f(1000) == pytest.approx(0.1) and f(5000) == pytest.approx(0.1)


def test_batch_size_resolution():
    assert resolve_batch_sizes({"train_batch_size": 4096, "train_micro_batch_size_per_gpu": 16}, 64) == {
        "train_batch_size": 4096, "train_micro_batch_size_per_gpu": 16,
        "gradient_accumulation_steps": 4, "world_size": 64}
    with pytest.raises(ConfigError, match="4096 is not divisible by micro batch 48 x world size 8"):
        resolve_batch_sizes({"train_batch_size": 4096, "train_micro_batch_size_per_gpu": 48}, 8)
    with pytest.raises(ConfigError, match=r"64 != train_micro_batch_size_per_gpu 4 x gradient_accumulation_steps 4 x world size 2"):
        resolve_batch_sizes({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4,
                             "gradient_accumulation_steps": 4}, 2)


def test_describe_prints_effective_settings():
    setup = build_training_setup(LEGACY, "x.json", cuda_available=False)
    info = describe(setup, world_size=64)
    assert info["gradient_accumulation_steps"] == 4
    assert info["precision"] == "fp16" and info["pld"] == "theta_bar=0.5 gamma=0.001"
    assert info["optimizer"].startswith("lamb (client")
    assert math.isclose(setup.pld.theta(1000), 0.5 * math.exp(-1) + 0.5)
