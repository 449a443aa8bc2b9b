"""Which SDPA backend each attention path of the model takes, and how fast each backend is.

    python -m benchmarks.sdpa_backends [--model-config bert-base] [--batch-size 8] [--bf16]
                                       [--json PATH]

The inputs are the model's, at sequence length T with P prediction slots (heads and head
size from the model config):
- full: a micro-batch without padding, with no mask (the model's path since it reads
  `PretrainingBatch.has_padding`) and with an all-True boolean mask (the path before);
- padded: one row in ten padded, about as in real seq-128 shards (91% of rows are full
  there, and no micro-batch of 64 is free of padding), with the boolean mask (the model's
  path) and with the same mask as an additive float (0 / -inf); and "padded_split", the
  same rows sorted full ones first: the full rows without a mask, the rest with it, two
  calls (not the model's path: a measurement for deciding whether it would pay);
- sparse: the last block that runs, 1 + P queries against T keys, without and with the
  padding mask.
Each input runs forward and backward with the model's attention dropout, under
torch.nn.attention.sdpa_kernel forcing one backend (FLASH_ATTENTION, EFFICIENT_ATTENTION,
CUDNN_ATTENTION, MATH), and unforced ("default"), where the profiler names the kernel
SDPA picked. A backend that refuses an input is recorded with its error's first line.

Then the whole model: which kernel each of its attention calls ran (dense blocks and the
sparse last block) on an unpadded and a padded batch, and a training step's forward and
backward on an unpadded batch without the mask and with the all-True mask, alternating
(ABBA): "masked / mask-free" above 1 means the mask-free path is faster.
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bing_bert_pld import cli
from bing_bert_pld.batch import PretrainingBatch
from bing_bert_pld.model import BertForPreTraining

from .common import (add_common_args, add_json_arg, describe_machine, make_optimizer, median,
                     setup_from_args, synthetic_batch, timed_step, write_json)

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
# The aten op each backend dispatches to, as the profiler names it.
KERNEL_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def padded_lengths(batch_size: int, seq_len: int) -> torch.Tensor:
    """Every tenth row (from the fourth) shorter, by a spread of amounts; the rest full."""
    lengths = torch.full((batch_size,), seq_len)
    for row in range(3, batch_size, 10):
        lengths[row] = seq_len // 2 + (row * 37) % (seq_len // 2)
    return lengths


def kernels_ran(fn: Callable[[], object]) -> list[tuple[str, int]]:
    """(kernel, query length) of each SDPA call in fn(), read off the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:
        fn()
    found = []
    for event in prof.events():
        if event.name in KERNEL_OPS:
            shapes = event.input_shapes
            found.append((KERNEL_OPS[event.name], shapes[0][2] if shapes and shapes[0] else -1))
    return found


