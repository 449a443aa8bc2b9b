"""Checkpoint cost: what publication when whole (sha256 + fsync + manifest) and verification add.

    python -m benchmarks.checkpoint_cost [--model-config bert-base] [--out DIR] [--reps 2]

Builds the model with LAMB as the trainer does on CPU (client optimizer, fp32), takes one
optimizer step so the optimizer holds its moments, then times, in one process:
- DeepSpeed's save_checkpoint alone (what a save cost before),
- checkpoint.save: the same, plus our rank file, sha256 of every file read back while it
  is in the page cache, fsync of every file and directory, the manifest, and publication,
- sha256 of the files alone (page cache warm),
- checkpoint.verify: what a resume checks before loading (sizes, sha256 of every file,
  a memory-mapped weights-only load of each .pt file),
- engine.load_checkpoint, for scale.
Each is repeated --reps times (median printed). The files go to --out (default: a new
directory under /tmp), which is removed afterwards.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bing_bert_pld import cli


def main(argv=None) -> int:
    parser = cli.ArgumentParser("benchmarks.checkpoint_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-config", default="bert-base", metavar="NAME|JSON",
                        help="packaged model name or model JSON")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where the checkpoints go, removed afterwards; default: a new "
                             "directory under /tmp")
    parser.add_argument("--reps", type=int, default=2, help="repetitions of each timing (median printed)")
    args = parser.parse_args(argv)

    from bing_bert_pld.run import checkpoint
    from bing_bert_pld.config import BertConfig
    from bing_bert_pld.ds_config import build_training_setup
    from bing_bert_pld.engine import init_distributed, initialize_engine
    from bing_bert_pld.model import BertForPreTraining

    init_distributed()
    config = BertConfig.from_json(args.model_config)
    setup = build_training_setup({"train_micro_batch_size_per_gpu": 1, "steps_per_print": 10**9,
                                  "optimizer": {"type": "Lamb", "params": {"lr": 1e-3}}},
                                 "benchmark", cuda_available=torch.cuda.is_available())
    engine = initialize_engine(BertForPreTraining(config), setup)
    for param in engine.module.parameters():  # one step: the optimizer now holds its moments
        param.grad = torch.randn_like(param) * 1e-3
    engine.optimizer.step()

    out = Path(args.out or tempfile.mkdtemp(prefix="checkpoint_cost_"))
    times: dict[str, list[float]] = {"deepspeed save_checkpoint": [], "checkpoint.save": [],
                                     "sha256 of the files": [], "checkpoint.verify": [],
                                     "engine.load_checkpoint": []}
    size, hash_cpu = 0, []
    try:
        for rep in range(args.reps):
            started = time.perf_counter()
            engine.save_checkpoint(str(out / "plain"), tag=f"plain{rep}", save_latest=False)
            times["deepspeed save_checkpoint"].append(time.perf_counter() - started)
            shutil.rmtree(out / "plain")

            root = out / "ours"
            rank_state = {"format": checkpoint.RANK_STATE_FORMAT, "rng": checkpoint.rng_state()}
            started = time.perf_counter()
            directory = checkpoint.save(engine, root, rep + 1, {"step": rep + 1, "samples": 0,
                                                                "elapsed_s": 0.0}, rank_state, {})
            times["checkpoint.save"].append(time.perf_counter() - started)
            size = sum(p.stat().st_size for p in directory.iterdir())

            started, cpu = time.perf_counter(), time.process_time()
            for path in directory.iterdir():
                checkpoint.file_digest(path)
            times["sha256 of the files"].append(time.perf_counter() - started)
            hash_cpu.append(time.process_time() - cpu)

            started = time.perf_counter()
            problem = checkpoint.verify(directory)
            times["checkpoint.verify"].append(time.perf_counter() - started)
            assert problem is None, problem

            started = time.perf_counter()
            engine.load_checkpoint(str(root), tag=directory.name)
            times["engine.load_checkpoint"].append(time.perf_counter() - started)
            shutil.rmtree(root)
    finally:
        shutil.rmtree(out, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    import os

    print(f"{args.model_config} with LAMB state: checkpoint of {size / 1e9:.2f} GB, "
          f"median of {args.reps}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, seconds in median.items():
        print(f"  {name:28s} {seconds:7.2f} s  ({size / 1e6 / seconds:6.0f} MB/s)")
    print(f"  sha256 CPU time (one core, unaffected by other load): "
          f"{statistics.median(hash_cpu):.2f} s ({size / 1e6 / statistics.median(hash_cpu):.0f} MB/s)")
    extra = median["checkpoint.save"] - median["deepspeed save_checkpoint"]
    print(f"  publication when whole adds {extra:.2f} s to a save "
          f"({100 * extra / median['deepspeed save_checkpoint']:.0f}%); "
          f"verification before a resume costs {median['checkpoint.verify']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
