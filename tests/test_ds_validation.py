"""A DeepSpeed JSON is checked as written: unknown top-level keys and bad values are one
`error:` line naming the file, the key, the value and what was expected."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from deepspeed.runtime import lr_schedules as deepspeed_schedules
from launch_helpers import clean_env

from bing_bert_pld import config_check, ds_validation
from bing_bert_pld.config import ConfigError
from bing_bert_pld.ds_config import build_training_setup, load_training_setup
from bing_bert_pld.engine import init_distributed
from bing_bert_pld.glue import finetune
from bing_bert_pld.lr_schedules import SCHEDULES

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "ds_configs").rglob("*.json"))

# DeepSpeedExamples bing_bert/deepspeed_bsz4k_progressive_layer_drop_config_seq128.json
# (commit 26e3321), verbatim, and the same file as its PLD tutorial prints it (with the
# progressive_layer_drop block that DeepSpeed then read itself).
UPSTREAM_PLD = {
    "train_batch_size": 4096, "train_micro_batch_size_per_gpu": 16, "steps_per_print": 1000,
    "prescale_gradients": True, "gradient_predivide_factor": 8,
    "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "weight_decay": 0.01,
                                             "bias_correction": False}},
    "gradient_clipping": 1.0, "wall_clock_breakdown": False,
    "fp16": {"enabled": True, "loss_scale": 0},
}
UPSTREAM_PLD_TUTORIAL = {**UPSTREAM_PLD, "progressive_layer_drop": {"enabled": True, "theta": 0.5,
                                                                    "gamma": 0.001}}
# Top-level blocks DeepSpeed 0.19.8 documents and reads.
DEEPSPEED_KEYS = {
    "gradient_predivide_factor", "prescale_gradients", "steps_per_print", "wall_clock_breakdown",
    "fp16", "bf16", "zero_optimization", "optimizer", "scheduler", "gradient_clipping",
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
    "zero_allow_untested_optimizer", "activation_checkpointing", "flops_profiler", "tensorboard",
    "wandb", "csv_monitor", "comms_logger", "data_efficiency", "checkpoint", "aio",
    "communication_data_type", "memory_breakdown", "dataloader_drop_last", "data_types",
    "autotuning", "pipeline", "compile", "tensor_parallel", "torch_autocast",
}
# Keys that exist only inside blocks: a known set holding them would accept typos' targets.
NESTED_ONLY = {"stage", "loss_scale_window", "enabled", "params", "type", "lr", "theta",
               "offload_optimizer", "reduce_bucket_size", "initial_scale_power", "warmup_num_steps"}

GOOD = {"train_micro_batch_size_per_gpu": 8, "gradient_clipping": 1.0,
        "optimizer": {"type": "Lamb", "params": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-6,
                                                 "weight_decay": 0.01}},
        "scheduler": {"type": "WarmupExpDecay", "params": {
            "total_steps": 1000, "warmup_proportion": 0.02, "decay_rate": 0.99, "decay_steps": 100}}}


def with_optimizer(**params):
    return {**GOOD, "optimizer": {"type": "Lamb", "params": {"lr": 1e-3, **params}}}


def with_schedule(name="WarmupExpDecay", **params):
    base = GOOD["scheduler"]["params"] if name == "WarmupExpDecay" else {}
    return {**GOOD, "scheduler": {"type": name, "params": {**base, **params}}}


def rejected(values: dict) -> str:
    with pytest.raises(ConfigError) as err:
        build_training_setup(values, "cfg.json", cuda_available=False)
    message = str(err.value)
    assert message.startswith("cfg.json: ") and "\n" not in message
    return message


# ------------------------------------------------------------------ known keys
def test_known_keys_come_from_deepspeeds_config_code_and_only_the_top_level():
    known = ds_validation.deepspeed_top_level_keys()
    assert DEEPSPEED_KEYS <= known
    assert not NESTED_ONLY & known
    assert 40 < len(known) < 100  # everything DeepSpeedConfig reads, nothing more
    # deepspeed.initialize reads these itself, before DeepSpeedConfig exists
    assert {"sequence_parallel_size", "data_parallel_size"} <= known


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_has_only_known_keys(path):
    values = json.loads(path.read_text())
    values.pop(finetune.GLUE_KEY, None)  # the fine-tuning script's block, taken out before
    ds_validation.validate_deepspeed_dict(values, str(path))


@pytest.mark.parametrize("values", [UPSTREAM_PLD, UPSTREAM_PLD_TUTORIAL], ids=["file", "tutorial"])
def test_upstream_pld_configs_are_accepted(values):
    ds_validation.validate_deepspeed_dict(values, "upstream.json")


@pytest.mark.parametrize("key, suggestion", [
    ("progresive_layer_drop", "progressive_layer_drop"),
    ("schedular", "scheduler"),
    ("gradient_cliping", "gradient_clipping"),
    ("zero_optimisation", "zero_optimization"),
])
def test_misspelled_top_level_key_names_file_key_and_the_likely_one(key, suggestion):
    message = rejected({**GOOD, key: {}})
    assert (f"cfg.json: unknown top-level key {key!r} (did you mean {suggestion!r}?): "
            "neither DeepSpeed 0.19.8 nor bing_bert_pld reads it") == message


def test_several_unknown_keys_in_one_line_and_no_guess_for_nonsense():
    message = rejected({**GOOD, "schedular": {}, "zzzz_qqq": 1})
    assert "keys 'schedular' (did you mean 'scheduler'?), 'zzzz_qqq': neither" in message


@pytest.mark.parametrize("key, phrase", [("elasticity", "Elastic training has been removed"),
                                         ("compression_training", "removed"),
                                         ("sparse_attention", "Sparse Attention has been removed")])
def test_blocks_deepspeed_removed_get_deepspeeds_reason(key, phrase):
    message = rejected({**GOOD, key: {}})
    assert message.startswith(f"cfg.json: '{key}': ") and phrase in message


# ------------------------------------------------------------------ values
@pytest.mark.parametrize("values, message", [
    (with_optimizer(lr=float("nan")), "optimizer.params.lr is NaN; expected a finite number"),
    (with_optimizer(lr=float("inf")), "optimizer.params.lr is Infinity; expected a finite number"),
    (with_optimizer(lr=-1e-3), "optimizer.params.lr must be a positive number, got -0.001"),
    (with_optimizer(lr=0), "optimizer.params.lr must be a positive number, got 0"),
    (with_optimizer(lr="1e-3"), "optimizer.params.lr must be a positive number, got the string '1e-3'"),
    (with_optimizer(lr=True), "optimizer.params.lr must be a positive number, got true"),
    (with_optimizer(betas=[0.9]), "optimizer.params.betas must be a list of two numbers in [0, 1) "
                                  "like [0.9, 0.999], got [0.9]"),
    (with_optimizer(betas=[0.9, 1.0]), "got [0.9, 1.0]"),
    (with_optimizer(betas=["0.9", 0.99]), "got ['0.9', 0.99]"),
    (with_optimizer(eps=-1e-8), "optimizer.params.eps must be a number >= 0, got -1e-08"),
    (with_optimizer(eps="tiny"), "optimizer.params.eps must be a number >= 0, got the string 'tiny'"),
    (with_optimizer(weight_decay=-0.01), "optimizer.params.weight_decay must be a number >= 0, got -0.01"),
    (with_optimizer(bias_correction="false"), "optimizer.params.bias_correction must be true or false"),
    (with_optimizer(max_coeff=0.3, min_coeff=0.5), "min_coeff 0.5 exceeds optimizer.params.max_coeff 0.3"),
    ({**GOOD, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [1.2, 0.9]}}},
     "optimizer.params.betas must be a list of two numbers in [0, 1)"),
    ({**GOOD, "optimizer": {"type": "Lambb", "params": {"lr": 1e-3}}},
     "optimizer.type 'Lambb' is not an optimizer DeepSpeed or torch.optim knows (did you mean 'Lamb'?)"),
    ({**GOOD, "optimizer": {"type": "AdamWW", "params": {"lr": 1e-3}}}, "(did you mean 'AdamW'?)"),
    ({**GOOD, "optimizer": {"params": {"lr": 1e-3}}}, "optimizer.type must be an optimizer name"),
    ({**GOOD, "optimizer": "Lamb"}, "optimizer must be an object"),
    ({**GOOD, "optimizer": {"type": "Adam", "param": {"lr": 1e-3}}},
     "unknown key 'param' (did you mean 'params'?) in 'optimizer'; it takes ['legacy_fusion', "
     "'params', 'type']"),
    ({**GOOD, "scheduler": {"type": "WarmupLR", "parms": {"warmup_num_steps": 10}}},
     "unknown key 'parms' (did you mean 'params'?) in 'scheduler'; it takes ['params', 'type']"),
    (with_schedule(total_steps="1000"), "scheduler.params.total_steps must be a positive integer, "
                                        "got the string '1000'"),
    (with_schedule(total_steps=0), "scheduler.params.total_steps must be a positive integer, got 0"),
    (with_schedule(decay_steps=0), "scheduler.params.decay_steps must be a positive integer, got 0"),
    (with_schedule(warmup_proportion=1.5), "scheduler.params.warmup_proportion must be a number in "
                                           "[0, 1], got 1.5"),
    (with_schedule(warmup_proportion=-0.1), "got -0.1"),
    (with_schedule(decay_rate=0), "scheduler.params.decay_rate must be a number in (0, 1], got 0"),
    (with_schedule(decay_rate=1.01), "scheduler.params.decay_rate must be a number in (0, 1], got 1.01"),
    (with_schedule(warmup_degree=0), "scheduler.params.warmup_degree must be a positive number, got 0"),
    (with_schedule("WarmupPolyDecay", total_steps=10, warmup_proportion=0.1, power=-1),
     "scheduler.params.power must be a number >= 0, got -1"),
    (with_schedule("WarmupPolyDecay", total_steps=10, warmup_proportion=0.1, end_ratio=2),
     "scheduler.params.end_ratio must be a number in [0, 1], got 2"),
    (with_schedule("WarmupLR", warmup_num_steps="100"),
     "scheduler.params.warmup_num_steps must be a positive integer, got the string '100'"),
    (with_schedule("WarmupLR", warmup_max_lr=-1.0), "scheduler.params.warmup_max_lr must be a number >= 0"),
    (with_schedule("WarmupDecayLR", total_num_steps=0, warmup_num_steps=10),
     "scheduler.params.total_num_steps must be a positive integer, got 0"),
    (with_schedule("WarmupCosineLR", total_num_steps=100, cos_min_ratio=1.5),
     "scheduler.params.cos_min_ratio must be a number in [0, 1], got 1.5"),
    (with_schedule("OneCycle", cycle_min_lr=1e-4, cycle_max_lr=1e-3, cycle_first_step_size=0),
     "scheduler.params.cycle_first_step_size must be a positive integer, got 0"),
    (with_schedule("WarmupExpDecey"), "unknown scheduler type 'WarmupExpDecey'; ours are "
                                      "['WarmupExpDecay', 'WarmupPolyDecay']"),
    (with_schedule("WarmupExpDecey"), "(did you mean 'WarmupExpDecay'?)"),
    ({**GOOD, "gradient_clipping": -1.0}, "gradient_clipping must be a number >= 0, got -1.0"),
    ({**GOOD, "gradient_clipping": "1.0"}, "gradient_clipping must be a number >= 0, got the string '1.0'"),
    ({**GOOD, "fp16": {"enabled": True}, "bf16": {"enabled": True}},
     "fp16.enabled and bf16.enabled are both true; fp16 and bf16 cannot be simultaneously enabled"),
    ({**GOOD, "fp16": {"enabled": True}, "bfloat16": {"enabled": True}}, "bfloat16.enabled are both true"),
    ({**GOOD, "bf16": {"enabled": "false"}}, "bf16.enabled must be true or false, got the string 'false'"),
    ({**GOOD, "bf16": True}, "bf16 must be an object like"),
    ({**GOOD, "train_batch_size": "4096"},
     "train_batch_size must be a positive integer, got the string '4096'"),
    ({**GOOD, "train_micro_batch_size_per_gpu": 0},
     "train_micro_batch_size_per_gpu must be a positive integer, got 0"),
    ({**GOOD, "gradient_accumulation_steps": 2.5},
     "gradient_accumulation_steps must be a positive integer, got 2.5"),
    ({**GOOD, "steps_per_print": 0}, "steps_per_print must be a positive integer, got 0"),
    ({**GOOD, "gradient_predivide_factor": 0}, "gradient_predivide_factor must be a positive number, got 0"),
    ({**GOOD, "fp16": {"enabled": True, "loss_scale_window": float("nan")}},
     "fp16.loss_scale_window is NaN; expected a finite number"),
    ({**GOOD, "zero_optimization": {"stage": "2"}}, "zero_optimization.stage must be 0, 1, 2 or 3, "
                                                   "got the string '2'"),
])
def test_bad_values_name_file_key_value_and_expectation(values, message):
    assert message in rejected(values)


def test_values_of_optimizers_we_do_not_build_are_left_to_deepspeed():
    # Lion's betas mean something else than Adam's; DeepSpeed judges its own optimizers.
    values = {**GOOD, "optimizer": {"type": "Lion", "params": {"lr": 1e-4, "betas": [0.9, 1.5]}}}
    ds_validation.validate_deepspeed_dict(values, "cfg.json")


@pytest.mark.parametrize("literal, shown", [("NaN", "NaN"), ("Infinity", "Infinity"),
                                            ("-Infinity", "-Infinity")])
def test_nan_and_infinity_literals_in_the_file_are_caught(tmp_path, literal, shown):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(GOOD).replace('"gradient_clipping": 1.0',
                                             f'"gradient_clipping": {literal}'))
    with pytest.raises(ConfigError, match=rf"cfg.json: gradient_clipping is {shown}; expected "
                                          r"a finite number \(NaN and Infinity are not JSON"):
        load_training_setup(path, cuda_available=False)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps(GOOD).replace('"lr": 0.001', f'"lr": {literal}'))
    with pytest.raises(ConfigError, match=rf"optimizer.params.lr is {shown}"):
        load_training_setup(nested, cuda_available=False)


def test_duplicate_keys_in_the_file_are_an_error(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text('{"train_micro_batch_size_per_gpu": 8, "optimizer": {"type": "Lamb", '
                    '"params": {"lr": 1e-3, "lr": 1e-2}}}')
    with pytest.raises(ConfigError, match=r"cfg.json: key 'lr' appears twice in one object"):
        load_training_setup(path, cuda_available=False)


def test_range_tables_match_the_schedules_they_describe():
    ours = {name for _, required, optional in SCHEDULES.values() for name in (*required, *optional)}
    assert set(ds_validation.SCHEDULE_PARAM_RANGES) == ours
    theirs = {name for cls in deepspeed_schedules.VALID_LR_SCHEDULES
              for name in inspect.signature(getattr(deepspeed_schedules, cls)).parameters}
    assert set(ds_validation.DEEPSPEED_SCHEDULE_PARAM_RANGES) <= theirs


# ------------------------------------------------------------------ ZeRO-3 with PLD
def test_zero3_with_pld_is_refused_with_the_reason():
    adam = {**GOOD, "optimizer": {"type": "Adam", "params": {"lr": 1e-3}}, "zero_optimization": {"stage": 3}}
    message = rejected({**adam, "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": 0.001}})
    assert "PLD with zero_optimization.stage 3 is refused" in message
    assert "updates a parameter that got no gradient in a step" in message
    build_training_setup(adam, "cfg.json", cuda_available=False)  # ZeRO-3 alone is fine
    build_training_setup({**adam, "progressive_layer_drop": {"enabled": False}}, "cfg.json", False)
    build_training_setup({**adam, "zero_optimization": {"stage": 2},
                          "progressive_layer_drop": {"enabled": True}}, "cfg.json", False)


class _TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x, use_b: bool):
        h = self.a(x)
        return (self.b(h) if use_b else h).square().mean()


@pytest.mark.parametrize("stage, moved", [(2, False), (3, True)])
def test_the_zero3_defect_behind_the_refusal(stage, moved):
    """A layer skipped in a step (as PLD skips one) must not move; under ZeRO-3 it does.
    When this starts failing for stage 3, DeepSpeed fixed it: lift ZERO3_WITH_PLD."""
    import deepspeed

    init_distributed()
    torch.manual_seed(0)
    model = _TwoLayers()
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
                "zero_allow_untested_optimizer": True, "steps_per_print": 10**6})
    weight = engine.module.b.weight

    def b_now():  # this rank's partition under ZeRO-3 (the whole tensor on one rank)
        return getattr(weight, "ds_tensor", weight).detach().clone().flatten()

    changes = []
    for use_b in (True, False, False):  # b runs in the first step only
        before = b_now()
        engine.backward(engine(torch.ones(1, 4), use_b=use_b))
        engine.step()
        changes.append(float((b_now() - before).abs().max()))
    assert changes[0] > 0.01
    assert (min(changes[1:]) > 0.01) if moved else changes[1:] == [0.0, 0.0], changes


# ------------------------------------------------------------------ entry points
def test_config_check_warns_once_without_an_lr_schedule(capsys, tmp_path):
    path = tmp_path / "no_schedule.json"
    path.write_text(json.dumps({key: value for key, value in GOOD.items() if key != "scheduler"}))
    common = ["--deepspeed_config", str(path), "--model_config", "bert-tiny", "--target", "cpu"]
    assert config_check.main(common) == 0
    err = capsys.readouterr().err
    assert err == (f"warning: {path}: no LR schedule configured: the optimizer's lr 0.001 is used "
                   "from the first step, with no warmup and no decay; add a 'scheduler' block, or "
                   "pass --lr_schedule bing_bert for bing_bert's warmup and decay\n")
    assert config_check.main([*common, "--lr_schedule", "bing_bert"]) == 0
    assert capsys.readouterr().err == ""
    path.write_text(json.dumps(GOOD))
    assert config_check.main(common) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("module, extra", [
    ("bing_bert_pld.train", ["--model_config", "bert-tiny", "--train_dir", "nowhere",
                             "--output_dir", "out", "--max_steps", "1"]),
    ("bing_bert_pld.config_check", ["--model_config", "bert-tiny"]),
    # fine-tuning checks its task files and --init first (cheapest first): give it both
    ("bing_bert_pld.glue.finetune", ["--task", "RTE", "--data_dir", "glue", "--init", "init",
                                     "--output_dir", "out"]),
])
def test_entry_points_print_one_error_line_and_exit_2(tmp_path, module, extra):
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    for split in ("train", "dev"):
        (tmp_path / "glue" / "RTE" / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    (tmp_path / "init").mkdir()
    path = tmp_path / "typo.json"
    # no scheduler block: fine-tuning refuses one with total_steps, after the key check
    typo = {key: value for key, value in GOOD.items() if key != "scheduler"}
    path.write_text(json.dumps({**typo, "progresive_layer_drop": {"enabled": True}}))
    result = subprocess.run([sys.executable, "-m", module, "--deepspeed_config", str(path), *extra],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env=clean_env(DS_ACCELERATOR="cpu"))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{path}: unknown top-level key 'progresive_layer_drop' (did you mean " \
           "'progressive_layer_drop'?)" in errors[0]
    assert not (tmp_path / "out").exists()
