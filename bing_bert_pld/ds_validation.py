"""Check a DeepSpeed JSON as written: every top-level key known, every value we can judge in range.

Runs on the dict as read, before ds_config takes our blocks out and long before an
engine exists, so a typo or a bad number costs one `error:` line naming the file, the
key path, the value and what was expected, instead of a traceback mid-run (a
`decay_steps` of 0 divided by zero when warmup ended) or a silent wrong run (a
misspelled `progresive_layer_drop` trained a baseline).

Known top-level keys are not a hand list: they are the keys DeepSpeed's own config
code looks up. `DeepSpeedConfig` parses two small probe configs through a dict that
records every key read from it, and `deepspeed.initialize`'s own reads of the dict
are taken from its source. Nested keys are DeepSpeed's pydantic models' business
(they reject unknown ones), except in the optimizer and scheduler blocks, which DeepSpeed
reads as plain dicts: their keys are checked here, and so are the values of what this
project reads or builds (Lamb/Adam/AdamW params, LR schedules, precision, batch sizes).
ZeRO-3 with PLD is refused (ZERO3_WITH_PLD says why).
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import textwrap
from collections.abc import KeysView
from typing import Any, Optional

from .lr_schedules import SCHEDULES
from .strict_dict import (BOOL, POSITIVE_INT, ConfigError, Rule, check_value, checked,
                          described_keys, did_you_mean, is_number, show)

# Top-level blocks this project reads itself (and takes out before DeepSpeed sees them).
PROJECT_KEYS = frozenset({"progressive_layer_drop"})

# Optimizers we build or configure ourselves (ds_config.py, engine.py); any other type
# DeepSpeed or torch.optim knows is left to them.
OUR_OPTIMIZERS = {"lamb": "Lamb", "adam": "Adam", "adamw": "AdamW"}

# Ranges of our LR schedules' parameters (lr_schedules.SCHEDULES names them).
# Step counts are integers; a zero decay_steps or total_steps divides by zero.
SCHEDULE_PARAM_RANGES = {
    "total_steps": Rule("integer", low=1),
    "warmup_proportion": Rule(low=0, high=1),
    "decay_rate": Rule(low=0, low_open=True, high=1),
    "decay_steps": Rule("integer", low=1),
    "warmup_degree": Rule(low=0, low_open=True),
    "power": Rule(low=0),  # negative: (1 - progress)^power is 1/0 at the end
    "end_ratio": Rule(low=0, high=1),
}

# DeepSpeed's own schedulers: ranges of their common parameters, checked when written
# as plain numbers (a list, one value per param group, is left to DeepSpeed).
DEEPSPEED_SCHEDULE_PARAM_RANGES = {
    "warmup_min_lr": Rule(low=0), "warmup_max_lr": Rule(low=0),
    "warmup_num_steps": Rule("integer", low=1),  # DeepSpeed: a positive integer
    "total_num_steps": Rule("integer", low=1),
    "warmup_min_ratio": Rule(low=0, high=1), "cos_min_ratio": Rule(low=0, high=1),
    "cycle_min_lr": Rule(low=0), "cycle_max_lr": Rule(low=0), "decay_lr_rate": Rule(low=0),
    "cycle_first_step_size": Rule("integer", low=1),
    "cycle_second_step_size": Rule("integer", low=1),
    "decay_step_size": Rule("integer", low=0),
    "cycle_min_mom": Rule(low=0, high=1), "cycle_max_mom": Rule(low=0, high=1),
    "lr_range_test_min_lr": Rule(low=0), "lr_range_test_step_rate": Rule(low=0),
    "lr_range_test_step_size": Rule("integer", low=1),
}

ZERO3_WITH_PLD = (
    "PLD with zero_optimization.stage 3 is refused: ZeRO-3 updates a parameter that got no "
    "gradient in a step with the values an earlier step left in its gradient buffer (the "
    "buffer is only ever overwritten by a new gradient, never cleared), so every layer PLD "
    "skips is moved anyway; with 2 CPU ranks, bert-tiny under ZeRO-3 drifts from ZeRO-0 from "
    "the first step with a dropped layer, and agrees to 1e-6 without PLD. Use stage 0, 1 or 2 "
    "with PLD")


def validate_deepspeed_dict(values: dict, source: str) -> None:
    """Raise ConfigError for the first problem found in a DeepSpeed JSON as written."""
    _check_finite(values, source, "")
    _check_top_level_keys(values, source)
    for name in ("train_batch_size", "train_micro_batch_size_per_gpu",
                 "gradient_accumulation_steps", "steps_per_print"):
        if name in values:  # steps_per_print 0: DeepSpeed divides by it every step
            check_value(source, name, values[name], POSITIVE_INT)
    if "gradient_clipping" in values:
        check_value(source, "gradient_clipping", values["gradient_clipping"], Rule(low=0))
    if "gradient_predivide_factor" in values:
        check_value(source, "gradient_predivide_factor", values["gradient_predivide_factor"],
                    Rule(low=0, low_open=True))
    _check_precision(values, source)
    _check_optimizer(values.get("optimizer"), source)
    _check_scheduler(values.get("scheduler"), source)
    _check_zero(values, source)


def missing_lr_schedule_warning(setup) -> Optional[str]:
    """The line to warn with when a TrainingSetup (ds_config) has no LR schedule, ours or
    DeepSpeed's, else None."""
    if setup.lr_schedule is not None or "scheduler" in setup.deepspeed:
        return None
    optimizer = setup.original.get("optimizer")  # as written: on CPU ranks it is taken out
    params = optimizer.get("params") if isinstance(optimizer, dict) else None
    lr = f" {params['lr']}" if isinstance(params, dict) and "lr" in params else ""
    return (f"{setup.source}: no LR schedule configured: the optimizer's lr{lr} is used from the "
            "first step, with no warmup and no decay; add a 'scheduler' block, or pass "
            "--lr_schedule bing_bert for bing_bert's warmup and decay")


