"""Shared pieces of the benchmarks: device and precision flags, synthetic batches, timed steps, MFU.

Benchmarks print ratios measured in one process with interleaved repetitions, so that
a machine's background load hits both sides alike. They are scripts, not tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from bing_bert_pld import flops
from bing_bert_pld.batch import PretrainingBatch
from bing_bert_pld.config import BertConfig


def add_common_args(parser: argparse.ArgumentParser, batch_size: int = 4, reps: int = 5) -> None:
    parser.add_argument("--model-config", default="bert-base", metavar="NAME|JSON",
                        help="packaged config name (bert-tiny, bert-small, bert-base, "
                             "bert-large) or a JSON path")
    parser.add_argument("--seq-len", type=int, default=128, metavar="TOKENS", aliases=("--max_seq_length",),
                        help="tokens per sequence")
    parser.add_argument("--max-pred", type=int, default=20, metavar="N",
                        aliases=("--max_predictions_per_seq",), help="masked positions per sequence")
    parser.add_argument("--batch-size", type=int, default=batch_size, metavar="SAMPLES",
                        help="sequences per timed step")
    parser.add_argument("--reps", type=int, default=reps, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: cuda when there is one, else cpu")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast (GPU: tensor cores; CPU: slow without AMX)")
    parser.add_argument("--compile-layers", action="store_true",
                        help="torch.compile each encoder layer on its own, so a skipped "
                             "layer still costs nothing (worth it on GPU; ~20 s per layer "
                             "shape to compile on CPU, no gain measured there)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend for --compile_layers (aot_eager: the same "
                             "graphs without code generation, for a quick check of the plumbing)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's, one per core)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall: elapsed time; cpu: this process's CPU time, steadier on a "
                             "CPU machine that other jobs share (use with --threads 1, so no "
                             "thread spins waiting for a descheduled sibling)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and the synthetic batches")


@dataclass
class Setup:
    device: torch.device
    dtype_name: str
    config: BertConfig
    clock: Callable[[], float] = time.perf_counter

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.dtype_name == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize()


def setup_from_args(args, **config_changes) -> Setup:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = BertConfig.from_json(args.model_config)
    if config_changes:
        config = config.replace(**config_changes)
    if args.seq_len > config.max_position_embeddings:
        raise SystemExit(f"--seq-len {args.seq_len} > max_position_embeddings "
                         f"{config.max_position_embeddings}")
    if args.clock == "cpu" and device.type == "cuda":
        raise SystemExit("--clock cpu measures CPU work; on CUDA use the default wall clock")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    return Setup(device, "bf16" if args.bf16 else "fp32", config, clock)


def describe_machine(setup: Setup) -> str:
    if setup.is_cuda:
        where = torch.cuda.get_device_name(setup.device)
    else:
        where = f"CPU {platform.processor() or platform.machine()}, " \
                f"{torch.get_num_threads()} threads"
    clock = " | CPU-time clock" if setup.clock is time.process_time else ""
    load = " | load avg %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return f"{where} | torch {torch.__version__}{clock}{load}"


def synthetic_batch(config: BertConfig, batch_size: int, seq_len: int, max_pred: int,
                    generator: torch.Generator) -> PretrainingBatch:
    """Full-length sequences with max_pred real masked positions each (upper bound)."""
    if max_pred >= seq_len:
        raise SystemExit(f"--max-pred {max_pred} must be < --seq-len {seq_len}")
    positions = torch.stack([torch.randperm(seq_len - 1, generator=generator)[:max_pred] + 1
                             for _ in range(batch_size)]).sort(dim=1).values  # never 0 (padding)
    return PretrainingBatch(
        input_ids=torch.randint(1, config.vocab_size, (batch_size, seq_len), generator=generator),
        input_mask=torch.ones(batch_size, seq_len, dtype=torch.long),
        segment_ids=(torch.arange(seq_len) >= seq_len // 2).long().expand(batch_size, -1).clone(),
        masked_lm_positions=positions,
        masked_lm_ids=torch.randint(1, config.vocab_size, (batch_size, max_pred),
                                    generator=generator),
        next_sentence_labels=torch.randint(0, 2, (batch_size,), generator=generator))


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # torch's fused kernel, on GPU and on CPU (where it is ~8x faster than foreach).
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)


@dataclass
class StepTime:
    forward_backward: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.forward_backward + self.optimizer


def timed_step(setup: Setup, loss_fn: Callable[[], torch.Tensor],
               optimizer: torch.optim.Optimizer) -> StepTime:
    """forward + backward, then optimizer step; grads zeroed, not freed, as DeepSpeed
    keeps them: a skipped layer's parameters are still updated (with zero gradients)."""
    setup.sync()
    start = setup.clock()
    with setup.autocast():
        loss = loss_fn()
    loss.backward()
    setup.sync()
    middle = setup.clock()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    setup.sync()
    return StepTime(middle - start, setup.clock() - middle)


def median(values) -> float:
    return statistics.median(values)


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the numbers as JSON to PATH (what gpu_check reads); "
                             "default: printed only")


def write_json(path: Optional[str], data: dict) -> None:
    """Write `data` to path through a temporary name: a reader never sees half a file."""
    if path is None:
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def peak_flops(setup: Setup) -> Optional[float]:
    """The GPU's dense bf16 peak, FLOP/s; None on CPU or for a GPU not in the table."""
    if not setup.is_cuda:
        return None
    return flops.peak_flops_per_sec(torch.cuda.get_device_name(setup.device))


def mfu_value(setup: Setup, flops_per_sequence: float, sequences_per_sec: float) -> Optional[float]:
    """Model FLOPs utilization (0..1) against peak_flops; None where there is no peak."""
    peak = peak_flops(setup)
    if peak is None:
        return None
    return flops.model_flops_utilization(flops_per_sequence, sequences_per_sec, peak)


def mfu_line(setup: Setup, flops_per_sequence: float, sequences_per_sec: float,
             label: str) -> Optional[str]:
    """Model FLOPs utilization against the GPU's dense bf16 peak; None on CPU."""
    if not setup.is_cuda:
        return None
    peak = peak_flops(setup)
    if peak is None:
        return f"{label}: MFU n/a (no peak for {torch.cuda.get_device_name(setup.device)})"
    mfu = flops.model_flops_utilization(flops_per_sequence, sequences_per_sec, peak)
    return (f"{label}: {flops_per_sequence * sequences_per_sec / 1e12:.1f} TFLOP/s model "
            f"FLOPs = {100 * mfu:.1f}% MFU of {peak / 1e12:.0f} TFLOP/s dense bf16 peak")
