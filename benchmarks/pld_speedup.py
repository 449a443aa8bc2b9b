"""PLD speedup: one model and batch, full depth vs PLD at steady state (theta = theta_bar).

    python -m benchmarks.pld_speedup [--model-config bert-base] [--batch-size 8] [--reps 6]

Full-depth and PLD training steps (forward, backward, optimizer) alternate (ABBA
order), each timed alone. The PLD gates are drawn by bing_bert_pld.pld exactly as in
training, so the depth of each PLD step is random; each PLD step is therefore compared
with the FLOPs predicted for its own gates:

    efficiency_k = (median full step time / PLD step time_k) / (full FLOPs / FLOPs_k)

and "measured / predicted" is the median efficiency. The measured speedup at the
expected depth is that efficiency times the FLOPs-predicted speedup at the expected
depth (embeddings, pooler and heads included: they are never skipped). The raw ratio,
median full time / mean PLD time, is printed too; it depends on the gates drawn.
"""

from __future__ import annotations

import statistics
import sys

import torch

from bing_bert_pld import cli, flops
from bing_bert_pld.model import BertForPreTraining, compile_layers_separately
from bing_bert_pld.pld import (LayerGates, expected_active_layers, keep_probabilities,
                               sample_gates)

from .common import (add_common_args, add_json_arg, describe_machine,
                     make_optimizer, median, mfu_line, mfu_value, peak_flops, setup_from_args,
                     synthetic_batch, timed_step, write_json)

PAPER_SAVING = 0.24  # time per sample, BERT-base seq 128 (Zhang & He 2020)


