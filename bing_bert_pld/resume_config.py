"""What a resumed run may change: its configuration compared with its checkpoint's run_config.json.

Compared: the DeepSpeed dict DeepSpeed received (less logging keys and what is compared
on its own below), the effective optimizer (type and params, whether DeepSpeed or we build
it), the LR schedule, PLD, the model configuration, the resolved batch sizes and world
size, the seed, sequence length and predictions per sequence (the data's, or an older
checkpoint's command line), the training data (shard names and rows, the manifest's sha256) and the vocabulary's sha256. Not compared: what
the command line owns for this launch only (output dir, stopping rule, intervals, loader
threads, validation).

Some differences can never be honoured (`FIXED`): the data position and RNG states are
per rank and per micro batch, the seed decides the data order and the gates, and the
weights fit only a model of the same shape. The others are refused unless the run passes
--allow_config_change; then the trainer applies them (a new optimizer type starts from a
fresh optimizer state; new optimizer and LR values replace the loaded ones) and records
them in trainer_state.json's history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .run.checkpoint import Resumable
from .run.config import sequence_shape
from .ds_config import resolve_batch_sizes

# DeepSpeed keys that change what is logged or profiled, not what is computed.
LOGGING_KEYS = frozenset({"steps_per_print", "wall_clock_breakdown", "dump_state", "memory_breakdown",
                          "tensorboard", "wandb", "csv_monitor", "comet", "flops_profiler",
                          "comms_logger", "timers"})
# Compared in their own sections (resolved batch, effective optimizer, LR schedule), or
# added by us (zero_allow_untested_optimizer follows from the optimizer).
SEPARATE_KEYS = frozenset({"optimizer", "scheduler", "zero_allow_untested_optimizer", "train_batch_size",
                           "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"})
MODEL_SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size", "pre_layer_norm")
FIXED = {
    "batch.world_size": "the data position and RNG states are saved per rank",
    "batch.train_micro_batch_size_per_gpu": "the data position counts micro batches",
    "run.seed": "the data order and the PLD gates follow from the seed",
    "lr_schedule.implementation": "DeepSpeed's and our schedulers save different states",
    "zero_stage": "the optimizer state is stored differently per ZeRO stage",
    "precision": "the optimizer state is stored differently per precision",
    **{f"model.{key}": "the checkpoint's weights fit only a model of the same shape"
       for key in MODEL_SHAPE_KEYS},
}
MAX_LISTED = 20
_ABSENT = "(absent)"


@dataclass(frozen=True)
class Difference:
    path: str
    old: Any
    new: Any

    @property
    def fixed_reason(self) -> Optional[str]:
        return FIXED.get(self.path)

    def __str__(self) -> str:
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    text = value if value is _ABSENT else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def effective_optimizer(setup: dict) -> Optional[dict]:
    """The optimizer that runs, from run_config's deepspeed_setup: the same on CPU (our
    client optimizer) and on CUDA (DeepSpeed's fused one from the JSON block)."""
    client = setup.get("client_optimizer")
    if client:
        return {"type": client["kind"], "params": client["params"]}
    block = setup.get("deepspeed", {}).get("optimizer")
    if not block:
        return None
    kind, params = str(block.get("type", "")).lower(), dict(block.get("params", {}))
    if kind in ("adam", "adamw"):  # DeepSpeed's "Adam" is AdamW unless adam_w_mode is false
        kind = "adam" if kind == "adam" and params.get("adam_w_mode", True) is False else "adamw"
    return {"type": kind, "params": params}


def _lr_schedule(setup: dict) -> Optional[dict]:
    ours = setup.get("lr_schedule")
    if ours:
        return {"implementation": "bing_bert_pld", "type": ours["name"], "params": ours["params"]}
    block = setup.get("deepspeed", {}).get("scheduler")
    if not block:
        return None
    return {"implementation": "deepspeed", "type": block.get("type"), "params": block.get("params", {})}


def view(run_config: dict, trainer_state: Optional[dict] = None) -> dict:
    """The compared part of a run_config.json, as nested dicts. Sections an older
    checkpoint did not record (data, vocabulary) are left out."""
    setup = run_config.get("deepspeed_setup", {})
    ds = setup.get("deepspeed", {})
    run = run_config.get("run", {})
    world = run_config.get("world_size", (trainer_state or {}).get("world_size", 1))
    batch = run_config.get("batch") or resolve_batch_sizes(ds, world)
    result = {
        "deepspeed": {k: v for k, v in ds.items() if k not in LOGGING_KEYS | SEPARATE_KEYS},
        "optimizer": effective_optimizer(setup),
        "lr_schedule": _lr_schedule(setup),
        "zero_stage": int(ds.get("zero_optimization", {}).get("stage", 0)),
        "precision": next((p for p in ("fp16", "bf16") if ds.get(p, {}).get("enabled")), "fp32"),
        "pld": setup.get("pld"),
        "model": run_config.get("model_config", {}),
        "batch": {k: batch[k] for k in ("world_size", "train_micro_batch_size_per_gpu",
                                        "gradient_accumulation_steps", "train_batch_size")},
        "run": {"seed": run.get("seed")},
        "sequence": sequence_shape(run_config),
    }
    if "data" in run_config:  # the shard set; its shape and vocabulary are compared above and below
        result["data"] = {"train": run_config["data"].get("train")}
    if "vocab_sha256" in run_config:
        result["vocab_sha256"] = run_config["vocab_sha256"]
    return result


def differences(old_run_config: dict, old_trainer_state: dict, new_run_config: dict) -> list[Difference]:
    old = view(old_run_config, old_trainer_state)
    new = view(new_run_config)
    for key in ("data", "vocab_sha256"):  # not recorded by older checkpoints: not compared
        if key not in old:
            new.pop(key, None)
    found: list[Difference] = []
    _diff("", old, new, found)
    return found


def _diff(prefix: str, old: Any, new: Any, found: list[Difference]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            _diff(path, old.get(key, _ABSENT), new.get(key, _ABSENT), found)
    elif _normal(old) != _normal(new):
        found.append(Difference(prefix, old, new))


def _normal(value: Any) -> Any:
    # JSON has no tuples: a value read back from run_config.json is a list.
    return json.loads(json.dumps(value, default=str)) if value is not _ABSENT else value


def listing(found: list[Difference], with_reasons: bool = False) -> str:
    shown = [f"{d} ({d.fixed_reason})" if with_reasons else str(d) for d in found[:MAX_LISTED]]
    if len(found) > MAX_LISTED:
        shown.append(f"and {len(found) - MAX_LISTED} more")
    return "; ".join(shown)


@dataclass(frozen=True)
class ResumePlan:
    checkpoint: Resumable
    changes: list[Difference]  # allowed by --allow_config_change, none FIXED

    @property
    def fresh_optimizer(self) -> bool:
        """Another optimizer type cannot take the saved state (LAMB's into AdamW raised
        KeyError: 'step'): it starts fresh, and the LR schedule continues."""
        return any(d.path in ("optimizer", "optimizer.type") for d in self.changes)

    @property
    def changes_optimizer_values(self) -> bool:
        return any(d.path.startswith(("optimizer", "lr_schedule")) for d in self.changes)


def snapshot_hyperparameters(optimizer) -> list[dict]:
    """The freshly built optimizer's per-group values (the new configuration's), taken
    before a checkpoint's state replaces them."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def apply_hyperparameters(engine, fresh: list[dict]) -> None:
    """After loading an optimizer and LR scheduler state saved with other values: the
    new configuration's values (betas, weight decay, ...), its base LR, and the LR its
    schedule gives at the loaded step. torch's load_state_dict would keep the old ones."""
    groups = engine.optimizer.param_groups
    for group, new in zip(groups, fresh):
        group.update({k: v for k, v in new.items() if k not in ("lr", "step")})
    scheduler = engine.lr_scheduler
    if scheduler is None:
        lrs = [new["lr"] for new in fresh]
    elif isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):  # ours (lr_schedules.py)
        scheduler.base_lrs = [new.get("initial_lr", new["lr"]) for new in fresh]
        lrs = [base * factor(scheduler.last_epoch)
               for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    else:  # DeepSpeed's compute the LR from their own parameters and the step
        lrs = scheduler.get_lr()
    for group, lr in zip(groups, lrs):
        group["lr"] = lr
