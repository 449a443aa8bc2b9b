"""The config check: every shipped DeepSpeed JSON passes it, broken ones fail with a reason."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from deepspeed.runtime.config import DeepSpeedConfig, DeepSpeedConfigError

from bing_bert_pld.config_check import main

REPO = Path(__file__).resolve().parents[1]
DS_CONFIGS = REPO / "ds_configs"
# GLUE fine-tuning configs are read by the GLUE script, which sets total_steps itself.
PRETRAINING_CONFIGS = sorted(p for p in DS_CONFIGS.rglob("*.json")
                             if not p.name.startswith("glue_finetune"))
LEGACY = DS_CONFIGS / "legacy" / "deepspeed_bsz4k_progressive_layer_drop_config_seq128.json"
ARCHITECTURE_KEYS = {"hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "vocab_size", "max_position_embeddings"}


def run_check(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def model_for(path: Path) -> str:
    if "postln" in path.name:
        return "bert-base-postln"
    for name in ("bert_base", "bert_large"):
        if path.name.startswith(name):
            return name.replace("_", "-")
    if path.name.startswith("cpu_small"):
        return "bert-quickstart"
    return "bert-base"


def world_sizes_for(path: Path) -> tuple[int, ...]:
    return (8, 16, 64) if "train_batch_size" in json.loads(path.read_text()) else (1, 2, 8)


def test_there_are_configs_for_every_variant():
    names = {p.name for p in PRETRAINING_CONFIGS}
    for model in ("base", "large"):
        for seq in (128, 512):
            for arm in ("pld", "baseline"):
                for precision in ("fp16", "bf16"):
                    assert f"bert_{model}_seq{seq}_{arm}_{precision}.json" in names
    assert {"cpu_small_pld.json", "cpu_small_baseline.json", LEGACY.name} <= names


# The GPU configs are checked for CUDA; the CPU ones (and the legacy one) for both.
CHECKS = [(path, target) for path in PRETRAINING_CONFIGS for target in ("cuda", "cpu")
          if target == "cuda" or not path.name.startswith("bert_")]


@pytest.mark.parametrize("path, target", CHECKS, ids=lambda v: getattr(v, "name", v))
def test_every_shipped_config_passes(capsys, path, target):
    for world_size in world_sizes_for(path):
        code, out, err = run_check(capsys, "--deepspeed_config", path, "--model_config",
                                   model_for(path), "--world_size", world_size, "--target", target)
        assert code == 0, err
        assert out.startswith("config check passed")
        settings = dict(line.split(None, 1) for line in out.splitlines()[1:])
        assert settings["world_size"] == str(world_size)
        assert settings["target"] == target


@pytest.mark.parametrize("path", PRETRAINING_CONFIGS, ids=lambda p: p.name)
def test_model_architecture_has_one_home(path):
    """DeepSpeed JSONs never set what the model config owns."""
    def keys(value):
        if isinstance(value, dict):
            for key, inner in value.items():
                yield key
                yield from keys(inner)

    assert not ARCHITECTURE_KEYS & set(keys(json.loads(path.read_text())))


def test_effective_settings_are_printed(capsys):
    code, out, _ = run_check(capsys, "--deepspeed_config", DS_CONFIGS / "bert_base_seq128_pld_fp16.json",
                             "--model_config", "bert-base", "--world_size", 16, "--target", "cuda")
    assert code == 0
    settings = dict(line.split(None, 1) for line in out.splitlines()[1:])
    assert settings["train_batch_size"] == "4096"
    assert settings["train_micro_batch_size_per_gpu"] == "64"
    assert settings["gradient_accumulation_steps"] == "4"  # 4096 / (64 x 16)
    assert settings["precision"] == "fp16"
    assert settings["pld"] == "theta_bar=0.5 gamma=0.001"
    assert settings["optimizer"] == "Lamb (DeepSpeed)"
    assert settings["pld_expected_layers_at_theta_bar"] == "8.75"
    assert settings["model"].startswith("12 layers, hidden 768")


def test_cpu_target_builds_lamb_and_adam_as_client_optimizers(capsys):
    code, out, _ = run_check(capsys, "--deepspeed_config", LEGACY, "--model_config", "bert-base",
                             "--world_size", 256, "--target", "cpu")
    assert code == 0
    assert "adamw (client, {'lr': 0.001, 'weight_decay': 0.01, 'bias_correction': False})" in out
    code, out, _ = run_check(capsys, "--deepspeed_config", DS_CONFIGS / "cpu_tiny_pld.json",
                             "--model_config", "bert-tiny", "--world_size", 2, "--target", "cpu")
    assert code == 0
    assert "lamb (client" in out


def _pairs(a: str, b: str):
    for path in DS_CONFIGS.glob(f"bert_*_{a}*.json"):
        yield path, path.with_name(path.name.replace(a, b))


@pytest.mark.parametrize("a, b, differing", [("pld", "baseline", {"progressive_layer_drop"}),
                                             ("fp16", "bf16", {"fp16", "bf16"})])
def test_variants_differ_only_in_their_block(a, b, differing):
    pairs = list(_pairs(a, b))
    assert len(pairs) >= 4
    for left, right in pairs:
        one, other = json.loads(left.read_text()), json.loads(right.read_text())
        for key in differing:
            one.pop(key, None)
            other.pop(key, None)
        assert one == other, (left.name, right.name)
    small = [json.loads((DS_CONFIGS / f"cpu_small_{arm}.json").read_text()) for arm in ("pld", "baseline")]
    small[0].pop("progressive_layer_drop")
    assert small[0] == small[1]


def test_paper_recipe_pair_differs_in_model_lr_and_pld_only():
    """The paper's comparison: Post-LN BERT at its stable lr 1e-4 vs Pre-LN + PLD at 1e-3."""
    for precision in ("fp16", "bf16"):
        post_ln = json.loads((DS_CONFIGS / f"bert_base_seq128_postln_baseline_{precision}.json").read_text())
        pld = json.loads((DS_CONFIGS / f"bert_base_seq128_pld_{precision}.json").read_text())
        assert (post_ln["optimizer"]["params"]["lr"], pld["optimizer"]["params"]["lr"]) == (1e-4, 1e-3)
        assert "progressive_layer_drop" not in post_ln
        pld.pop("progressive_layer_drop")
        pld["optimizer"]["params"]["lr"] = 1e-4
        assert post_ln == pld
    base = json.loads((REPO / "bing_bert_pld/configs/bert-base.json").read_text())
    post = json.loads((REPO / "bing_bert_pld/configs/bert-base-postln.json").read_text())
    assert (base.pop("pre_layer_norm"), post.pop("pre_layer_norm")) == (True, False)
    assert base == post