def main(argv=None) -> int:
    parser = cli.ArgumentParser("benchmarks.pld_speedup", description=__doc__.split("\n\n")[0])
    add_common_args(parser, batch_size=8, reps=6)
    add_json_arg(parser)
    parser.add_argument("--theta", type=float, default=0.5,
                        help="steady-state theta (= theta_bar): the last layer's keep probability")
    args = parser.parse_args(argv)
    setup = setup_from_args(args)
    config, device = setup.config, setup.device
    num_layers = config.num_hidden_layers

    model = BertForPreTraining(config).to(device).train()
    if args.compile_layers:
        compile_layers_separately(model.bert.encoder.layer, backend=args.compile_backend)
    optimizer = make_optimizer(model, device)
    generator = torch.Generator().manual_seed(args.seed)
    batch = synthetic_batch(config, args.batch_size, args.seq_len, args.max_pred,
                            generator).to(device)
    probs = keep_probabilities(args.theta, num_layers)

    def full_step():
        return timed_step(setup, lambda: model(batch).loss, optimizer)

    def pld_step(gates):
        return timed_step(setup, lambda: model(batch, layer_gates=gates).loss, optimizer)

    # Warm-up: allocator, thread pools, and (with --compile-layers) one compile per layer
    # and scale; gates with every layer kept exercise every layer's 1/p_i.
    all_kept = LayerGates(keep=(True,) * num_layers, keep_prob=probs)
    for _ in range(args.warmup):
        full_step()
        pld_step(all_kept)

    full_times, pld_times, pld_active = [], [], []
    for rep in range(args.reps):
        gates = sample_gates(args.theta, num_layers, args.seed, step=rep, micro_step=0)
        runs = [("full", None), ("pld", gates)]
        for name, g in (runs if rep % 2 == 0 else runs[::-1]):
            if name == "full":
                full_times.append(full_step())
            else:
                pld_times.append(pld_step(g))
                pld_active.append(g.num_active)

    f_full = flops.training_flops_per_sequence(config, args.seq_len, args.max_pred)
    f_expected = flops.training_flops_per_sequence(config, args.seq_len, args.max_pred, probs)
    predicted_expected = f_full / f_expected
    t_full = median([t.total for t in full_times])
    fb_full = median([t.forward_backward for t in full_times])
    efficiency, efficiency_fb = [], []
    for t, active in zip(pld_times, pld_active):
        keep = [1] * active + [0] * (num_layers - active)  # any k blocks: k - 1 full, 1 sparse
        predicted = f_full / flops.training_flops_per_sequence(
            config, args.seq_len, args.max_pred, keep)
        efficiency.append((t_full / t.total) / predicted)
        efficiency_fb.append((fb_full / t.forward_backward) / predicted)
    ratio, ratio_fb = median(efficiency), median(efficiency_fb)
    mean_active = statistics.fmean(pld_active)
    raw_pld = statistics.fmean(t.total for t in pld_times)
    predicted_realized = f_full / flops.training_flops_per_sequence(
        config, args.seq_len, args.max_pred, [mean_active / num_layers] * num_layers)
    speedup = ratio * predicted_expected
    f_out = flops.forward_flops(config, args.seq_len, args.max_pred)

    print(f"machine: {describe_machine(setup)}")
    print(f"model: {args.model_config} (L={num_layers}, H={config.hidden_size}), seq "
          f"{args.seq_len}, max_pred {args.max_pred}, batch {args.batch_size}, "
          f"{setup.dtype_name}, compile-layers {'on' if args.compile_layers else 'off'}, "
          f"theta {args.theta}, {args.reps} reps per side")
    print(f"training FLOPs per sequence: full {f_full / 1e9:.2f} G (encoder "
          f"{100 * f_out.encoder / f_out.total:.1f}%), PLD expected {f_expected / 1e9:.2f} G "
          f"({expected_active_layers(args.theta, num_layers):.2f} of {num_layers} layers)")
    print(f"full step median: {t_full:.3f} s (fwd+bwd {fb_full:.3f}, optimizer "
          f"{median([t.optimizer for t in full_times]):.3f})")
    print(f"PLD steps: mean {raw_pld:.3f} s (fwd+bwd "
          f"{statistics.fmean(t.forward_backward for t in pld_times):.3f}, optimizer "
          f"{statistics.fmean(t.optimizer for t in pld_times):.3f}), mean active layers "
          f"{mean_active:.2f} (per step {pld_active})")
    print("step times (s), full: " + " ".join(f"{t.total:.2f}" for t in full_times)
          + " | PLD: " + " ".join(f"{t.total:.2f}" for t in pld_times))
    print(f"raw speedup (median full / mean PLD): {t_full / raw_pld:.3f}x, predicted for "
          f"these gates {predicted_realized:.3f}x")
    print(f"predicted speedup from FLOPs at the expected depth: {predicted_expected:.3f}x")
    print(f"measured speedup at the expected depth: {speedup:.3f}x")
    print(f"measured / predicted: {ratio:.3f} (target >= 0.95; forward+backward only: "
          f"{ratio_fb:.3f})")
    saving = 1 - 1 / speedup
    print(f"time per sample: full {1e3 * t_full / args.batch_size:.1f} ms, PLD "
          f"{1e3 * t_full / args.batch_size / speedup:.1f} ms at the expected depth: "
          f"{100 * saving:.1f}% lower (paper: {100 * PAPER_SAVING:.0f}%)")
    for line in (mfu_line(setup, f_full, args.batch_size / t_full, "full depth"),
                 mfu_line(setup, f_expected, args.batch_size * speedup / t_full, "PLD")):
        if line:
            print(line)
    write_json(args.json, {
        "benchmark": "pld_speedup", "machine": describe_machine(setup),
        "model_config": args.model_config, "layers": num_layers, "hidden": config.hidden_size,
        "seq_len": args.seq_len, "max_pred": args.max_pred, "batch_size": args.batch_size,
        "precision": setup.dtype_name, "compile_layers": args.compile_layers,
        "compile_backend": args.compile_backend if args.compile_layers else None,
        "theta": args.theta, "reps": args.reps,
        "flops_per_sequence_full": f_full, "flops_per_sequence_pld_expected": f_expected,
        "full_step_s": t_full, "full_forward_backward_s": fb_full,
        "pld_step_mean_s": raw_pld, "pld_mean_active_layers": mean_active,
        "predicted_speedup": predicted_expected, "measured_speedup": speedup,
        "measured_over_predicted": ratio, "measured_over_predicted_forward_backward": ratio_fb,
        "time_per_sample_saving": saving,
        "samples_per_sec_full": args.batch_size / t_full,
        "peak_flops": peak_flops(setup),
        "mfu_full": mfu_value(setup, f_full, args.batch_size / t_full),
        "mfu_pld": mfu_value(setup, f_expected, args.batch_size * speedup / t_full),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
