"""Data loading: samples/s the HDF5 loader delivers per rank vs what training consumes.

    python -m benchmarks.data_loader [--data DIR] [--compression gzip] [--batch-size 4]
                                     [--workers 1 2 4]

Reads `--data` (a shard directory, e.g. DATA/train) or, without it, a synthetic shard
set written by tests/shard_factory.py in the pretraining schema (gzip with 64-row
chunks, as data_prep writes, or uncompressed). The loader is bing_bert_pld.data.loader's
PretrainingDataLoader as the trainer builds it, as rank 0 of --world-size ranks, and is
timed alone, once per `--workers` count (num_workers: 1 = one reader thread, n > 1 = n
reader processes, which only help where the machine has cores for them). The first
batch is not timed: its latency, printed as start-up, includes starting the readers
(and, the first time in a process, the forkserver). Training consumption is measured
with training steps of the model at the same micro-batch (or given with
--train-samples-per-sec). For GPU planning it also prints what a GPU at a given MFU
would consume.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from bing_bert_pld import cli, flops
from bing_bert_pld.data.loader import PretrainingDataLoader
from bing_bert_pld.shard_validation import validate_shard_set
from bing_bert_pld.model import BertForPreTraining

from .common import (add_common_args, describe_machine, make_optimizer, median,
                     setup_from_args, synthetic_batch, timed_step)

TARGET_RATIO = 10.0
H100_BF16_PEAK = flops.peak_flops_per_sec("H100")  # the SXM part's dense bf16 peak


def loader_samples_per_sec(info, micro_batch: int, world_size: int, batches: int,
                           prefetch: int, seed: int, workers: int) -> tuple[float, float]:
    """(seconds to the first batch, samples/s over the next `batches`)."""
    started = time.perf_counter()
    with PretrainingDataLoader(info, micro_batch, rank=0, world_size=world_size, seed=seed,
                               prefetch_batches=prefetch, num_workers=workers) as loader:
        next(loader)  # reader start and first shard open are not steady state
        start = time.perf_counter()
        for _ in range(batches):
            next(loader)
        return start - started, batches * micro_batch / (time.perf_counter() - start)


def training_samples_per_sec(setup, args) -> float:
    model = BertForPreTraining(setup.config).to(setup.device).train()
    optimizer = make_optimizer(model, setup.device)
    batch = synthetic_batch(setup.config, args.batch_size, args.seq_len, args.max_pred,
                            torch.Generator().manual_seed(args.seed)).to(setup.device)
    for _ in range(args.warmup):
        timed_step(setup, lambda: model(batch).loss, optimizer)
    steps = [timed_step(setup, lambda: model(batch).loss, optimizer).total
             for _ in range(args.reps)]
    return args.batch_size / median(steps)


def main(argv=None) -> int:
    parser = cli.ArgumentParser("benchmarks.data_loader", description=__doc__.split("\n\n")[0])
    add_common_args(parser, batch_size=4, reps=3)
    parser.add_argument("--data", default=None, help="shard directory; default: synthetic")
    parser.add_argument("--compression", default="gzip", choices=["gzip", "none"],
                        help="of the synthetic shards (ignored with --data)")
    parser.add_argument("--shards", type=int, default=4, help="synthetic shards")
    parser.add_argument("--rows-per-shard", type=int, default=2048, help="synthetic rows")
    parser.add_argument("--world-size", type=int, default=1,
                        help="the loader is rank 0 of this many (it reads 1/W of the rows)")
    parser.add_argument("--loader-batches", type=int, default=1000,
                        help="batches timed (may cross epochs, as training does)")
    parser.add_argument("--prefetch", type=int, default=8, metavar="BATCHES", aliases=("--prefetch_batches",),
                        help="batches read ahead, as the trainer's --prefetch_batches")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], aliases=("--loader_workers",),
                        help="loader num_workers to time, one run each")
    parser.add_argument("--train-samples-per-sec", type=float, default=None,
                        help="skip measuring the training step; use this consumption "
                             "(samples/s); default: measured")
    parser.add_argument("--gpu-mfu", type=float, default=0.4,
                        help="model FLOPs utilization (a fraction) of the GPU reference line")
    args = parser.parse_args(argv)
    setup = setup_from_args(args)
    config = setup.config

    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from shard_factory import write_shard_set

            started = time.perf_counter()
            write_shard_set(tmp, args.shards, args.rows_per_shard, args.seq_len,
                            args.max_pred, config.vocab_size, args.seed,
                            compression=None if args.compression == "none" else "gzip")
            source = (f"synthetic: {args.shards} x {args.rows_per_shard} rows, "
                      f"{args.compression} (written in {time.perf_counter() - started:.1f} s)")
            data = tmp
        else:
            data, source = args.data, args.data
        info = validate_shard_set(data, args.seq_len, args.max_pred, config.vocab_size,
                                  check_values=False)
        runs = {w: loader_samples_per_sec(info, args.batch_size, args.world_size,
                                          args.loader_batches, args.prefetch, args.seed, w)
                for w in args.workers}

    if args.train_samples_per_sec is not None:
        consumed, how = args.train_samples_per_sec, "given"
    else:
        consumed = training_samples_per_sec(setup, args)
        how = f"measured, {args.model_config} {setup.dtype_name}, median of {args.reps} steps"
    f_seq = flops.training_flops_per_sequence(config, args.seq_len, args.max_pred)
    gpu = args.gpu_mfu * H100_BF16_PEAK / f_seq

    def verdict(ratio: float) -> str:
        return f"{ratio:.2f}x ({'met' if ratio >= TARGET_RATIO else 'NOT met'})"

    print(f"machine: {describe_machine(setup)} | {os.cpu_count()} CPU cores")
    print(f"data: {source}; seq {args.seq_len}, max_pred {args.max_pred}, micro-batch "
          f"{args.batch_size}, rank 0 of {args.world_size}, {args.loader_batches} batches timed")
    print(f"training consumes: {consumed:.2f} samples/s per rank ({how})")
    print(f"GPU reference: {args.model_config} on an H100 at {100 * args.gpu_mfu:.0f}% MFU "
          f"consumes {gpu:.0f} samples/s")
    print(f"target: loader / consumption >= {TARGET_RATIO:.0f}x")
    for workers, (startup, delivered) in runs.items():
        print(f"workers {workers}: start-up {startup:.2f} s, loader delivers {delivered:.0f} "
              f"samples/s per rank; loader / training {verdict(delivered / consumed)}; "
              f"loader / GPU {verdict(delivered / gpu)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
