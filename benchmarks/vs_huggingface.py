"""Our BertForPreTraining (PLD off) vs Hugging Face transformers' BertForPreTraining.

    python -m benchmarks.vs_huggingface [--model-config bert-base] [--batch-size 8]

Same size, batch and precision, in one process. Our model is built Post-LN
(pre_layer_norm=false), which is HF BERT's block, and loads HF's state dict as is
(parameter names are HF's; HF's `cls.predictions.decoder.bias` is its tied copy of
`cls.predictions.bias`). First the numerics: both models in eval mode on the same batch
must give the same loss (and gradients, printed). Then training steps (forward, backward, AdamW) alternate
(ABBA order), and the ratio of median step times is the samples/s ratio.

HF runs its "sdpa" attention (its fastest built-in). Its MLM head is dense: every
position goes through the transform and the vocabulary decoder, while ours gathers the
masked positions first, which is most of the difference in FLOPs. Ours also runs the
last encoder block for [CLS] and the masked positions only (keys and values still
cover every token), which is exact: no other position's output reaches a loss.
"""

from __future__ import annotations

import sys

import torch
import transformers

from bing_bert_pld import cli, flops
from bing_bert_pld.hf_adapter import hf_config
from bing_bert_pld.model import BertForPreTraining, compile_layers_separately

from .common import (add_common_args, add_json_arg, describe_machine,
                     make_optimizer, median, mfu_line, mfu_value, peak_flops, setup_from_args,
                     synthetic_batch, timed_step, write_json)

HF_TIED_ONLY = ("cls.predictions.decoder.bias",)  # HF's alias of cls.predictions.bias
LOSS_TOLERANCE = 1e-4  # fp32; reductions run in a different order in the two models


def hf_model_like(config, device) -> torch.nn.Module:
    """transformers' BertForPreTraining with our Post-LN config (the export's mapping)."""
    hf = hf_config(config)
    hf._attn_implementation = "sdpa"
    return transformers.BertForPreTraining(hf).to(device)


def hf_labels(batch, seq_len: int) -> torch.Tensor:
    """HF's dense MLM labels: the masked id at each masked position, -100 elsewhere."""
    labels = torch.full((batch.size, seq_len), -100, dtype=torch.long,
                        device=batch.input_ids.device)
    real = batch.masked_lm_positions != 0
    rows = torch.arange(batch.size, device=labels.device)[:, None].expand_as(real)
    labels[rows[real], batch.masked_lm_positions[real]] = batch.masked_lm_ids[real]
    return labels