def test_legacy_config_works_unchanged_and_current_deepspeed_rejects_it_raw(capsys):
    raw = json.loads(LEGACY.read_text())
    assert raw["train_batch_size"] == 4096 and raw["train_micro_batch_size_per_gpu"] == 16
    assert raw["progressive_layer_drop"] == {"enabled": True, "theta": 0.5, "gamma": 0.001}
    with pytest.raises(DeepSpeedConfigError, match="Progressive Layer Dropping has been removed"):
        DeepSpeedConfig(raw)
    code, out, _ = run_check(capsys, "--deepspeed_config", LEGACY, "--model_config", "bert-base",
                             "--world_size", 32, "--target", "cuda")
    assert code == 0
    assert "theta_bar=0.5 gamma=0.001" in out


BASE = json.loads((DS_CONFIGS / "bert_base_seq128_pld_fp16.json").read_text())


@pytest.mark.parametrize("change, world_size, message", [
    ({}, 3, "not divisible by micro batch 64 x world size 3"),
    ({"train_micro_batch_size_per_gpu": 0}, 8, "must be a positive integer"),
    ({"zero_optimization": {"stage": 0, "not_a_zero_key": 1}}, 8, "DeepSpeed rejects the config"),
    ({"optimizer": {"type": "Lamb2", "params": {"lr": 1e-3}}}, 8,
     "optimizer.type 'Lamb2' is not an optimizer DeepSpeed or torch.optim knows (did you mean 'Lamb'?)"),
    ({"scheduler": {"type": "WarmupNothing", "params": {}}}, 8, "unknown scheduler type 'WarmupNothing'"),
    ({"scheduler": {"type": "WarmupExpDecay", "params": {"warmup_proportion": 0.1}}}, 8,
     "missing keys 'total_steps', 'decay_rate', 'decay_steps' in 'scheduler.params' of WarmupExpDecay"),
    ({"progressive_layer_drop": {"enabled": True, "theta": 1.5, "gamma": 0.001}}, 8,
     "theta (theta_bar) must be in (0, 1]"),
    ({"progressive_layer_drop": {"enabled": True, "theta": 0.5, "gama": 0.001}}, 8, "unknown key 'gama' (did you mean 'gamma'?) in 'progressive_layer_drop'"),
    ({"zero_optimization": {"stage": 1}}, 8, "LAMB with zero_optimization.stage 1 is refused"),
    ({"bf16": {"enabled": True}}, 8, "cannot be simultaneously enabled"),
    ({"sparse_attention": {"mode": "fixed"}}, 8, "Sparse Attention has been removed"),
    ({"optimizer": {"type": "Lamb", "params": {"lr": 1e-3, "betas2": [0.9, 0.99]}}}, 8,
     "unknown key 'betas2' (did you mean 'betas'?) in 'optimizer.params' of Lamb"),
])
def test_broken_configs_are_rejected_with_the_reason(capsys, tmp_path, change, world_size, message):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({**BASE, **change}))
    code, out, err = run_check(capsys, "--deepspeed_config", path, "--model_config", "bert-base",
                               "--world_size", world_size, "--target", "cuda")
    assert code == 2
    assert out == ""
    assert err.startswith("error: config check failed: ") and err.count("\n") == 1  # one line
    assert message in err, err


