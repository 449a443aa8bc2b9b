"""Check a DeepSpeed JSON and a model config before launching, without training.

    python -m bing_bert_pld.config_check --deepspeed_config ds_configs/X.json \
        --model_config bert-base [--world_size 64] [--max_seq_length 128] [--target cuda]

Does what the trainer does up to deepspeed.initialize: reads the model config, takes
our blocks (PLD, our LR schedules, LAMB on CPU) out of the DeepSpeed JSON, resolves
train_batch_size = micro batch x accumulation x world size, then runs DeepSpeed's own
config validation on exactly the dict the trainer would hand it, at that world size.
Prints the effective settings and exits 0, or prints the error and exits 2.

--target says which machine the config is checked for: on CUDA DeepSpeed builds LAMB
and Adam itself (fused kernels), on CPU ranks the trainer builds them as client
optimizers. The default (auto) is the machine it runs on, and then fp16 is also
checked against what this machine supports.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Optional, Sequence

from .config import BertConfig, ConfigError
from .ds_config import TrainingSetup, check_setup_against_model, describe, load_training_setup
from .pld import expected_active_layers


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deepspeed_config", required=True, help="DeepSpeed JSON")
    parser.add_argument("--model_config", required=True,
                        help="model JSON path or packaged name (bert-base, bert-large, ...)")
    parser.add_argument("--world_size", type=int, default=1,
                        help="data-parallel ranks: nodes x GPUs per node (or CPU ranks)")
    parser.add_argument("--max_seq_length", type=int, default=None,
                        help="also check it against the model's max_position_embeddings")
    parser.add_argument("--target", choices=("auto", "cuda", "cpu"), default="auto",
                        help="machine kind to check for; auto: this machine")
    args = parser.parse_args(argv)
    if args.world_size < 1:
        parser.error(f"--world_size must be >= 1, got {args.world_size}")
    return args


@contextlib.contextmanager
def _deepspeed_sees_world_size(world_size: int):
    """DeepSpeedConfig asks deepspeed.comm for the rank and world size; outside a
    launched job it would fall back to world size 1. Answer with the one being checked."""
    from deepspeed import comm

    saved = comm.get_rank, comm.get_world_size
    comm.get_rank = lambda *args, **kwargs: 0
    comm.get_world_size = lambda *args, **kwargs: world_size
    try:
        yield
    finally:
        comm.get_rank, comm.get_world_size = saved


def validate_with_deepspeed(setup: TrainingSetup, world_size: int) -> None:
    """DeepSpeed's own checks on the dict deepspeed.initialize would receive."""
    import torch
    from deepspeed.runtime import lr_schedules
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS, DeepSpeedConfig

    try:
        with _deepspeed_sees_world_size(world_size):
            config = DeepSpeedConfig(setup.deepspeed)
    except Exception as err:  # DeepSpeed reports with asserts, ValueErrors and pydantic errors
        message = str(err).strip() or type(err).__name__
        raise ConfigError(f"{setup.source}: DeepSpeed rejects the config at world size "
                          f"{world_size}: {message}") from None
    # Checked by the engine only at initialization; cheap to check now.
    name = config.optimizer_name
    if name is not None and name not in DEEPSPEED_OPTIMIZERS and not hasattr(torch.optim, name):
        raise ConfigError(f"{setup.source}: DeepSpeed does not know optimizer type {name!r}; "
                          f"it knows {sorted(DEEPSPEED_OPTIMIZERS)} and torch.optim's classes")
    name = config.scheduler_name
    if name is not None and not hasattr(lr_schedules, name) \
            and not hasattr(torch.optim.lr_scheduler, name):
        raise ConfigError(f"{setup.source}: unknown scheduler type {name!r}; ours are "
                          "WarmupExpDecay and WarmupPolyDecay, DeepSpeed's are "
                          f"{lr_schedules.VALID_LR_SCHEDULES}")


def check(args: argparse.Namespace) -> dict:
    """The effective settings; raises ConfigError with the reason otherwise."""
    import torch

    model = BertConfig.from_json(args.model_config)
    cuda = torch.cuda.is_available() if args.target == "auto" else args.target == "cuda"
    setup = load_training_setup(args.deepspeed_config, cuda)
    check_setup_against_model(setup, model, args.model_config, args.max_seq_length,
                              fp16_on_this_cpu=args.target == "auto" and not cuda)
    settings = describe(setup, args.world_size)
    validate_with_deepspeed(setup, args.world_size)
    layers = model.num_hidden_layers
    settings.update({
        "target": "cuda" if cuda else "cpu",
        "model": (f"{layers} layers, hidden {model.hidden_size}, heads "
                  f"{model.num_attention_heads}, vocab {model.vocab_size}, "
                  f"{'Pre-LN' if model.pre_layer_norm else 'Post-LN'}"),
        "max_position_embeddings": model.max_position_embeddings,
    })
    if setup.pld is not None:
        settings["pld_expected_layers_at_theta_bar"] = round(
            expected_active_layers(setup.pld.theta_bar, layers), 3)
    if setup.lr_schedule is not None:
        params = setup.lr_schedule.params
        settings["lr_schedule"] += " (" + ", ".join(f"{k} {v}" for k, v in params.items()) + ")"
    return settings


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        settings = check(args)
    except ConfigError as err:
        print(f"config check failed: {err}", file=sys.stderr)
        return 2
    print(f"config check passed: {args.deepspeed_config} with {args.model_config} "
          f"at world size {args.world_size}")
    width = max(map(len, settings))
    for key, value in settings.items():
        print(f"  {key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