def main(argv=None) -> int:
    parser = cli.ArgumentParser("benchmarks.vs_huggingface", description=__doc__.split("\n\n")[0])
    add_common_args(parser, batch_size=8, reps=5)
    add_json_arg(parser)
    parser.add_argument("--compile-hf", action="store_true",
                        help="also compile HF's encoder layers (--compile_layers is ours only)")
    args = parser.parse_args(argv)
    setup = setup_from_args(args, pre_layer_norm=False)  # HF BERT is Post-LN
    config, device = setup.config, setup.device

    hf = hf_model_like(config, device)
    ours = BertForPreTraining(config).to(device)
    state = {k: v for k, v in hf.state_dict().items() if k not in HF_TIED_ONLY}
    ours.load_state_dict(state, strict=True)

    generator = torch.Generator().manual_seed(args.seed)
    batch = synthetic_batch(config, args.batch_size, args.seq_len, args.max_pred,
                            generator).to(device)
    labels = hf_labels(batch, args.seq_len)

    def hf_forward():
        return hf(input_ids=batch.input_ids, attention_mask=batch.input_mask,
                  token_type_ids=batch.segment_ids, labels=labels,
                  next_sentence_label=batch.next_sentence_labels).loss

    def ours_forward():
        return ours(batch).loss

    # Numerics first, in fp32 and eval mode (no dropout): the same weights, the same loss.
    # Without TF32, which setup turns on for the timed steps: with its 10-bit mantissa the
    # two models' different summation orders could exceed the 1e-4 tolerance by rounding.
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    ours.eval(), hf.eval()
    loss_ours, loss_hf = ours_forward(), hf_forward()
    loss_ours.backward(), loss_hf.backward()
    torch.backends.cuda.matmul.allow_tf32 = tf32
    hf_params = dict(hf.named_parameters())
    grad_difference = max((p.grad - hf_params[name].grad).abs().max().item()
                          for name, p in ours.named_parameters())
    ours.zero_grad(set_to_none=True), hf.zero_grad(set_to_none=True)
    loss_ours, loss_hf = loss_ours.item(), loss_hf.item()
    difference = abs(loss_ours - loss_hf)

    if args.compile_layers:
        compile_layers_separately(ours.bert.encoder.layer, backend=args.compile_backend)
    if args.compile_hf:
        compile_layers_separately(hf.bert.encoder.layer, backend=args.compile_backend)
    ours.train(), hf.train()
    sides = {"ours": (ours_forward, make_optimizer(ours, device)),
             "hf": (hf_forward, make_optimizer(hf, device))}
    for _ in range(args.warmup):
        for forward, optimizer in sides.values():
            timed_step(setup, forward, optimizer)
    times = {name: [] for name in sides}
    order = list(sides)
    for rep in range(args.reps):
        for name in (order if rep % 2 == 0 else order[::-1]):
            times[name].append(timed_step(setup, *sides[name]))

    t = {name: median([s.total for s in steps]) for name, steps in times.items()}
    fb = {name: median([s.forward_backward for s in steps]) for name, steps in times.items()}
    f_ours = flops.training_flops_per_sequence(config, args.seq_len, args.max_pred)
    f_hf = flops.training_flops_per_sequence(config, args.seq_len, args.seq_len,
                                             sparse_outputs=False)  # dense head and last block
    print(f"machine: {describe_machine(setup)}")
    print(f"model: {args.model_config} Post-LN (L={config.num_hidden_layers}, "
          f"H={config.hidden_size}), seq {args.seq_len}, max_pred {args.max_pred}, batch "
          f"{args.batch_size}, {setup.dtype_name}, compiled layers: ours "
          f"{'yes' if args.compile_layers else 'no'}, HF {'yes' if args.compile_hf else 'no'}; "
          f"transformers {transformers.__version__}, {args.reps} reps per side")
    print(f"numerics (fp32, eval, same weights and batch): loss ours {loss_ours:.6f}, "
          f"HF {loss_hf:.6f}, |difference| {difference:.2e} "
          f"({'equal' if difference <= LOSS_TOLERANCE else 'NOT equal'} within "
          f"{LOSS_TOLERANCE:g}); max |gradient difference| {grad_difference:.2e}")
    for name, label in (("ours", "ours"), ("hf", "HF  ")):
        print(f"{label}: median step {t[name]:.3f} s (fwd+bwd {fb[name]:.3f}), "
              f"{args.batch_size / t[name]:.2f} samples/s")
    print(f"training FLOPs per sequence: ours {f_ours / 1e9:.2f} G (sparse MLM head and last "
          f"block), HF {f_hf / 1e9:.2f} G (dense): FLOPs ratio {f_hf / f_ours:.3f}")
    print(f"samples/s ours / HF: {t['hf'] / t['ours']:.3f}x (forward+backward only "
          f"{fb['hf'] / fb['ours']:.3f}x; target >= 1.3x CPU, >= 1.5x GPU)")
    for line in (mfu_line(setup, f_ours, args.batch_size / t["ours"], "ours"),
                 mfu_line(setup, f_hf, args.batch_size / t["hf"], "HF (its dense FLOPs)")):
        if line:
            print(line)
    write_json(args.json, {
        "benchmark": "vs_huggingface", "machine": describe_machine(setup),
        "transformers": transformers.__version__,
        "model_config": args.model_config, "layers": config.num_hidden_layers,
        "hidden": config.hidden_size, "seq_len": args.seq_len, "max_pred": args.max_pred,
        "batch_size": args.batch_size, "precision": setup.dtype_name,
        "compile_layers": args.compile_layers, "compile_hf": args.compile_hf,
        "compile_backend": args.compile_backend if args.compile_layers or args.compile_hf else None,
        "reps": args.reps, "loss_ours": loss_ours, "loss_hf": loss_hf,
        "loss_difference": difference, "loss_equal": difference <= LOSS_TOLERANCE,
        "max_gradient_difference": grad_difference,
        "step_s": t, "forward_backward_s": fb,
        "samples_per_sec": {name: args.batch_size / t[name] for name in t},
        "speedup": t["hf"] / t["ours"], "speedup_forward_backward": fb["hf"] / fb["ours"],
        "flops_per_sequence": {"ours": f_ours, "hf": f_hf}, "flops_ratio": f_hf / f_ours,
        "peak_flops": peak_flops(setup),
        "mfu": {"ours": mfu_value(setup, f_ours, args.batch_size / t["ours"]),
                "hf": mfu_value(setup, f_hf, args.batch_size / t["hf"])},
    })
    return 0 if difference <= LOSS_TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
