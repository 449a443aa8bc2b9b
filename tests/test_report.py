"""The run comparison report, on small synthetic TensorBoard event files.

All scalar values are exact in float32 (the event format), so the summary numbers are
compared with ==, against values worked out by hand from the events below.
"""

import json

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from bing_bert_pld.report import cli, events, numbers, plots, text

PLOTS = ("loss_vs_time.png", "loss_vs_samples.png", "pld.png", "throughput.png")


def write_run(root, scalars):
    """scalars: {tag: [(step, value), ...]} written to root/tensorboard like the trainer."""
    writer = SummaryWriter(log_dir=str(root / "tensorboard"))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()
    return root


def baseline_scalars():
    # 32 samples and 1 s per step, logged every 2 steps up to step 10.
    steps = range(2, 11, 2)
    return {
        "train/samples": [(s, 32 * s) for s in steps],
        "perf/elapsed_s": [(s, 1.0 * s) for s in steps],
        "perf/samples_per_sec": [(s, 32.0) for s in steps],
        "train/loss": [(s, 10.0 - 0.5 * s) for s in steps],
        "val/loss": [(5, 6.0), (10, 5.0)],
    }


def pld_scalars():
    # 0.75 s per step, two steps longer; val at step 3, between two elapsed logs.
    steps = range(2, 13, 2)
    return {
        "train/samples": [(s, 32 * s) for s in steps],
        "perf/elapsed_s": [(s, 0.75 * s) for s in steps],
        "perf/samples_per_sec": [(s, 32 / 0.75) for s in steps],
        "train/loss": [(s, 9.0 - 0.5 * s) for s in steps],
        "val/loss": [(3, 6.5), (8, 5.0), (12, 4.5)],
        "pld/theta": [(s, 1.0 - 0.03125 * s) for s in steps],
        "pld/expected_active_layers": [(s, 12.0 - 0.25 * s) for s in steps],
        "pld/active_layers": [(s, 12.0 - 0.25 * s) for s in steps],
        "pld/encoder_flops_skipped_frac": [(s, 0.015625 * s) for s in steps],
    }


@pytest.fixture
def two_runs(tmp_path):
    return (write_run(tmp_path / "baseline", baseline_scalars()),
            write_run(tmp_path / "pld", pld_scalars()))


def test_summary_numbers_exact(two_runs):
    runs = [events.load_run(p) for p in reversed(two_runs)]  # PLD first: baseline found
    summary = numbers.summarize(runs)
    assert summary.baseline == "baseline"
    assert summary.target_val_loss == 5.0
    pld, base = summary.runs
    assert (pld.name, pld.uses_pld, base.uses_pld) == ("pld", True, False)
    assert base.time_per_sample_s == 10.0 / 320
    assert pld.time_per_sample_s == 9.0 / 384
    assert pld.time_saving_pct == 100 * (1 - (9.0 / 384) / (10.0 / 320))  # 25%
    assert pld.time_saving_pct == 25.0
    assert base.time_saving_pct == 0.0
    assert pld.encoder_flops_skipped_frac == 0.1875 and base.encoder_flops_skipped_frac is None
    assert (base.final_val_loss, pld.final_val_loss) == (5.0, 4.5)
    # Baseline reaches 5.0 at its step-10 evaluation (10 s); PLD at step 8 (6 s).
    assert base.time_to_target_s == 10.0 and pld.time_to_target_s == 6.0
    assert pld.time_to_target_speedup == 10.0 / 6.0 and base.time_to_target_speedup == 1.0
    assert (pld.samples, pld.elapsed_s, pld.last_step) == (384, 9.0, 12)
    assert any("differ in length" in m for m in summary.messages)


def test_val_steps_between_time_logs_are_interpolated(two_runs):
    run = events.load_run(two_runs[1])
    times, losses = numbers.on_axis(run, "val/loss", "perf/elapsed_s")
    assert times.tolist() == [2.25, 6.0, 9.0]  # step 3 lies between the logs at 2 and 4
    assert losses.tolist() == [6.5, 5.0, 4.5]
    # Past the last log the time grows at the last rate.
    assert numbers.interpolate([14, 1], np.array([2, 4]), np.array([1.5, 3.0])).tolist() == [
        10.5, 0.75]


def test_cli_writes_plots_and_summary(two_runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main([str(p) for p in two_runs] + ["--out", str(out)]) == 0
    for name in PLOTS:
        assert (out / name).stat().st_size > 1000, name
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "summary.md").read_text()
    assert "**baseline**" in md and "25.0%" in md and "1.67x" in md and "18.8%" in md
    assert md in capsys.readouterr().out
    data = json.loads((out / "summary.json").read_text())
    assert data["runs"][1]["time_to_target_s"] == 6.0


