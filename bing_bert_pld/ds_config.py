"""Read a DeepSpeed JSON, take out the blocks that are ours, hand DeepSpeed the rest.

DeepSpeed 0.19.8 removed Progressive Layer Dropping and rejects any config holding
`progressive_layer_drop`. Configs written for the old DeepSpeed PLD keep working: this
module reads that block into our schedule and removes it before DeepSpeed sees the dict.

Ownership rule: the DeepSpeed JSON owns batch sizes, precision, optimizer, LR
schedule, ZeRO and PLD; the model JSON owns the architecture; the command line owns
the run (data, output, stopping, intervals). Values DeepSpeed owns are read back from
the engine after initialization, never copied into the trainer's arguments.

Two further blocks may be ours:
- `scheduler` with type WarmupExpDecay or WarmupPolyDecay (bing_bert's schedules,
  which DeepSpeed does not have): built as a client LR scheduler.
- `optimizer` with type Lamb / Adam / AdamW, where DeepSpeed's own choice would not do:
  without CUDA (its fused kernels are CUDA-only) we build pytorch_optimizer's LAMB or
  torch's fused CPU Adam(W) from the same params; with CUDA and bf16 we build DeepSpeed's
  FusedLamb ourselves, because DeepSpeed's own LAMB route hands bf16 gradients to a
  kernel that takes only half/float/double (see `optimizer_route` for every route).
  Otherwise on CUDA the block stays and DeepSpeed builds FusedLamb / FusedAdam.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import ConfigError, read_json_object
from .ds_validation import validate_deepspeed_dict
from .lr_schedules import SCHEDULES
from .pld import PLDConfigError, PLDSchedule
from .strict_dict import BOOL, POSITIVE_INT, check_value, checked

PLD_KEY = "progressive_layer_drop"
# theta and gamma: PLDSchedule judges them
PLD_RULES = {"enabled": BOOL, "theta": None, "gamma": None}

LAMB_PARAMS = {"lr", "betas", "eps", "weight_decay", "max_coeff", "min_coeff", "bias_correction"}
# bias_correction: FusedAdam's parameter (DeepSpeedExamples' PLD config sets it false).
ADAM_PARAMS = {"lr", "betas", "eps", "weight_decay", "adam_w_mode", "amsgrad", "torch_adam",
               "bias_correction"}


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer we build ourselves (client optimizer), from the JSON's params."""

    kind: str  # "lamb" | "adamw" | "adam"
    params: dict
    # "library": pytorch_optimizer.Lamb / torch.optim.Adam(W), per tensor, any device;
    # "fused": DeepSpeed's FusedLamb (CUDA), the bf16 route.
    backend: str = "library"


@dataclass(frozen=True)
class LRScheduleSpec:
    name: str
    params: dict


@dataclass
class TrainingSetup:
    source: str
    deepspeed: dict  # exactly what deepspeed.initialize receives
    pld: Optional[PLDSchedule]  # None: PLD off
    lr_schedule: Optional[LRScheduleSpec] = None
    client_optimizer: Optional[OptimizerSpec] = None
    original: dict = field(default_factory=dict)  # the file as written, for the record
    cuda: bool = False  # built for CUDA ranks (DeepSpeed's fused ops) or for CPU ranks
    optimizer_fallback: Optional[str] = None  # why the fused op was replaced, if it was

    @property
    def zero_stage(self) -> int:
        return int(self.deepspeed.get("zero_optimization", {}).get("stage", 0))

    def use_library_optimizer(self, reason: str) -> None:
        """The fused op this setup needs cannot be built here: build the same optimizer from
        the same params with the per-tensor library instead (as on CPU ranks). Changes this
        setup, so that what is saved with the run names the optimizer that really ran."""
        block = self.deepspeed.get("optimizer")
        if block is not None:
            self.deepspeed = {k: v for k, v in self.deepspeed.items() if k != "optimizer"}
            self.client_optimizer = _library_spec(str(block.get("type", "")).lower(),
                                                  dict(block.get("params", {})))
        else:
            self.client_optimizer = dataclasses.replace(self.client_optimizer, backend="library")
        if self.zero_stage > 0:
            self.deepspeed["zero_allow_untested_optimizer"] = True
        self.optimizer_fallback = reason

    def summary(self) -> dict:
        return {
            "source": self.source,
            "deepspeed": self.deepspeed,
            "pld": None if self.pld is None else {"theta": self.pld.theta_bar,
                                                  "gamma": self.pld.gamma},
            "lr_schedule": None if self.lr_schedule is None else vars(self.lr_schedule),
            "client_optimizer": None if self.client_optimizer is None
            else vars(self.client_optimizer),
            "optimizer_route": optimizer_route(self),
        }


