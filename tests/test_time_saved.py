"""The live time-saved estimate (time_saved.py) and the log line's progress (progress.py), on synthetic steps.

The synthetic step times are exact binary fractions on a line, so the fitted numbers
are compared exactly or to 1e-12, against values worked out by hand.
"""

import math

import pytest

from bing_bert_pld.run import metric_names as names
from bing_bert_pld import progress
from bing_bert_pld.time_saved import TimeSavedEstimator, fit_step_time

A, B = 0.25, 0.0625  # seconds per step besides the blocks, seconds per block


def line(layers):
    return A + B * layers


def test_fit_recovers_the_line_and_ignores_outliers():
    layers = [12, 10, 8, 9, 11, 7, 12, 8] * 5
    seconds = [line(x) for x in layers]
    seconds[3] = 50.0  # a page-out
    seconds[17] = 0.0  # a clock glitch
    fit = fit_step_time(layers, seconds)
    assert fit.intercept_s == pytest.approx(A, abs=1e-12)
    assert fit.per_layer_s == pytest.approx(B, abs=1e-12)
    assert fit.steps == 38
    assert fit.predict(24) == pytest.approx(1.75, abs=1e-12)


def test_fit_is_the_mean_line_under_symmetric_noise():
    # Each depth's times are line +- 0.03125: the least-squares line is the line itself.
    layers = [6, 6, 12, 12, 9, 9]
    seconds = [line(6) + 0.03125, line(6) - 0.03125, line(12) + 0.03125, line(12) - 0.03125,
               line(9) + 0.03125, line(9) - 0.03125]
    fit = fit_step_time(layers, seconds)
    assert (fit.intercept_s, fit.per_layer_s, fit.steps) == (pytest.approx(A), pytest.approx(B), 6)


def test_one_depth_gives_no_fit():
    assert fit_step_time([12] * 10, [1.0] * 10) is None


def test_estimator_charges_each_update_with_its_fit():
    est = TimeSavedEstimator(full_depth_layers=24, skip_first=2, min_steps=4)
    est.add(24, 99.0)  # warm-up steps: neither fitted nor charged
    est.add(24, 99.0)
    assert est.update() is None
    for x in (24, 20, 16):
        est.add(x, line(x))
    assert est.update() is None  # 3 steps < min_steps: no estimate, the steps wait
    est.add(12, line(12))
    first = est.update()
    full = line(24)  # 1.75 s
    # Charged: 4 steps at 24, 20, 16, 12 layers -> saved B * (0 + 4 + 8 + 12) = 1.5 s.
    assert first.full_depth_step_time_s == pytest.approx(full)
    assert first.time_saved_s == pytest.approx(1.5)
    assert first.time_saved_frac == pytest.approx(1.5 / (4 * full))
    assert first.speedup == pytest.approx(full / line(18))  # the charged steps' mean depth
    for x in (16, 16):
        est.add(x, line(x))
    second = est.update()
    assert second.time_saved_s == pytest.approx(1.5 + 2 * 8 * B)
    assert second.speedup == pytest.approx(full / line(16))
    assert second.scalars() == {names.TIME_SAVED: second.time_saved_s,
                                names.TIME_SAVED_FRAC: second.time_saved_frac,
                                names.SPEEDUP: second.speedup,
                                names.FULL_DEPTH_STEP_TIME: second.full_depth_step_time_s}
    assert est.state_dict() == {"time_saved_s": second.time_saved_s,
                                "full_depth_s": pytest.approx(6 * full), "steps_charged": 6,
                                "layers_total": 0}  # only observe() follows the counter


def test_window_follows_a_load_change():
    """The fit uses the last `window` steps: after the machine slows down 2x, the
    full-depth prediction is the new one, and earlier steps keep their old charge."""
    est = TimeSavedEstimator(full_depth_layers=12, skip_first=0, window=8, min_steps=8)
    depths = [12, 8, 10, 6] * 2
    for x in depths:
        est.add(x, line(x))
    before = est.update()
    assert before.full_depth_step_time_s == pytest.approx(line(12))
    assert before.time_saved_s == pytest.approx(B * sum(12 - x for x in depths))
    for x in depths:
        est.add(x, 2 * line(x))
    after = est.update()
    assert after.full_depth_step_time_s == pytest.approx(2 * line(12))
    assert after.time_saved_s == pytest.approx(3 * before.time_saved_s)


def test_counter_observations_and_resume_state():
    est = TimeSavedEstimator(full_depth_layers=4, layers_total=100, skip_first=0, min_steps=2)
    est.observe(104, line(4))  # 4 blocks this step
    est.observe(106, line(2))  # 2 blocks
    saved = est.update()
    assert saved.time_saved_s == pytest.approx(2 * B)
    resumed = TimeSavedEstimator(full_depth_layers=4, skip_first=0, min_steps=2, state=est.state_dict())
    assert resumed.time_saved_s == saved.time_saved_s and resumed.steps_charged == 2
    resumed.observe(109, line(3))  # the counter continues from the saved one: 3 blocks
    resumed.observe(110, line(1))
    assert resumed.update().time_saved_s == pytest.approx(saved.time_saved_s + 4 * B)


def test_a_slope_that_is_not_positive_gives_no_estimate():
    est = TimeSavedEstimator(full_depth_layers=12, skip_first=0, min_steps=4)
    for x, t in ((12, 1.0), (6, 1.5), (12, 1.0), (6, 1.5)):
        est.add(x, t)
    assert est.update() is None


# ---------------------------------------------------------------- progress

def test_progress_by_steps_samples_and_time():
    by_steps = progress.estimate(120, 120 * 16, 60.0, 0.5, 16, max_steps=1000)
    assert by_steps == progress.Progress(1000, False, 0.12, 440.0)
    assert progress.format_step(120, by_steps) == "step 120/1000 (12%)"
    assert progress.format_eta(by_steps) == "eta 0:07:20"
    # Samples: 3200 more samples at 16 per step = 200 steps; the step rule ends later.
    by_samples = progress.estimate(120, 1920, 60.0, 0.5, 16, max_steps=1000, max_samples=5120)
    assert by_samples == progress.Progress(320, False, 0.375, 100.0)
    # Time: 90 s of 300 left at 0.5 s per step -> ~180 more steps, the first to end.
    by_time = progress.estimate(120, 1920, 210.0, 0.5, 16, max_steps=1000,
                                max_time_s=300.0)
    assert by_time == progress.Progress(300, True, 0.7, 90.0)
    assert progress.format_step(120, by_time) == "step 120/~300 (70%)"


def test_progress_before_the_pace_is_known_and_without_a_rule():
    first = progress.estimate(0, 0, 5.0, None, 16, max_steps=10)
    assert first == progress.Progress(10, False, 0.0, None) and progress.format_eta(first) is None
    timed = progress.estimate(3, 48, 30.0, None, 16, max_time_s=120.0)
    assert progress.format_step(3, timed) == "step 3 (25% of the time budget)"
    assert progress.format_eta(timed) == "eta 0:01:30"
    assert progress.estimate(3, 48, 30.0, 1.0, 16) is None
    assert progress.format_step(3, None) == "step 3"
    assert progress.format_duration(27 * 3600 + 184.4) == "27:03:04"
    pace = progress.Pace(start_step=100, start_elapsed_s=1000.0)
    assert pace.seconds_per_step(100, 1000.0) is None
    assert pace.seconds_per_step(110, 1005.0) == 0.5
    assert math.isclose(progress.estimate(110, 0, 1005.0, 0.5, 1, max_steps=120).eta_s, 5.0)
