"""Estimate the GPU-hours of two-phase BERT pretraining, with and without PLD, from FLOPs and an MFU.

    python -m benchmarks.gpu_hours [--model-config bert-base] [--mfu 0.30 0.45] [--gpu A100 H100]

Phase 1: --phase1-steps (200,000) x --batch (4,096) sequences of 128 tokens, 20 predictions;
phase 2: --phase2-steps (12,500) x --batch of 512 tokens, 80 predictions (the step counts
the ds_configs' LR schedules assume). Training FLOPs per sequence are bing_bert_pld.flops'
(matmuls only, 3 x forward, sparse MLM head and last block). Under PLD every step's
expected FLOPs follow theta(t) of bing_bert_pld.pld (--theta-bar 0.5, --gamma 0.001),
summed over the steps; phase 2 starts its own step counter, so theta starts again at 1
(launch/two_phase.sh's default; PHASE2_KEEP_OPTIMIZER=1 continues it instead).

GPU-hours = FLOPs / (dense bf16 peak x MFU) / 3600. Nothing here was measured on a GPU:
the MFU is an assumption (NVIDIA's BERT-large at seq 128 on an A100 runs at about 45%),
and PLD is assumed to keep the baseline's MFU, which overstates its saving a little: a
step's optimizer update, data loading and gradient all-reduce are not skipped with the
layers (the paper measured 24% less time per sample against 25% fewer FLOPs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from bing_bert_pld import cli, flops, pld
from bing_bert_pld.config import BertConfig

GPUS = {"A100": "A100", "H100": "H100 SXM"}  # name -> the device name flops' peak table knows


@dataclass(frozen=True)
class Phase:
    name: str
    seq_len: int
    max_pred: int
    steps: int


@dataclass(frozen=True)
class PhaseFlops:
    phase: Phase
    sequences: int
    full_per_sequence: float  # training FLOPs of one sequence at full depth
    pld_per_sequence: float  # the same, averaged over the phase's steps under PLD

    @property
    def full_total(self) -> float:
        return self.sequences * self.full_per_sequence

    @property
    def pld_total(self) -> float:
        return self.sequences * self.pld_per_sequence


def mean_layer_runs(num_layers: int, steps: int, schedule: pld.PLDSchedule) -> flops.LayerRuns:
    """The expected blocks run per sequence and P(at least one runs), averaged over steps
    0 .. steps - 1: FLOPs are linear in both, so this average gives the phase's FLOPs."""
    mean = any_runs = 0.0
    for step in range(steps):
        runs = flops.LayerRuns.from_keep(pld.keep_probabilities(schedule.theta(step), num_layers))
        mean += runs.mean
        any_runs += runs.any
    return flops.LayerRuns(mean / steps, any_runs / steps)


def phase_flops(config: BertConfig, phase: Phase, batch: int,
                schedule: Optional[pld.PLDSchedule]) -> PhaseFlops:
    full = flops.training_flops_per_sequence(config, phase.seq_len, phase.max_pred)
    runs = mean_layer_runs(config.num_hidden_layers, phase.steps, schedule) if schedule else None
    with_pld = flops.training_flops_per_sequence(config, phase.seq_len, phase.max_pred, keep=runs)
    return PhaseFlops(phase, phase.steps * batch, full, with_pld)


def gpu_hours(total_flops: float, peak_flops_per_sec: float, mfu: float) -> float:
    return total_flops / (peak_flops_per_sec * mfu) / 3600.0


def main(argv=None) -> int:
    parser = cli.ArgumentParser("benchmarks.gpu_hours", description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", default="bert-base", metavar="NAME|JSON",
                        help="packaged name or JSON (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=4096, metavar="SAMPLES",
                        help="sequences per optimizer step (default: %(default)s)")
    parser.add_argument("--phase1-steps", type=int, default=200_000, metavar="STEPS",
                        help="seq-128 optimizer steps (default: %(default)s)")
    parser.add_argument("--phase2-steps", type=int, default=12_500, metavar="STEPS",
                        help="seq-512 optimizer steps (default: %(default)s)")
    parser.add_argument("--theta-bar", type=float, default=0.5, help="PLD theta (default: %(default)s)")
    parser.add_argument("--gamma", type=float, default=0.001, help="PLD gamma per step (default: %(default)s)")
    parser.add_argument("--mfu", type=float, nargs="+", default=[0.30, 0.45],
                        help="assumed model FLOPs utilizations, fractions (default: 0.30 0.45)")
    parser.add_argument("--gpu", nargs="+", default=list(GPUS), choices=list(GPUS),
                        help="GPUs by dense bf16 peak")
    args = parser.parse_args(argv)
    for mfu in args.mfu:
        if not 0.0 < mfu <= 1.0:
            parser.error(f"--mfu {mfu}: expected a fraction in (0, 1], e.g. 0.4")

    config = BertConfig.from_json(args.model_config)
    schedule = pld.PLDSchedule(args.theta_bar, args.gamma)
    phases = [Phase("phase 1", 128, 20, args.phase1_steps), Phase("phase 2", 512, 80, args.phase2_steps)]
    rows = [phase_flops(config, phase, args.batch, schedule) for phase in phases]
    peaks = {gpu: flops.peak_flops_per_sec(GPUS[gpu]) for gpu in args.gpu}

    print(f"ESTIMATED GPU-hours, {args.model_config} ({config.num_hidden_layers} layers, hidden "
          f"{config.hidden_size}), batch {args.batch}, PLD theta_bar {args.theta_bar} gamma {args.gamma}; "
          f"MFU assumed {', '.join(f'{m:.0%}' for m in args.mfu)} (not measured), dense bf16 peaks "
          + ", ".join(f"{g} {p / 1e12:.0f} TFLOP/s" for g, p in peaks.items()))
    mfu_columns = [f"{g} @{m:.0%}" for g in peaks for m in args.mfu]
    print(f"{'':<8} {'sequences':>13} {'GFLOP/seq':>10} {'PLD GFLOP/seq':>13} {'FLOPs saved':>11} "
          f"{'':>9} " + " ".join(f"{c:>11}" for c in mfu_columns))
    totals = {"baseline": 0.0, "PLD": 0.0}
    for row in rows:
        for arm, total in (("baseline", row.full_total), ("PLD", row.pld_total)):
            totals[arm] += total
            hours = [gpu_hours(total, peaks[g], m) for g in peaks for m in args.mfu]
            lead = (f"{row.phase.name:<8} {row.sequences:>13,} {row.full_per_sequence / 1e9:>10.2f} "
                    f"{row.pld_per_sequence / 1e9:>13.2f} {1 - row.pld_per_sequence / row.full_per_sequence:>11.1%}"
                    if arm == "baseline" else " " * 59)
            print(f"{lead} {arm:>9} " + " ".join(f"{h:>11,.0f}" for h in hours))
    for arm, total in totals.items():
        hours = [gpu_hours(total, peaks[g], m) for g in peaks for m in args.mfu]
        saved = f"{1 - totals['PLD'] / totals['baseline']:>11.1%}" if arm == "PLD" else " " * 11
        print(f"{'total' if arm == 'baseline' else '':<8} {'':>13} {'':>10} {'':>13} {saved} {arm:>9} "
              + " ".join(f"{h:>11,.0f}" for h in hours))
    print(f"total training FLOPs: baseline {totals['baseline']:.3e}, PLD {totals['PLD']:.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