def read_json(path: str | Path) -> dict:
    return read_json_object(path, "DeepSpeed config")


def load_training_setup(path: str | Path, cuda_available: bool) -> TrainingSetup:
    return build_training_setup(read_json(path), str(path), cuda_available)


def build_training_setup(values: dict, source: str, cuda_available: bool) -> TrainingSetup:
    validate_deepspeed_dict(values, source)  # keys and values as written, before anything is taken out
    ds = copy.deepcopy(values)
    pld = _take_pld_block(ds, source)
    lr_schedule = _take_lr_schedule(ds, source)
    client_optimizer = _take_client_optimizer(ds, source, cuda_available)
    setup = TrainingSetup(source=source, deepspeed=ds, pld=pld, lr_schedule=lr_schedule,
                          client_optimizer=client_optimizer, original=values, cuda=cuda_available)
    _check_lamb_with_zero(values, setup)
    if client_optimizer is not None and setup.zero_stage > 0:
        # DeepSpeed only whitelists its own optimizers under ZeRO; ours is torch AdamW.
        ds["zero_allow_untested_optimizer"] = True
    return setup


def _take_pld_block(ds: dict, source: str) -> Optional[PLDSchedule]:
    block = ds.pop(PLD_KEY, None)
    if block is None:
        return None
    block = checked(block, source, PLD_RULES, path=PLD_KEY,
                    like='{"enabled": true, "theta": 0.5, "gamma": 0.001}')
    try:
        schedule = PLDSchedule(theta_bar=block.get("theta", 0.5), gamma=block.get("gamma", 0.001))
    except PLDConfigError as err:
        raise ConfigError(f"{source}: '{PLD_KEY}': {err}") from None
    return schedule if block.get("enabled", False) else None


def _take_lr_schedule(ds: dict, source: str) -> Optional[LRScheduleSpec]:
    block = ds.get("scheduler")
    if not isinstance(block, dict) or block.get("type") not in SCHEDULES:
        return None  # absent, or one of DeepSpeed's own schedulers
    del ds["scheduler"]
    name = block["type"]
    _, required, optional = SCHEDULES[name]
    # the values' ranges: ds_validation.SCHEDULE_PARAM_RANGES, checked before
    params = checked(block.get("params", {}), source, dict.fromkeys([*required, *optional]),
                     path="scheduler.params", required=required,
                     what=f"'scheduler.params' of {name}")
    return LRScheduleSpec(name=name, params={**optional, **params})


