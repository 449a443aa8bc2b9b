"""Check a DeepSpeed JSON and a model config before launching, without training.

    python -m bing_bert_pld.config_check --deepspeed_config ds_configs/X.json \
        --model_config bert-base [--world_size 64] [--max_seq_length 128] [--target cuda]

Does what the trainer does up to deepspeed.initialize: reads the model config, takes
our blocks (PLD, our LR schedules, LAMB on CPU) out of the DeepSpeed JSON, resolves
train_batch_size = micro batch x accumulation x world size, then runs DeepSpeed's own
config validation on exactly the dict the trainer would hand it, at that world size.
Prints the effective settings and exits 0, or prints the error and exits 2.

--target says which machine the config is checked for: on CUDA the fused kernels
(FusedLamb, FusedAdam; with bf16 we build FusedLamb ourselves), on CPU ranks the trainer's
library optimizers. The default (auto) is the machine it runs on, and then fp16 is also
checked against what this machine supports. `optimizer_route` says which optimizer and
which DeepSpeed wrapper will run. For CUDA, `fused_ops` builds the op the route needs when
this machine has CUDA (and shows the fallback if it cannot be built), and says plainly that
it was not checked when this machine has none.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Optional, Sequence

from .config import BertConfig, ConfigError
from . import cli, fused_ops, run_options
from .ds_config import TrainingSetup, check_setup_against_model, describe, fused_op_needed
from .ds_validation import missing_lr_schedule_warning
from .pld import expected_active_layers


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = cli.ArgumentParser("bing_bert_pld.config_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deepspeed_config", required=True, metavar="JSON",
                        help="the DeepSpeed JSON to check, as the trainer takes it")
    parser.add_argument("--model_config", required=True, metavar="NAME|JSON",
                        help="model JSON path or packaged name (bert-base, bert-large, ...)")
    parser.add_argument("--world_size", type=int, default=1, metavar="RANKS",
                        help="data-parallel ranks: nodes x GPUs per node (or CPU ranks)")
    parser.add_argument("--max_seq_length", type=int, default=None, metavar="TOKENS",
                        help="also check it against the model's max_position_embeddings; "
                             "default: not checked")
    parser.add_argument("--target", choices=("auto", "cuda", "cpu"), default="auto",
                        help="machine kind to check for; auto: this machine")
    # The trainer's options for JSONs written for DeepSpeedExamples' client (run_options.py).
    parser.add_argument("--lr_schedule", choices=run_options.LR_SCHEDULES, default=None,
                        help="as the trainer's --lr_schedule; default: the JSON's schedule")
    parser.add_argument("--lr_schedule_total_steps", type=int, default=None, metavar="STEPS",
                        help="as the trainer's --lr_schedule_total_steps (default: 200000)")
    parser.add_argument("--precision", choices=run_options.PRECISIONS, default=None,
                        help="as the trainer's --precision; default: the JSON's precision")
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
    """DeepSpeed's own checks on the dict deepspeed.initialize would receive (optimizer and
    scheduler types were checked with the file, in ds_validation)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        with _deepspeed_sees_world_size(world_size):
            DeepSpeedConfig(setup.deepspeed)
    except Exception as err:  # DeepSpeed reports with asserts, ValueErrors and pydantic errors
        # pydantic's reports span lines; the error is one line.
        message = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError(f"{setup.source}: DeepSpeed rejects the config at world size "
                          f"{world_size}: {message}") from None


def check(args: argparse.Namespace) -> dict:
    """The effective settings; raises ConfigError with the reason otherwise."""
    import torch

    model = BertConfig.from_json(args.model_config)
    cuda = torch.cuda.is_available() if args.target == "auto" else args.target == "cuda"
    setup = run_options.load_setup(args.deepspeed_config, cuda, args.lr_schedule,
                                   args.lr_schedule_total_steps, args.precision)
    warning = missing_lr_schedule_warning(setup)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    check_setup_against_model(setup, model, args.model_config, args.max_seq_length,
                              fp16_on_this_cpu=args.target == "auto" and not cuda)
    fused_ops_line = check_fused_ops(setup)
    settings = describe(setup, args.world_size)
    settings["fused_ops"] = fused_ops_line
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


def check_fused_ops(setup: TrainingSetup) -> str:
    """Build the op the route needs, as the trainer would; on failure switch the setup to the
    trainer's fallback, so that optimizer_route shows the route that would really run."""
    op = fused_op_needed(setup)
    if not setup.cuda:
        return "not applicable: CPU ranks use library optimizers, nothing to build"
    if op is None:
        return "none needed by this route"
    fallback = fused_ops.LIBRARY_FALLBACK[op]
    if not fused_ops.cuda_present():
        return (f"{op} NOT CHECKED: this machine has no CUDA, so nothing was built. The route "
                f"JIT-builds {op} on first use (needs nvcc, ninja and a CUDA build of torch); if "
                f"that fails the trainer falls back to {fallback} with one warning. Check on the "
                "GPU machine: python -m bing_bert_pld.fused_ops")
    status = fused_ops.load(op)
    if status.ok:
        return f"{op} {status.detail}"
    setup.use_library_optimizer(f"{op} could not be built ({status.detail}); using {fallback}, "
                                "per tensor, with the same params")
    return f"{op} cannot be built: {status.detail}; the trainer will fall back to {fallback}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        settings = check(args)
    except ConfigError as err:
        print(f"error: config check failed: {err}", file=sys.stderr)
        return 2
    print(f"config check passed: {args.deepspeed_config} with {args.model_config} "
          f"at world size {args.world_size}")
    width = max(map(len, settings))
    for key, value in settings.items():
        print(f"  {key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