# ------------------------------------------------------------------ known keys
@functools.cache
def deepspeed_top_level_keys() -> frozenset[str]:
    """Every top-level key DeepSpeed reads, current or removed (see module docstring)."""
    import deepspeed
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.utils import logger as deepspeed_logger

    seen: set[str] = set()
    # The second probe takes the deprecated boolean zero_optimization branch, which
    # reads its settings from the top level.
    probes = ({"train_micro_batch_size_per_gpu": 1},
              {"train_micro_batch_size_per_gpu": 1, "zero_optimization": True})
    level = deepspeed_logger.level
    deepspeed_logger.setLevel("ERROR")  # the probes' own log lines mean nothing to a user
    try:
        for probe in probes:
            DeepSpeedConfig(_RecordingDict(probe, seen))
    finally:
        deepspeed_logger.setLevel(level)
    return frozenset(seen | _keys_read_by(deepspeed.initialize, "config"))


def removed_deepspeed_keys() -> dict[str, str]:
    """Top-level keys DeepSpeed 0.19.8 removed, with its own message for each."""
    from deepspeed.runtime import config

    return dict(getattr(config, "_REMOVED_TOP_LEVEL_CONFIG_KEYS", {}))


class _RecordingDict(dict):
    """A dict that notes each key looked up in it (get, [], in, keys())."""

    def __init__(self, values: dict, seen: set):
        super().__init__(values)
        self.seen = seen  # copy.copy shares it: DeepSpeedConfig parses a copy

    def __contains__(self, key):
        self.seen.add(key)
        return super().__contains__(key)

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def pop(self, key, *default):
        self.seen.add(key)
        return super().pop(key, *default)

    def keys(self):
        return _RecordingKeys(self)


class _RecordingKeys(KeysView):
    def __contains__(self, key):
        return key in self._mapping  # _RecordingDict.__contains__ notes it