def _take_client_optimizer(ds: dict, source: str, cuda_available: bool) -> Optional[OptimizerSpec]:
    """Which optimizer we build ourselves; the routes are spelled out in `optimizer_route`."""
    block = ds.get("optimizer")
    if block is None:
        return None
    kind = str(block.get("type", "")).lower()
    params = dict(block.get("params", {}))
    allowed = {"lamb": LAMB_PARAMS, "adam": ADAM_PARAMS, "adamw": ADAM_PARAMS}.get(kind)
    if allowed is None:
        return None  # another DeepSpeed optimizer: DeepSpeed validates it
    if "max_grad_norm" in params:
        # DeepSpeed refuses it for its own optimizers; FusedLamb built by us would fail on
        # its first step (it needs per-tensor norms nobody passes); pytorch_optimizer would
        # ignore it. Clipping has one home.
        raise ConfigError(f"{source}: optimizer {block['type']}: params.max_grad_norm is not "
                          "applied; clip with the top-level \"gradient_clipping\" instead")
    # the values: ds_validation checked them
    checked(params, source, dict.fromkeys(allowed), path="optimizer.params", required=["lr"],
            what=f"'optimizer.params' of {block['type']}")
    precision = precision_of(ds)
    if kind == "lamb":
        _check_lamb_precision(ds, source, precision, cuda_available)
    if cuda_available:
        if kind == "lamb" and precision == "bf16":
            # DeepSpeed's own LAMB route (FP16_UnfusedOptimizer with fused_lamb_legacy)
            # would hand the bf16 gradients to FusedLamb's kernel, which dispatches only
            # half/float/double. Built by us, FusedLamb is no longer named in the config,
            # so the same wrapper copies the gradients to fp32 first (its generic path).
            del ds["optimizer"]
            return OptimizerSpec("lamb", params, backend="fused")
        return None  # DeepSpeed's fused kernels (FusedLamb / FusedAdam)
    del ds["optimizer"]
    return _library_spec(kind, params)


def _library_spec(kind: str, params: dict) -> OptimizerSpec:
    if kind == "adam" and not params.get("adam_w_mode", True):
        return OptimizerSpec("adam", params)
    return OptimizerSpec("lamb" if kind == "lamb" else "adamw", params)


def precision_of(ds: dict) -> str:
    """"fp16", "bf16" or "fp32", as DeepSpeed reads the blocks ("bfloat16" is its old name)."""
    if ds.get("fp16", {}).get("enabled"):
        return "fp16"
    if ds.get("bf16", ds.get("bfloat16", {})).get("enabled"):
        return "bf16"
    return "fp32"


def _check_lamb_precision(ds: dict, source: str, precision: str, cuda_available: bool) -> None:
    """What DeepSpeed 0.19.8 would refuse only inside deepspeed.initialize."""
    if cuda_available and precision == "fp16" and ds["fp16"].get("loss_scale", 0) != 0:
        raise ConfigError(f"{source}: fp16 with LAMB needs dynamic loss scaling: set fp16.loss_scale "
                          f"to 0 (got {ds['fp16']['loss_scale']}); DeepSpeed's LAMB route asserts it")
    accumulation = ds.get("data_types", {}).get("grad_accum_dtype")
    names = {"fp16": {"fp16", "float16", "half", "torch.float16"},
             "bf16": {"bf16", "bfloat16", "torch.bfloat16"}}
    if precision in names and accumulation is not None and accumulation not in names[precision]:
        raise ConfigError(
            f"{source}: data_types.grad_accum_dtype {accumulation!r} with {precision} and LAMB: at "
            f"ZeRO stage 0 DeepSpeed accumulates gradients in the model's dtype ({precision}) and "
            "refuses any other; its fp32-accumulating bf16 wrapper (ZeRO 1) flattens the "
            "parameters, which would leave LAMB one trust ratio for all layers. Remove the key")


def fused_op_needed(setup: TrainingSetup) -> Optional[str]:
    """The DeepSpeed op (fused_ops.OPS) the setup's optimizer JIT-builds, if any."""
    spec = setup.client_optimizer
    if spec is not None:
        return "FusedLamb" if spec.backend == "fused" else None
    block = setup.deepspeed.get("optimizer")
    if not setup.cuda or block is None:
        return None
    kind = str(block.get("type", "")).lower()
    if kind == "lamb":
        return "FusedLamb"
    offload = setup.deepspeed.get("zero_optimization", {}).get("offload_optimizer") or {}
    if kind in ("adam", "adamw") and not block.get("params", {}).get("torch_adam") \
            and offload.get("device", "none") == "none":
        return "FusedAdam"
    return None


