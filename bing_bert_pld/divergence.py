"""Stop a run whose loss or weights are no longer finite, before any of it is checkpointed.

A NaN learning rate once trained NaN weights and checkpointed them over good ones. Two
checks, both collective (every rank decides the same, so none waits alone in the next
all-reduce):

- every optimizer step: the step's losses. A non-finite loss is normal when fp16's
  dynamic loss scaling skipped the step (DeepSpeed counts it in `engine.skipped_steps`,
  leaves the weights as they were and lowers the scale; bf16 under ZeRO skips the same
  way), so such a step passes, up to MAX_SKIPPED_IN_A_ROW in a row: by then fp16's scale
  would have reached its floor (from 2^16, halving after each overflow), and bf16 has no
  scale to lower, so the run would skip every step forever. A non-finite loss on a step
  that was applied stops the run at once.
- before every save: the weights themselves, which a finite loss can hide (a NaN
  gradient, or an update that overflows, shows in the loss only one step later).

The trainer exits with EXIT_CODE and one `error:` line; checkpoints already written are
left alone, so `latest` still names the last whole, finite one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

EXIT_CODE = 3  # not 2 (a bad input, found before training) and not 0 (SLURM would requeue)
MAX_SKIPPED_IN_A_ROW = 20


class NonFiniteError(RuntimeError):
    """The loss or the weights are NaN or infinite; the message says where and what to do."""


class StepLossCheck:
    """The per-step check; keeps the count of skipped non-finite steps in a row."""

    def __init__(self, max_skipped_in_a_row: int = MAX_SKIPPED_IN_A_ROW):
        self.max_skipped_in_a_row = max_skipped_in_a_row
        self.skipped_in_a_row = 0

    def __call__(self, losses: torch.Tensor, step_skipped: bool, step: int, lr: float) -> None:
        """`losses`: this rank's (loss, mlm_loss, nsp_loss) of the optimizer step just
        taken; `step_skipped`: DeepSpeed skipped that step (the same on every rank). Raises
        on every rank, or on none. One copy to the host and one tiny all-reduce per step."""
        local = not bool(torch.isfinite(losses).all())
        applied, any_rank = _any_rank([local and not step_skipped, local], losses.device)
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if any_rank else 0
        if not applied and self.skipped_in_a_row < self.max_skipped_in_a_row:
            return
        values = ", ".join(f"{v:.4g}" for v in losses.tolist())
        what = ("and the optimizer step was applied, so the weights are no longer trustworthy"
                if applied else f"for {self.skipped_in_a_row} steps in a row; DeepSpeed skipped "
                "each (fp16/bf16 overflow), which did not help")
        raise NonFiniteError(
            f"the loss is not finite at step {step} (this rank's loss, mlm, nsp: {values}; lr "
            f"{lr:.3g}) {what}: stopped without saving; the checkpoints already written are "
            "unchanged. Lower the learning rate, enable gradient_clipping, or check the data "
            "around this step, then relaunch to resume from the last checkpoint")


def require_finite_weights(module: torch.nn.Module, step: int, device) -> None:
    """Raise on every rank when any rank holds a non-finite parameter. Under ZeRO-3 each
    rank checks its partition (`ds_tensor`): the module's own tensors are placeholders."""
    bad = next((name for name, param in module.named_parameters()
                if not bool(torch.isfinite(getattr(param, "ds_tensor", param)).all())), None)
    if _any_rank([bad is not None], device)[0]:
        where = f" ({bad} on this rank)" if bad is not None else " (on another rank)"
        raise NonFiniteError(
            f"the weights are not finite at step {step}{where}: refusing to checkpoint them; "
            "the checkpoints already written are unchanged. Lower the learning rate, enable "
            "gradient_clipping, or check the data, then relaunch to resume from the last checkpoint")


def _any_rank(flags: list[bool], device) -> list[bool]:
    """Each flag OR-ed over the ranks."""
    if not (dist.is_available() and dist.is_initialized()):
        return flags
    tensor = torch.tensor(flags, dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(flag) for flag in tensor.tolist()]