def test_print_comparison_prints_each_time_per_sample_and_the_saving(two_runs, tmp_path, capsys):
    """The lines launch/quickstart.sh ends with: 10 s / 320 samples, 9 s / 384 samples."""
    argv = [str(p) for p in reversed(two_runs)] + ["--out", str(tmp_path / "o"), "--print_comparison"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.endswith(
        "\n\ntime per sample,      pld: 23.44 ms (384 samples in 9 s)\n"
        "time per sample, baseline: 31.25 ms (320 samples in 10 s)\n"
        "PLD saved 7.81 ms per sample (25.0% of the baseline's time per sample); "
        "encoder FLOPs skipped: 18.8%\n")
    assert cli.main(argv + ["--baseline", "pld"]) == 0  # the slower run compared: a loss
    assert capsys.readouterr().out.endswith(
        "PLD saved no time here: 7.81 ms per sample slower (33.3%); encoder FLOPs skipped: n/a. "
        "Timings on a busy machine are noisy: compare runs made on an idle one, or train "
        "longer.\n")
    assert cli.main(argv[:-1]) == 0  # without the flag, the summary only
    assert "time per sample,      pld:" not in capsys.readouterr().out


def test_explicit_baseline_and_unknown_name(two_runs, tmp_path, capsys):
    runs = [events.load_run(p) for p in two_runs]
    summary = numbers.summarize(runs, baseline_name="pld")
    assert summary.target_val_loss == 4.5
    base, pld = summary.runs
    assert base.target_reached is False and base.time_to_target_s is None
    assert pld.time_to_target_s == 9.0 and pld.time_to_target_speedup == 1.0
    assert any("never reached" in m for m in summary.messages)
    assert "not reached" in text.format_markdown(summary)
    code = cli.main([str(p) for p in two_runs] + ["--out", str(tmp_path / "o"),
                                                     "--baseline", "nope"])
    assert code == 2 and "not one of the runs" in capsys.readouterr().err


def test_single_run(two_runs, tmp_path):
    summary, written = cli.write_report([events.load_run(two_runs[1])], tmp_path / "one")
    assert summary.baseline == "pld"
    assert any("only one run" in m for m in summary.messages)
    assert summary.runs[0].time_saving_pct == 0.0
    assert {p.name for p in written} >= set(PLOTS)


def test_missing_scalars_give_messages_not_crashes(tmp_path):
    sparse = write_run(tmp_path / "sparse", {"train/loss": [(1, 3.0), (2, 2.5)]})
    full = write_run(tmp_path / "base", baseline_scalars())
    summary, written = cli.write_report(
        [events.load_run(sparse), events.load_run(full)], tmp_path / "out", "base")
    row = summary.runs[0]
    assert row.time_per_sample_s is None and row.time_to_target_s is None
    assert row.target_reached is None and row.last_step == 2
    md = text.format_markdown(summary)
    assert "sparse: missing val/loss, train/samples, perf/elapsed_s" in md
    assert "plot skipped: pld.png" in md
    assert text.format_time_saved(summary) == (
        "time per sample,   sparse: n/a (n/a samples in n/a)\n"
        "time per sample,     base: 31.25 ms (320 samples in 10 s)\n"
        "PLD saved: n/a (no time per sample to compare); encoder FLOPs skipped: n/a\n")
    assert {p.name for p in written} >= {"loss_vs_time.png", "throughput.png"}
    assert not (tmp_path / "out" / "pld.png").exists()


def test_restart_rewrites_steps(tmp_path):
    """A resumed run writes steps again into a new event file: the last value wins."""
    write_run(tmp_path / "r", {"val/loss": [(2, 4.0), (4, 3.0)]})
    write_run(tmp_path / "r", {"val/loss": [(4, 2.0), (6, 1.0)]})
    series = events.load_run(tmp_path / "r").get("val/loss")
    assert series.steps.tolist() == [2, 4, 6] and series.values.tolist() == [4.0, 2.0, 1.0]
    # The run's own event folder stands for the run: same name, same scalars.
    by_events = events.load_run(tmp_path / "r" / "tensorboard")
    assert by_events.name == "r" and by_events.get("val/loss").values.tolist() == [4.0, 2.0, 1.0]
    assert events.unique_names([tmp_path / "r" / "tensorboard", tmp_path / "r"]) == ["r#1", "r#2"]


def test_no_events(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err


def with_train_time(scalars, seconds_per_step):
    """The trainer's perf/train_time_s: training steps only, here a fixed share of elapsed."""
    steps = [s for s, _ in scalars["perf/elapsed_s"]]
    return {**scalars, "perf/train_time_s": [(s, seconds_per_step * s) for s in steps]}


def test_training_time_is_the_axis_when_every_run_logged_it(tmp_path):
    runs = [events.load_run(write_run(tmp_path / "baseline", with_train_time(baseline_scalars(), 0.5))),
            events.load_run(write_run(tmp_path / "pld", with_train_time(pld_scalars(), 0.375)))]
    summary = numbers.summarize(runs)
    base, pld = summary.runs
    assert base.time_per_sample_s == 5.0 / 320 and pld.time_per_sample_s == 4.5 / 384
    assert base.elapsed_s == 5.0 and pld.elapsed_s == 4.5
    # val/loss 5.0 at step 10 (baseline) and step 8 (PLD): 5.0 s vs 0.375 * 8 = 3.0 s.
    assert base.time_to_target_s == 5.0 and pld.time_to_target_s == 3.0
    assert pld.time_to_target_speedup == 5.0 / 3.0
    assert not any("timed by" in m for m in summary.messages)


def test_runs_fall_back_to_the_wall_clock_together(tmp_path):
    """One run without perf/train_time_s: both are timed by perf/elapsed_s, never mixed."""
    runs = [events.load_run(write_run(tmp_path / "baseline", baseline_scalars())),
            events.load_run(write_run(tmp_path / "pld", with_train_time(pld_scalars(), 0.375)))]
    summary = numbers.summarize(runs)
    base, pld = summary.runs
    assert base.time_per_sample_s == 10.0 / 320 and pld.time_per_sample_s == 9.0 / 384
    assert base.time_to_target_s == 10.0 and pld.time_to_target_s == 6.0
    assert any("all are timed by perf/elapsed_s" in m for m in summary.messages)


# ----------------------------------------------------------------------------- honesty

def test_ema_is_tensorboards_debiased_smoothing():
    assert plots.ema([1.0, 2.0, 3.0], 0.5).tolist() == [1.0, 5 / 3, 17 / 7]
    smoothed = plots.ema([2.0, float("nan"), 4.0], 0.5)
    assert smoothed[0] == 2.0 and np.isnan(smoothed[1]) and smoothed[2] == 10 / 3


def test_a_saving_beyond_the_skipped_flops_is_a_warning(tmp_path):
    """The fixture's PLD run is 25% faster per sample but skipped 18.75% of the encoder
    FLOPs: impossible from the layers alone, so the report says the load changed."""
    scalars = {**pld_scalars(), "pld/time_saved_frac": [(12, 0.125)]}
    runs = [events.load_run(write_run(tmp_path / "baseline", baseline_scalars())),
            events.load_run(write_run(tmp_path / "pld", scalars))]
    summary = numbers.summarize(runs)
    assert summary.runs[1].live_time_saved_pct == 12.5
    warnings = [m for m in summary.messages if m.startswith("warning:")]
    assert warnings == [
        "warning: pld: the measured saving, 25.0% of the baseline's time per sample, exceeds "
        "the 18.8% of encoder FLOPs PLD skipped, the most that skipping layers can save: the "
        "machine's load differed between the runs, so this saving is mostly noise; compare "
        "runs made under the same load; measured within the run, against its own full-depth "
        "step time, PLD saved 12.5% (pld/time_saved_frac)"]
    # 30% skipped at the end: a 25% saving is possible, no warning.
    scalars["pld/encoder_flops_skipped_frac"] = [(12, 0.3)]
    runs[1] = events.load_run(write_run(tmp_path / "pld2", scalars))
    assert not any(m.startswith("warning:") for m in numbers.summarize(runs).messages)


def with_mlm(scalars, mlm):
    return {**scalars, "val/mlm_loss": [(step, value) for (step, _), value
                                        in zip(scalars["val/loss"], mlm)]}


def test_no_speedup_to_a_target_at_the_plateau(tmp_path, capsys):
    # The baseline's final val/mlm_loss (4.5) is above the plateau 4.25: its val/loss 5.0
    # marks frequencies learned, so no ratio is printed; PLD's best MLM loss 4.0 is below.
    base = write_run(tmp_path / "baseline", with_mlm(baseline_scalars(), [5.5, 4.5]))
    pld = write_run(tmp_path / "pld", with_mlm(pld_scalars(), [6.0, 4.5, 4.0]))
    summary = numbers.summarize([events.load_run(base), events.load_run(pld)],
                               plateau=4.25, plateau_source="given with --plateau")
    assert summary.target_below_plateau is False
    base_row, pld_row = summary.runs
    assert (base_row.time_to_target_s, pld_row.time_to_target_s) == (10.0, 6.0)  # still facts
    assert base_row.time_to_target_speedup is None and pld_row.time_to_target_speedup is None
    assert (base_row.best_val_mlm_loss, base_row.below_plateau) == (4.5, False)
    assert (pld_row.best_val_mlm_loss, pld_row.below_plateau) == (4.0, True)
    assert ("warning: baseline: the validation MLM loss never fell below the unigram plateau "
            "4.2500 (best 4.5000): the run learned token frequencies, not language; train "
            "longer") in summary.messages
    assert any(m.startswith("no speedup to target: the target, the baseline's final val/loss "
                            "5.0000, has a validation MLM loss of 4.5000, not below the unigram "
                            "plateau 4.2500") for m in summary.messages)
    md = text.format_markdown(summary)
    assert "1.67x" not in md and md.count("n/a (target at plateau)") == 2
    assert "Unigram plateau: 4.2500 nats of validation MLM loss, given with --plateau." in md
    assert "4.5000 (not below plateau)" in md

    # Through the CLI: the same with --plateau, and the ratio back with a lower plateau.
    assert cli.main([str(base), str(pld), "--out", str(tmp_path / "o"),
                        "--plateau", "4.25"]) == 0
    assert "n/a (target at plateau)" in capsys.readouterr().out
    below = numbers.summarize([events.load_run(base), events.load_run(pld)], plateau=4.75)
    assert below.target_below_plateau is True
    assert below.runs[1].time_to_target_speedup == 10.0 / 6.0
    assert not any(m.startswith("no speedup") or "plateau" in m for m in below.messages)


def write_masked_shard(path, ids):
    """A shard in the pretraining schema whose scored masked tokens are `ids`, one per row."""
    from shard_factory import make_arrays, write_shard

    arrays = make_arrays(len(ids), 16, 2, 64, np.random.default_rng(0))
    arrays["masked_lm_positions"][:] = 0
    arrays["masked_lm_positions"][:, 0] = 3
    arrays["masked_lm_ids"][:] = 0
    arrays["masked_lm_ids"][:, 0] = ids
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_shard(path, arrays)


def test_plateau_from_the_shards_in_run_config(tmp_path):
    """Training tokens 5, 5, 5, 6, 6, 6 over a vocabulary of 8: add-one smoothed q = 4/14
    for both, so validation tokens 5 and 6 cost ln 3.5 each."""
    write_masked_shard(tmp_path / "data" / "train" / "a.hdf5", [5, 5, 6])
    write_masked_shard(tmp_path / "data" / "train" / "b.hdf5", [6, 5, 6])
    write_masked_shard(tmp_path / "data" / "validation" / "a.hdf5", [5, 6])
    run_dir = write_run(tmp_path / "pld", with_mlm(pld_scalars(), [1.5, 1.25, 1.0]))
    for tag, vocab in (("global_step5", 999), ("global_step10", 8)):  # the newest counts
        (run_dir / "checkpoints" / tag).mkdir(parents=True)
        (run_dir / "checkpoints" / tag / "run_config.json").write_text(json.dumps({
            "model_config": {"vocab_size": vocab},
            "run": {"train_dir": str(tmp_path / "data" / "train"),
                    "val_dir": str(tmp_path / "data" / "validation")},
            "deepspeed_setup": {"pld": {"theta": 0.5, "gamma": 0.001}}}))
    run = events.load_run(run_dir)
    assert run.theta_bar == 0.5
    plateau, source = numbers.find_plateau([run], run)
    assert plateau == pytest.approx(np.log(3.5), abs=1e-12)
    assert source == (f"computed from pld's data: 2 of 2 training shards in "
                      f"{tmp_path / 'data' / 'train'}, against 1 validation shards in "
                      f"{tmp_path / 'data' / 'validation'}")
    summary, written = cli.write_report([run], tmp_path / "out")
    assert summary.unigram_plateau == plateau and summary.runs[0].below_plateau is True
    assert {p.name for p in written} >= set(PLOTS)  # pld.png with the theta_bar line
    assert numbers.find_plateau([run], run, 3.0) == (3.0, "given with --plateau")
    bare = events.load_run(write_run(tmp_path / "bare", baseline_scalars()))
    assert numbers.find_plateau([bare], bare)[0] is None
    bare_summary, _ = cli.write_report([bare], tmp_path / "bare_out")
    assert any(m.startswith("unigram plateau unknown: no run has a run_config.json")
               for m in bare_summary.messages)