def time_it(fn: Callable[[], object], setup, reps: int, warmup: int) -> float:
    """Median seconds of fn() over reps runs after warmup untimed runs (CUDA events on a
    GPU: kernels of a fraction of a millisecond)."""
    for _ in range(warmup):
        fn()
    setup.sync()
    times = []
    for _ in range(reps):
        if setup.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            began = setup.clock()
            fn()
            times.append(setup.clock() - began)
    return median(times)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def attention_inputs(args, config, device, dtype):
    """The cases: name -> (description, function running forward + backward)."""
    heads, head_dim = config.num_attention_heads, config.head_dim
    batch, seq, queries = args.batch_size, args.seq_len, 1 + args.max_pred
    generator = torch.Generator(device="cpu").manual_seed(args.seed)

    def tensor(length):
        t = torch.randn(batch, heads, length, head_dim, generator=generator).to(device, dtype)
        return t.requires_grad_()

    q_full, k, v = tensor(seq), tensor(seq), tensor(seq)
    q_sparse = tensor(queries)
    lengths = padded_lengths(batch, seq)
    real = (torch.arange(seq)[None, :] < lengths[:, None]).to(device)
    bool_mask = real[:, None, None, :]  # (B, 1, 1, T), as the model builds it
    all_true = torch.ones_like(bool_mask)
    float_mask = torch.zeros(bool_mask.shape, dtype=dtype, device=device).masked_fill(
        ~bool_mask, float("-inf"))
    dropout = config.attention_probs_dropout_prob
    grad_full = torch.randn(q_full.shape, generator=generator).to(device, dtype)
    grad_sparse = torch.randn(q_sparse.shape, generator=generator).to(device, dtype)
    order = torch.argsort((lengths < seq).int(), stable=True)  # full rows first
    full_rows = int((lengths == seq).sum())
    q_sorted, k_sorted, v_sorted = (t.detach()[order].requires_grad_() for t in (q_full, k, v))
    mask_sorted = bool_mask[order]

    # autograd.grad, not backward: nothing accumulates into .grad between repetitions.
    def run(q, mask, grad):
        def fn():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            torch.autograd.grad(out, (q, k, v), grad)
        return fn

    def split():
        head = F.scaled_dot_product_attention(q_sorted[:full_rows], k_sorted[:full_rows],
                                              v_sorted[:full_rows], dropout_p=dropout)
        tail = F.scaled_dot_product_attention(q_sorted[full_rows:], k_sorted[full_rows:],
                                              v_sorted[full_rows:],
                                              attn_mask=mask_sorted[full_rows:], dropout_p=dropout)
        torch.autograd.grad(torch.cat([head, tail]), (q_sorted, k_sorted, v_sorted), grad_full)

    return {
        "full_no_mask": ("no padding, no mask (the model's path)", seq, run(q_full, None, grad_full)),
        "full_all_true_mask": ("no padding, all-True boolean mask (the path before)", seq,
                               run(q_full, all_true, grad_full)),
        "padded_bool_mask": ("padded rows, boolean mask (the model's path)", seq,
                             run(q_full, bool_mask, grad_full)),
        "padded_float_mask": ("padded rows, additive float mask", seq,
                              run(q_full, float_mask, grad_full)),
        "padded_split": (f"padded rows sorted: {full_rows} full ones without a mask, the rest "
                         "with it (two calls)", seq, split),
        "sparse_no_mask": (f"sparse last block, {queries} queries x {seq} keys, no mask "
                           "(unpadded batch)", queries, run(q_sparse, None, grad_sparse)),
        "sparse_bool_mask": (f"sparse last block, {queries} queries x {seq} keys, boolean "
                             "mask (padded batch)", queries, run(q_sparse, bool_mask, grad_sparse)),
    }, {"padded_rows": batch - full_rows, "rows": batch, "lengths": lengths.tolist()}


def measure_kernels(args, setup, dtype) -> tuple[list[dict], dict]:
    cases, padding = attention_inputs(args, setup.config, setup.device, dtype)
    rows = []
    for name, (description, q_len, fn) in cases.items():
        backends = ["default"] if name == "padded_split" else ["default", *BACKENDS]
        for backend in backends:
            row = {"case": name, "description": description, "q_len": q_len,
                   "k_len": args.seq_len, "backend": backend}
            # A refusing backend warns why (e.g. "Flash attention does not support non-null
            # attn_mask"), then raises "No viable backend": keep the warnings.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    if backend == "default":
                        row["ran"] = sorted({kernel for kernel, _ in kernels_ran(fn)})
                        row["ms"] = 1e3 * time_it(fn, setup, args.reps, args.warmup)
                    else:
                        with sdpa_kernel([BACKENDS[backend]]):
                            row["ms"] = 1e3 * time_it(fn, setup, args.reps, args.warmup)
                    row["accepted"] = True
                except RuntimeError as error:  # the backend refuses this input
                    reasons = [str(w.message).split(" (Triggered internally")[0].strip()[:200]
                               for w in caught if str(w.message).strip()]
                    row.update(accepted=False, ms=None, error=first_line(error),
                               reasons=list(dict.fromkeys(reasons))[:4])
            rows.append(row)
    return rows, padding


def model_paths(args, setup, model) -> dict:
    """Which kernel each attention call of a training forward ran, by query length."""
    config = setup.config
    generator = torch.Generator().manual_seed(args.seed)
    unpadded = synthetic_batch(config, args.batch_size, args.seq_len, args.max_pred, generator)
    lengths = padded_lengths(args.batch_size, args.seq_len)
    mask = (torch.arange(args.seq_len)[None, :] < lengths[:, None]).long()
    padded = PretrainingBatch(unpadded.input_ids * mask, mask, unpadded.segment_ids * mask,
                              unpadded.masked_lm_positions.clamp(max=int(lengths.min()) - 1),
                              unpadded.masked_lm_ids, unpadded.next_sentence_labels)
    assert unpadded.has_padding is False and padded.has_padding is True
    paths = {}
    for label, batch in (("unpadded batch", unpadded), ("padded batch", padded)):
        on_device = batch.to(setup.device)
        with setup.autocast():
            calls = kernels_ran(lambda: model(on_device).loss.backward())
        summary: dict[str, dict[str, int]] = {}
        for kernel, q_len in calls:
            where = "dense blocks" if q_len == args.seq_len else f"sparse last block (Q={q_len})"
            summary.setdefault(where, {}).setdefault(kernel, 0)
            summary[where][kernel] += 1
        paths[label] = summary
    model.zero_grad(set_to_none=False)
    return paths