def test_broken_files_and_model_configs(capsys, tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"train_batch_size": 4096,}')
    post_ln = tmp_path / "post_ln.json"
    post_ln.write_text(json.dumps({**json.loads((REPO / "bing_bert_pld/configs/bert-base.json").read_text()),
                                   "pre_layer_norm": False}))
    good = DS_CONFIGS / "bert_base_seq128_pld_fp16.json"
    cases = [
        ((tmp_path / "missing.json", "bert-base"), "does not exist"),
        ((bad_json, "bert-base"), "not valid JSON"),
        ((good, "bert-huge"), "model config 'bert-huge' not found"),
        ((good, post_ln), "PLD is on but"),
    ]
    for (config, model), message in cases:
        code, _, err = run_check(capsys, "--deepspeed_config", config, "--model_config", model,
                                 "--world_size", 8, "--target", "cuda")
        assert code == 2 and message in err, err
    code, _, err = run_check(capsys, "--deepspeed_config", good, "--model_config", "bert-base",
                             "--world_size", 8, "--target", "cuda", "--max_seq_length", 1024)
    assert code == 2 and "--max_seq_length 1024 exceeds the model's max_position_embeddings 512" in err


def test_command_line_exit_codes(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**BASE, "train_micro_batch_size_per_gpu": 48}))
    result = subprocess.run(
        [sys.executable, "-m", "bing_bert_pld.config_check", "--deepspeed_config", str(broken),
         "--model_config", "bert-base", "--world_size", "8", "--target", "cuda"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "error: config check failed:" in result.stderr
    assert "train_batch_size 4096 is not divisible by micro batch 48 x world size 8" in result.stderr
