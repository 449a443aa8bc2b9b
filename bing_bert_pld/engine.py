"""Build the DeepSpeed engine and attach our PLD hook to it.

DeepSpeed 0.19.8 no longer drives Progressive Layer Dropping, so this module does what
its engine used to: before every training forward it derives theta from the engine's
optimizer-step counter, draws the gates for this micro-batch, and hands them to the
model. After the forward it checks that the model used them: PLD is never silently off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from . import fused_ops, lr_schedules, shm_comm
from .ds_config import TrainingSetup, fused_op_needed, optimizer_route
from .metrics_log import LOG
from .flops import LayerRuns
from .pld import LayerGates, PLDSchedule, sample_gates


class PLDNotAppliedError(RuntimeError):
    """PLD is enabled but the model did not take the gates it was given."""


@dataclass
class GateStats:
    """Gates drawn since the last reset, for logging (active layers, FLOPs skipped)."""

    micro_batches: int = 0
    active_layers: int = 0
    total_micro_batches: int = 0  # since the hook was attached or restored
    total_active_layers: int = 0
    total_empty_micro_batches: int = 0  # no layer ran: not even the sparse last block

    def record(self, gates: LayerGates) -> None:
        self.micro_batches += 1
        self.active_layers += gates.num_active
        self.total_micro_batches += 1
        self.total_active_layers += gates.num_active
        self.total_empty_micro_batches += gates.num_active == 0

    def interval_mean_active(self) -> float:
        return self.active_layers / self.micro_batches if self.micro_batches else float("nan")

    def reset_interval(self) -> None:
        self.micro_batches = 0
        self.active_layers = 0

    def layer_runs(self) -> Optional[LayerRuns]:
        """The run's totals as flops.LayerRuns (the last block run is the sparse one); None
        before the first micro-batch."""
        if self.total_micro_batches == 0:
            return None
        return LayerRuns.from_counts(self.total_micro_batches, self.total_active_layers,
                                     self.total_empty_micro_batches)

    def state_dict(self) -> dict[str, int]:
        """The run's totals (the interval's restart at every log line)."""
        return {"micro_batches": self.total_micro_batches, "active_layers": self.total_active_layers,
                "empty_micro_batches": self.total_empty_micro_batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.total_micro_batches = int(state["micro_batches"])
        self.total_active_layers = int(state["active_layers"])
        self.total_empty_micro_batches = int(state["empty_micro_batches"])


class PLDHook:
    """Connects the pure PLD schedule to a DeepSpeedEngine through forward hooks."""

    def __init__(self, engine, schedule: PLDSchedule, seed: int):
        module = engine.module
        layers = getattr(getattr(getattr(module, "bert", None), "encoder", None), "layer", None)
        if layers is None:
            raise PLDNotAppliedError(
                f"PLD is enabled but {type(module).__name__} has no bert.encoder.layer: "
                "it cannot take layer gates")
        self.engine = engine
        self.schedule = schedule
        self.seed = seed
        self.num_layers = len(layers)
        self.stats = GateStats()
        self._pending: Optional[LayerGates] = None
        self._handles = [
            module.register_forward_pre_hook(self._inject_gates, with_kwargs=True),
            module.register_forward_hook(self._check_gates_used, with_kwargs=True),
        ]

    @property
    def theta(self) -> float:
        return self.schedule.theta(self.engine.global_steps)

    def _inject_gates(self, module: nn.Module, args: tuple, kwargs: dict):
        if not module.training:
            return None  # evaluation runs full depth
        if "layer_gates" in kwargs:
            raise PLDNotAppliedError("the caller passed layer_gates itself; with PLD enabled "
                                     "the engine hook owns them")
        accumulation = self.engine.gradient_accumulation_steps()
        micro_step = self.engine.micro_steps % accumulation
        gates = sample_gates(self.theta, self.num_layers, self.seed,
                             self.engine.global_steps, micro_step)
        self._pending = gates
        return args, {**kwargs, "layer_gates": gates}

    def _check_gates_used(self, module: nn.Module, args: tuple, kwargs: dict, output):
        if not module.training:
            return None
        if getattr(module, "consumed_layer_gates", None) is not self._pending:
            raise PLDNotAppliedError(
                f"PLD is enabled but {type(module).__name__}.forward did not use the layer "
                "gates it was given (consumed_layer_gates is not the gates passed in); "
                "stopping rather than training at full depth")
        self.stats.record(self._pending)
        return None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def build_client_optimizer(setup: TrainingSetup, model: nn.Module) -> Optional[torch.optim.Optimizer]:
    spec = setup.client_optimizer
    if spec is None:
        return None
    params = dict(spec.params)
    lr = params.pop("lr")
    betas = tuple(params.pop("betas", (0.9, 0.999)))
    eps = params.pop("eps", 1e-6 if spec.kind == "lamb" else 1e-8)
    weight_decay = params.pop("weight_decay", 0.0)
    groups = decay_groups(model, weight_decay)
    if spec.kind == "lamb" and spec.backend == "fused":
        from deepspeed.ops.lamb import FusedLamb
        # FusedLamb's own defaults for what the JSON leaves out (eps 1e-8, max_coeff 10,
        # min_coeff 0.01, bias_correction true), as when DeepSpeed builds it from the block.
        given = {key: value for key, value in spec.params.items() if key != "weight_decay"}
        if "betas" in given:
            given["betas"] = tuple(given["betas"])
        return FusedLamb(groups, **given)
    if spec.kind == "lamb":
        from pytorch_optimizer import Lamb
        # Weight decay inside the trust ratio, as in the LAMB paper and DeepSpeed's
        # FusedLamb. Gradient clipping is DeepSpeed's (gradient_clipping), so pre_norm is
        # off. It has no max_coeff/min_coeff/bias_correction: it always divides the step by
        # 1 - beta1^t (no second-moment correction) and clamps the weight norm at 10
        # instead of the trust ratio (ds_configs/README.md, "Optimizer routes").
        return Lamb(groups, lr=lr, betas=betas, eps=eps, weight_decouple=False,
                    foreach=False)
    if params.get("bias_correction", True) is False:
        return _cpu_adam_without_bias_correction(groups, spec.kind, lr, betas, eps, params)
    # torch's fused CPU kernel: one pass over each tensor instead of a dozen foreach
    # passes, ~8x faster on BERT-base here (0.045 s vs 0.35 s a step). It always
    # corrects the bias, as FusedAdam does with bias_correction true (its default).
    optimizer_class = torch.optim.Adam if spec.kind == "adam" else torch.optim.AdamW
    return optimizer_class(groups, lr=lr, betas=betas, eps=eps,
                           amsgrad=params.get("amsgrad", False), fused=True)


def _cpu_adam_without_bias_correction(groups: list[dict], kind: str, lr: float, betas: tuple,
                                      eps: float, params: dict) -> torch.optim.Optimizer:
    """Adam(W) with bias_correction false on CPU ranks (DeepSpeedExamples' PLD config):
    torch's Adam always corrects the bias, DeepSpeed's DeepSpeedCPUAdam takes the flag as
    FusedAdam does. Its cpu_adam op is JIT-built with g++ the first time (about 2 to 3.5
    minutes on 2 cores) and cached under TORCH_EXTENSIONS_DIR (2.4 s to load afterwards)."""
    from .config import ConfigError

    if params.get("amsgrad", False):
        raise ConfigError("optimizer Adam: amsgrad with bias_correction false is not available "
                          "on CPU ranks (DeepSpeedCPUAdam has no AMSGrad)")
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    try:
        return DeepSpeedCPUAdam(groups, lr=lr, bias_correction=False, betas=betas, eps=eps,
                                adamw_mode=kind == "adamw")
    except RuntimeError as err:  # DeepSpeedCPUAdam wraps the build's error
        cause = err.__cause__ or err
        first_line = next((line for line in str(cause).splitlines() if line.strip()), "")
        raise ConfigError(
            "optimizer Adam with bias_correction false on CPU ranks needs DeepSpeed's cpu_adam "
            f"op, which could not be built or loaded here (a g++ JIT build): "
            f"{type(cause).__name__}: {first_line}") from None


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """BERT's rule: no weight decay on biases and LayerNorm parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
         else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_scheduler_factory(setup: TrainingSetup):
    """A callable DeepSpeed calls with its optimizer (works for fused and client ones)."""
    spec = setup.lr_schedule
    if spec is None:
        return None
    function, _, _ = lr_schedules.SCHEDULES[spec.name]
    params = dict(spec.params)

    def build(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: function(step, **params))

    return build


def init_distributed() -> None:
    """Initialize torch.distributed: NCCL with CUDA, gloo on CPU ranks."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "RANK" not in os.environ:  # a plain `python -m` run: one process
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                          MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    if not torch.cuda.is_available():
        # CPU ranks on one machine share its cores; without a cap each rank starts a
        # thread per core and they thrash (10-100x slower with 2 ranks on 2 cores).
        # An explicit OMP_NUM_THREADS wins (fewer threads than cores on a machine other
        # jobs share: two threads on 2 busy cores spin-wait for each other).
        local_ranks = int(os.environ.get("LOCAL_SIZE", "1"))
        requested = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(requested) if requested.isdigit() and int(requested) > 0
                              else max(1, (os.cpu_count() or 1) // local_ranks))
    else:
        # Before the process group exists: NCCL collectives (all_gather_object among
        # them) run on the current device, which must be this rank's GPU.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not torch.cuda.is_available():
        shm_comm.announce_build()  # else a first launch is silent for a minute or two
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    if not torch.cuda.is_available():
        # DeepSpeed's CPU allreduce leaves a 66 MB /dev/shm file per rank, never removed:
        # unlinked here once every rank has mapped them all (shm_comm.py).
        shm_comm.release_own_buffer(dist.barrier)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def use_buildable_optimizer(setup: TrainingSetup) -> None:
    """Build the fused op the setup's optimizer needs now; where it cannot be built, switch
    the setup to the per-tensor library optimizer with one warning naming the reason. Every
    rank takes the same decision (one failing rank makes all fall back)."""
    op = fused_op_needed(setup)
    if op is None:
        return
    status = fused_ops.load(op)
    reasons = [None if status.ok else status.detail]
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        reasons = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(reasons, None if status.ok else status.detail)
    failed = [(rank, reason) for rank, reason in enumerate(reasons) if reason is not None]
    if not failed:
        return
    rank, reason = failed[0]
    where = f" on rank {rank}" if len(reasons) > 1 else ""
    setup.use_library_optimizer(f"{op} could not be built{where} ({reason}); using "
                                f"{fused_ops.LIBRARY_FALLBACK[op]}, per tensor, with the same params")
    if len(reasons) == 1 or torch.distributed.get_rank() == 0:
        # One line for the job: every rank decided the same, rank 0 says it.
        LOG.warning("optimizer fallback: %s", setup.optimizer_fallback)


def initialize_engine(model: nn.Module, setup: TrainingSetup):
    """deepspeed.initialize with our optimizer / scheduler choices; returns the engine.
    May switch `setup` to a library optimizer (use_buildable_optimizer)."""
    import deepspeed

    use_buildable_optimizer(setup)
    LOG.info("optimizer route: %s", optimizer_route(setup))
    optimizer = build_client_optimizer(setup, model)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=None if optimizer is not None else decay_groups(
            model, setup.deepspeed.get("optimizer", {}).get("params", {}).get("weight_decay", 0.0)),
        optimizer=optimizer,
        lr_scheduler=lr_scheduler_factory(setup),
        config=setup.deepspeed,
    )
    if engine.fp16_enabled() and not engine.zero_optimization():
        scale_fp16_loss_in_backward(engine)
    return engine


def scale_fp16_loss_in_backward(engine) -> None:
    """DeepSpeed 0.19.8 (deepspeedai/DeepSpeed#8393, open): with fp16 at ZeRO stage 0,
    engine.backward never multiplies the loss by the loss scale, yet FP16_Optimizer and
    FP16_UnfusedOptimizer divide the gradients by it in step(). Every update would be
    ~scale times too small (the scale starts at 2^16) and small fp16 gradients would
    underflow. Here the gradient reaching the loss is multiplied by the current scale at
    the start of backward, unless DeepSpeed already scaled it (a release with the fix):
    the hook compares that gradient with the unscaled 1/accumulation on the device, so
    nothing is scaled twice and nothing waits for the host."""
    backward = engine.backward

    def backward_with_loss_scale(loss, retain_graph=False, scale_wrt_gas=True):
        if not loss.requires_grad:  # DeepSpeed's own checks and message
            return backward(loss, retain_graph=retain_graph, scale_wrt_gas=scale_wrt_gas)
        unscaled = 1.0 / engine.gradient_accumulation_steps() if scale_wrt_gas else 1.0
        scale = float(engine.optimizer.loss_scale)

        def multiply_unless_scaled(grad):
            return torch.where(torch.isclose(grad, torch.full_like(grad, unscaled)), grad * scale, grad)

        handle = loss.register_hook(multiply_unless_scaled)
        try:
            return backward(loss, retain_graph=retain_graph, scale_wrt_gas=scale_wrt_gas)
        finally:
            handle.remove()

    engine.backward = backward_with_loss_scale