def measure_model(args, setup, model) -> dict:
    """Training forward + backward on an unpadded batch: mask-free vs all-True mask."""
    generator = torch.Generator().manual_seed(args.seed)
    mask_free = synthetic_batch(setup.config, args.batch_size, args.seq_len, args.max_pred,
                                generator).to(setup.device)
    masked = PretrainingBatch(*(getattr(mask_free, name) for name in (
        "input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
        "next_sentence_labels")))
    masked.has_padding = None  # unknown: the model keeps the mask, as before
    assert mask_free.has_padding is False
    optimizer = make_optimizer(model, setup.device)
    sides = {"mask_free": mask_free, "masked": masked}
    for batch in sides.values():
        for _ in range(args.warmup):
            timed_step(setup, lambda: model(batch).loss, optimizer)
    times = {name: [] for name in sides}
    order = list(sides)
    for rep in range(args.model_reps):
        for name in (order if rep % 2 == 0 else order[::-1]):
            times[name].append(timed_step(setup, lambda: model(sides[name]).loss, optimizer))
    fb = {name: median([t.forward_backward for t in steps]) for name, steps in times.items()}
    return {"forward_backward_s": fb, "masked_over_mask_free": fb["masked"] / fb["mask_free"],
            "reps": args.model_reps,
            "spread": {name: [round(t.forward_backward, 4) for t in steps]
                       for name, steps in times.items()}}


def main(argv: Optional[list[str]] = None) -> int:
    parser = cli.ArgumentParser("benchmarks.sdpa_backends", description=__doc__.split("\n\n")[0])
    add_common_args(parser, batch_size=8, reps=10)
    add_json_arg(parser)
    parser.add_argument("--model-reps", type=int, default=4,
                        help="timed whole-model steps per side (the mask-free vs masked ratio)")
    args = parser.parse_args(argv)
    setup = setup_from_args(args)
    dtype = torch.bfloat16 if setup.dtype_name == "bf16" else torch.float32
    config = setup.config

    kernels, padding = measure_kernels(args, setup, dtype)
    model = BertForPreTraining(config).to(setup.device).train()
    paths = model_paths(args, setup, model)
    whole = measure_model(args, setup, model)

    print(f"machine: {describe_machine(setup)}")
    print(f"attention of {args.model_config}: {config.num_attention_heads} heads x "
          f"{config.head_dim}, batch {args.batch_size}, seq {args.seq_len}, "
          f"{1 + args.max_pred} sparse queries, {setup.dtype_name}, dropout "
          f"{config.attention_probs_dropout_prob}; padded cases: {padding['padded_rows']} of "
          f"{padding['rows']} rows padded; forward + backward, median of {args.reps}")
    width = max(len(row["case"]) for row in kernels)
    for row in kernels:
        if row["accepted"]:
            ran = f"  ran {', '.join(row['ran'])}" if "ran" in row else ""
            what = f"{row['ms']:8.3f} ms{ran}"
        else:
            what = "refused: " + ("; ".join(row["reasons"]) or row["error"])
        print(f"  {row['case']:<{width}}  {row['backend']:<9}  {what}")
    for label, summary in paths.items():
        print(f"model, {label}: " + "; ".join(
            f"{where}: " + ", ".join(f"{kernel} x{n}" for kernel, n in kernels_.items())
            for where, kernels_ in summary.items()))
    fb = whole["forward_backward_s"]
    print(f"model training step (forward + backward), unpadded batch: mask-free "
          f"{fb['mask_free']:.4f} s, all-True mask {fb['masked']:.4f} s: masked / mask-free "
          f"{whole['masked_over_mask_free']:.3f} (> 1: the mask-free path is faster)")
    write_json(args.json, {
        "benchmark": "sdpa_backends", "machine": describe_machine(setup),
        "torch": torch.__version__, "model_config": args.model_config,
        "heads": config.num_attention_heads, "head_dim": config.head_dim,
        "batch_size": args.batch_size, "seq_len": args.seq_len, "sparse_queries": 1 + args.max_pred,
        "precision": setup.dtype_name, "dropout": config.attention_probs_dropout_prob,
        "padding": padding, "kernels": kernels, "model_paths": paths, "model_step": whole,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