def _keys_read_by(function, name: str) -> set[str]:
    """String keys a function looks up in its variable `name`: `"k" in name`,
    `name["k"]`, `name.get("k")`."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))

    def is_name(node) -> bool:
        return isinstance(node, ast.Name) and node.id == name

    def text(node) -> Optional[str]:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(is_name(c) for c in node.comparators):
            keys.add(text(node.left))
        elif isinstance(node, ast.Subscript) and is_name(node.value):
            keys.add(text(node.slice))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "get" and is_name(node.func.value) and node.args):
            keys.add(text(node.args[0]))
    return keys - {None}


def _check_top_level_keys(values: dict, source: str) -> None:
    removed = removed_deepspeed_keys()
    for key in values:
        if key in removed and key not in PROJECT_KEYS:
            raise ConfigError(f"{source}: '{key}': {removed[key].strip()}")
    known = (deepspeed_top_level_keys() - set(removed)) | PROJECT_KEYS
    unknown = [key for key in values if key not in known]
    if unknown:
        import deepspeed

        described = described_keys(unknown, known)
        raise ConfigError(
            f"{source}: unknown top-level key{'s' if len(unknown) > 1 else ''} {described}: "
            f"neither DeepSpeed {deepspeed.__version__} nor bing_bert_pld reads "
            f"{'them' if len(unknown) > 1 else 'it'}")


# ------------------------------------------------------------------ values
def _check_finite(value: Any, source: str, path: str) -> None:
    """Python's json reads NaN, Infinity and -Infinity; none is a usable setting."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {path} is {show(value)}; expected a finite number "
                          "(NaN and Infinity are not JSON numbers)")
    if isinstance(value, dict):
        for key, inner in value.items():
            _check_finite(inner, source, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            _check_finite(inner, source, f"{path}[{index}]")


def _check_precision(values: dict, source: str) -> None:
    enabled = {}
    for name in ("fp16", "bf16", "bfloat16"):  # bfloat16: DeepSpeed's older name for bf16
        if name not in values:
            continue
        block = values[name]
        if not isinstance(block, dict):
            raise ConfigError(f"{source}: {name} must be an object like {{\"enabled\": true}}, "
                              f"got {show(block)}")
        enabled[name] = check_value(source, f"{name}.enabled", block.get("enabled", False), BOOL)
    on = [name for name, flag in enabled.items() if flag]
    if "fp16" in on and len(on) > 1:
        raise ConfigError(f"{source}: fp16.enabled and {on[1]}.enabled are both true; fp16 and "
                          "bf16 cannot be simultaneously enabled: choose one")


def _check_optimizer(block: Any, source: str) -> None:
    if block is None:
        return
    from deepspeed.runtime import constants

    kind, params = _type_and_params(
        block, source, "optimizer", [constants.TYPE, constants.OPTIMIZER_PARAMS, constants.LEGACY_FUSION],
        like='{"type": "Lamb", "params": {"lr": 1e-3}}',
        type_like="an optimizer name such as 'Lamb', 'Adam' or 'AdamW'")
    import torch
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS

    # DeepSpeed matches its own names without case, torch.optim's with.
    if kind.lower() not in DEEPSPEED_OPTIMIZERS and not _is_torch_class(torch.optim, kind,
                                                                       torch.optim.Optimizer):
        # Suggest the usual spelling: 'Lamb' and torch's 'Adagrad' over DeepSpeed's 'lamb'.
        spelled = {name.lower(): name for name in
                   [*DEEPSPEED_OPTIMIZERS, *_torch_classes(torch.optim, torch.optim.Optimizer),
                    *OUR_OPTIMIZERS.values()]}
        raise ConfigError(f"{source}: optimizer.type {kind!r} is not an optimizer DeepSpeed or "
                          f"torch.optim knows{did_you_mean(kind, spelled.values())}")
    if kind.lower() not in OUR_OPTIMIZERS:
        return  # DeepSpeed validates the optimizers we neither build nor configure
    path = "optimizer.params"
    if "lr" in params:
        check_value(source, f"{path}.lr", params["lr"], Rule(low=0, low_open=True))
    if "betas" in params:
        betas = params["betas"]
        if (not isinstance(betas, (list, tuple)) or len(betas) != 2
                or not all(is_number(b) and 0 <= b < 1 for b in betas)):
            raise ConfigError(f"{source}: {path}.betas must be a list of two numbers in [0, 1) "
                              f"like [0.9, 0.999], got {show(betas)}")
    for name in ("eps", "weight_decay", "min_coeff"):
        if name in params:
            check_value(source, f"{path}.{name}", params[name], Rule(low=0))
    if "max_coeff" in params:
        check_value(source, f"{path}.max_coeff", params["max_coeff"], Rule(low=0, low_open=True))
        if is_number(params.get("min_coeff")) and params["min_coeff"] > params["max_coeff"]:
            raise ConfigError(f"{source}: {path}.min_coeff {params['min_coeff']} exceeds "
                              f"{path}.max_coeff {params['max_coeff']}; expected min <= max")
    for name in ("bias_correction", "adam_w_mode", "amsgrad", "torch_adam"):
        if name in params:
            check_value(source, f"{path}.{name}", params[name], BOOL)


def _check_scheduler(block: Any, source: str) -> None:
    if block is None:
        return
    from deepspeed.runtime import constants

    name, params = _type_and_params(
        block, source, "scheduler", [constants.TYPE, constants.SCHEDULER_PARAMS],
        like='{"type": "WarmupExpDecay", "params": {...}}',
        type_like="a scheduler name such as 'WarmupExpDecay'")
    import torch
    from deepspeed.runtime import lr_schedules as deepspeed_schedules

    theirs = list(deepspeed_schedules.VALID_LR_SCHEDULES)
    if name in SCHEDULES:
        ranges = SCHEDULE_PARAM_RANGES
    elif name in theirs:
        ranges = DEEPSPEED_SCHEDULE_PARAM_RANGES
    elif _is_torch_class(torch.optim.lr_scheduler, name, torch.optim.lr_scheduler.LRScheduler):
        return  # DeepSpeed builds torch's schedulers from their own arguments
    else:
        candidates = [*SCHEDULES, *theirs]
        raise ConfigError(f"{source}: unknown scheduler type {name!r}; ours are "
                          f"{sorted(SCHEDULES)}, DeepSpeed's are {theirs}, and torch.optim."
                          f"lr_scheduler's classes{did_you_mean(name, candidates)}")
    for key, value in params.items():
        if key not in ranges:
            continue  # unknown or non-numeric parameters: ds_config / DeepSpeed say so
        if name not in SCHEDULES and (isinstance(value, (list, tuple)) or value is None):
            continue
        check_value(source, f"scheduler.params.{key}", value, ranges[key])


def _type_and_params(block: Any, source: str, path: str, keys: list[str], like: str,
                     type_like: str) -> tuple[str, dict]:
    """The `type` and `params` of a {"type": NAME, "params": {...}} block (optimizer,
    scheduler), once checked. DeepSpeed reads these as plain dicts (no pydantic model refuses
    an extra key): a misspelled "params" would silently mean defaults."""
    checked(block, source, dict.fromkeys(keys), path=path, like=like)
    kind = block.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{source}: {path}.type must be {type_like}, got {show(kind)}")
    params = block.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: {path}.params must be an object, got {show(params)}")
    return kind, params


def _check_zero(values: dict, source: str) -> None:
    block = values.get("zero_optimization")
    if block is None or isinstance(block, bool):  # the bool form: DeepSpeed's deprecated stage 0/1
        return
    if not isinstance(block, dict):
        raise ConfigError(f"{source}: zero_optimization must be an object like "
                          f'{{"stage": 2}}, got {show(block)}')
    stage = block.get("stage", 0)
    if not isinstance(stage, int) or isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise ConfigError(f"{source}: zero_optimization.stage must be 0, 1, 2 or 3, "
                          f"got {show(stage)}")
    pld = values.get("progressive_layer_drop")
    if stage == 3 and isinstance(pld, dict) and pld.get("enabled") is True:
        raise ConfigError(f"{source}: {ZERO3_WITH_PLD}")


# ------------------------------------------------------------------ helpers
def _is_torch_class(module, name: str, base: type) -> bool:
    candidate = getattr(module, name, None)
    return isinstance(candidate, type) and issubclass(candidate, base)


def _torch_classes(module, base: type) -> list[str]:
    return [name for name in dir(module) if _is_torch_class(module, name, base)]