def optimizer_route(setup: TrainingSetup) -> str:
    """The optimizer and the DeepSpeed wrapper around it, as deepspeed.initialize will pick
    them (engine.py `_do_optimizer_sanity_check`, `_configure_fp16_optimizer`); tested
    against the real engine in tests/test_optimizer_route.py."""
    ds, spec = setup.deepspeed, setup.client_optimizer
    precision, stage = precision_of(ds), setup.zero_stage
    block = ds.get("optimizer") or {}
    name = str(block.get("type", ""))
    if spec is not None and spec.backend == "fused":
        route = ("FusedLamb (client) under DeepSpeed FP16_UnfusedOptimizer in bf16: fp32 master "
                 "weights and grads (the bf16 grads are copied to fp32, then unscaled and clipped), "
                 "fp32 update, one trust ratio per parameter tensor; gradients accumulate in bf16 "
                 "between micro-steps")
    elif spec is not None:
        adam_mode = "Adam" if spec.kind == "adam" else "AdamW"
        if spec.kind == "lamb":
            optimizer = "pytorch_optimizer.Lamb (client, per tensor)"
        elif spec.params.get("bias_correction", True) is False:
            # engine.build_client_optimizer: torch's Adam always corrects the bias
            optimizer = f"DeepSpeedCPUAdam (client, {adam_mode}, bias_correction false)"
        else:
            optimizer = f"torch.optim.{adam_mode} (client, fused kernel)"
        route = optimizer + _wrapper(precision, stage, flat_fp16=False)
    elif name.lower() == "lamb":
        route = "FusedLamb (DeepSpeed)" + (
            " under DeepSpeed FP16_UnfusedOptimizer (fused_lamb_legacy): fp32 master weights; the "
            "fp16 grads and the loss scale go to the kernel, which unscales and clips them and "
            "updates in fp32, one trust ratio per parameter tensor"
            if precision == "fp16" else ": fp32 weights, grads and update, one trust ratio per "
            "parameter tensor")
    elif name.lower() in ("adam", "adamw"):
        torch_adam = block.get("params", {}).get("torch_adam")
        route = ("torch.optim.AdamW (DeepSpeed, torch_adam)" if torch_adam else "FusedAdam (DeepSpeed)") \
            + _wrapper(precision, stage, flat_fp16=not torch_adam)
    elif name:
        route = f"{name} (DeepSpeed)" + _wrapper(precision, stage, flat_fp16=False)
    else:
        route = "no optimizer"
    if setup.optimizer_fallback:
        route += f"; fallback: {setup.optimizer_fallback}"
    return route


def _wrapper(precision: str, stage: int, flat_fp16: bool) -> str:
    if stage > 0:
        return f" under DeepSpeed ZeRO stage {stage}" + (": fp32 master weights" if precision != "fp32" else "")
    if precision == "fp32":
        return ": fp32 weights and grads, no wrapper"
    if flat_fp16:
        return f" under DeepSpeed FP16_Optimizer in {precision}: flat fp32 master weights"
    return f" under DeepSpeed FP16_UnfusedOptimizer in {precision}: fp32 master weights and grads"


def _check_lamb_with_zero(values: dict, setup: TrainingSetup) -> None:
    kind = str(values.get("optimizer", {}).get("type", "")).lower()
    if kind == "lamb" and setup.zero_stage >= 1:
        raise ConfigError(
            f"{setup.source}: LAMB with zero_optimization.stage {setup.zero_stage} is refused: "
            "ZeRO flattens each rank's parameters into one tensor, so LAMB would compute one "
            "trust ratio for all layers instead of one per layer. Use stage 0 with LAMB, or "
            "Adam/AdamW with ZeRO.")


def check_sequence_fits(model, seq_len: int, seq_len_option: str) -> None:
    """A sequence of seq_len tokens fits the model's position embeddings (a BertConfig)."""
    if seq_len > model.max_position_embeddings:
        raise ConfigError(f"{seq_len_option} {seq_len} exceeds the model's "
                          f"max_position_embeddings {model.max_position_embeddings}")


