"""benchmarks/gpu_hours.py: the GPU-hour estimate is the FLOPs counts summed step by step."""

import math

import pytest

from benchmarks import gpu_hours
from bing_bert_pld import flops, pld
from bing_bert_pld.config import BertConfig

BASE = BertConfig.from_json("bert-base")


def test_the_baseline_is_steps_times_batch_times_the_flops_of_a_sequence():
    row = gpu_hours.phase_flops(BASE, gpu_hours.Phase("p1", 128, 20, 200_000), 4096, schedule=None)
    assert row.sequences == 819_200_000
    assert row.full_total == row.pld_total == 819_200_000 * flops.training_flops_per_sequence(BASE, 128, 20)
    assert round(row.full_per_sequence / 1e9, 2) == 66.02  # benchmarks/README.md's count


def test_pld_sums_each_steps_expected_flops():
    """Averaging the layer runs over the steps equals summing every step's expected FLOPs
    (FLOPs are linear in the blocks run and in P(at least one runs))."""
    schedule = pld.PLDSchedule(0.5, 0.05)
    row = gpu_hours.phase_flops(BASE, gpu_hours.Phase("p", 512, 80, 60), 32, schedule)
    by_step = sum(32 * flops.training_flops_per_sequence(
        BASE, 512, 80, keep=pld.keep_probabilities(schedule.theta(t), 12)) for t in range(60))
    assert math.isclose(row.pld_total, by_step, rel_tol=1e-12)
    assert row.pld_total < row.full_total


def test_gpu_hours_is_flops_over_peak_times_mfu():
    assert gpu_hours.gpu_hours(3.6e18, 1e15, 0.5) == pytest.approx(2.0, rel=1e-15)


def test_the_printed_estimate(capsys):
    assert gpu_hours.main(["--gpu", "A100", "--mfu", "0.45"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ESTIMATED GPU-hours, bert-base (12 layers, hidden 768), batch 4096, "
                             "PLD theta_bar 0.5 gamma 0.001; MFU assumed 45% (not measured)")
    total = 4096 * (200_000 * flops.training_flops_per_sequence(BASE, 128, 20)
                    + 12_500 * flops.training_flops_per_sequence(BASE, 512, 80))
    baseline_total = next(line for line in out if line.startswith("total "))
    assert baseline_total.split()[-1] == f"{total / (312e12 * 0.45) / 3600:,.0f}" == "136"
    assert out[-1].startswith(f"total training FLOPs: baseline {total:.3e}, PLD ")


def test_a_bad_mfu_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_hours.main(["--mfu", "45"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("error: --mfu 45.0: expected a fraction in (0, 1], e.g. 0.4")