def check_setup_against_model(setup: TrainingSetup, model, model_name: str,
                              max_seq_length: Optional[int], seq_len_option: str = "--max_seq_length",
                              fp16_on_this_cpu: bool = False) -> None:
    """What the DeepSpeed JSON, the model config and the sequence length must agree on,
    checked before any engine exists (the trainer, fine-tuning and config_check call it).
    `model` is a BertConfig; `fp16_on_this_cpu`: the run will be on this machine's CPU."""
    if max_seq_length is not None:
        check_sequence_fits(model, max_seq_length, seq_len_option)
    if setup.pld is not None and not model.pre_layer_norm:
        raise ConfigError(f"{setup.source}: PLD is on but {model_name} is Post-LN "
                          "(pre_layer_norm false); layer dropping needs Pre-LN to train stably")
    if fp16_on_this_cpu and setup.deepspeed.get("fp16", {}).get("enabled"):
        from deepspeed.accelerator import get_accelerator

        if not get_accelerator().is_fp16_supported():
            raise ConfigError(f"{setup.source}: fp16 is on but this machine has no CUDA and its "
                              "CPU has no fp16 support; on CPU ranks use bf16 or fp32, or "
                              "check for a GPU machine with --target cuda")


def resolve_batch_sizes(ds: dict, world_size: int, source: str = "<config>") -> dict[str, int]:
    """DeepSpeed's rule: train_batch_size = micro_batch x grad_accum x world_size."""
    train = ds.get("train_batch_size")
    micro = ds.get("train_micro_batch_size_per_gpu")
    accum = ds.get("gradient_accumulation_steps")
    for name, value in (("train_batch_size", train), ("train_micro_batch_size_per_gpu", micro),
                        ("gradient_accumulation_steps", accum)):
        if value is not None:
            check_value(source, name, value, POSITIVE_INT)
    if train is not None and micro is not None and accum is None:
        accum, rest = divmod(train, micro * world_size)
        if rest or accum == 0:
            raise ConfigError(f"{source}: train_batch_size {train} is not divisible by "
                              f"micro batch {micro} x world size {world_size}")
    elif train is not None and accum is not None and micro is None:
        micro, rest = divmod(train, accum * world_size)
        if rest or micro == 0:
            raise ConfigError(f"{source}: train_batch_size {train} is not divisible by "
                              f"gradient_accumulation_steps {accum} x world size {world_size}")
    elif train is None and micro is not None:
        accum = accum or 1
        train = micro * accum * world_size
    elif train is not None and micro is None and accum is None:
        accum = 1
        micro, rest = divmod(train, world_size)
        if rest:
            raise ConfigError(f"{source}: train_batch_size {train} is not divisible by "
                              f"world size {world_size}")
    elif train is None:
        raise ConfigError(f"{source}: set train_batch_size or train_micro_batch_size_per_gpu")
    if train != micro * accum * world_size:
        raise ConfigError(
            f"{source}: train_batch_size {train} != train_micro_batch_size_per_gpu {micro} x "
            f"gradient_accumulation_steps {accum} x world size {world_size}")
    return {"train_batch_size": train, "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": accum, "world_size": world_size}


def describe(setup: TrainingSetup, world_size: int) -> dict[str, Any]:
    """The effective settings, as the config-check command prints them."""
    ds = setup.deepspeed
    precision = precision_of(ds)
    optimizer = (f"{setup.client_optimizer.kind} (client, {setup.client_optimizer.params})"
                 if setup.client_optimizer else f"{ds.get('optimizer', {}).get('type')} (DeepSpeed)")
    route = optimizer_route(setup)
    return {
        **resolve_batch_sizes(ds, world_size, setup.source),
        "precision": precision,
        "zero_stage": setup.zero_stage,
        "optimizer": optimizer,
        "optimizer_route": route,
        "lr_schedule": setup.lr_schedule.name if setup.lr_schedule
        else ds.get("scheduler", {}).get("type"),
        "gradient_clipping": ds.get("gradient_clipping"),
        "pld": "off" if setup.pld is None else f"theta_bar={setup.pld.theta_bar} gamma={setup.pld.gamma}",
    }
