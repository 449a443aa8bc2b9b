"""PLD schedule and gates: exact values of the pure functions."""

import math

import numpy as np
import pytest

from bing_bert_pld import pld


@pytest.mark.parametrize("step, expected", [
    (0, 1.0),
    (1, 0.5 * math.exp(-0.001) + 0.5),
    (1000, 0.5 * math.exp(-1.0) + 0.5),  # 0.6839397205857212
    (10_000, 0.5 * math.exp(-10.0) + 0.5),
])
def test_theta_golden_values_paper_setting(step, expected):
    assert pld.theta_at(step, theta_bar=0.5, gamma=0.001) == pytest.approx(expected, abs=1e-15)


def test_theta_known_numbers():
    assert pld.theta_at(1000, 0.5, 0.001) == pytest.approx(0.6839397205857212, abs=1e-15)
    assert pld.theta_at(500, 0.25, 0.002) == pytest.approx(0.75 * math.exp(-1) + 0.25, abs=1e-15)
    assert pld.theta_at(123, 1.0, 0.5) == 1.0  # theta_bar = 1 turns PLD into full depth
    assert pld.theta_at(10**9, 0.5, 0.001) == 0.5
    assert pld.theta_at(77, 0.5, 0.0) == 1.0  # gamma = 0: theta never decays


def test_keep_probabilities_paper_formula():
    probs = pld.keep_probabilities(0.5, 12)
    assert probs == tuple(1 - (i / 12) * 0.5 for i in range(1, 13))
    assert probs[0] == pytest.approx(1 - 0.5 / 12)
    assert probs[-1] == 0.5  # the deepest layer is kept with probability theta
    assert all(a > b for a, b in zip(probs, probs[1:]))  # lower layers kept more


def test_expected_active_layers():
    assert pld.expected_active_layers(0.5, 12) == 8.75
    assert sum(pld.keep_probabilities(0.5, 12)) == pytest.approx(8.75, abs=1e-12)
    assert pld.expected_active_layers(1.0, 24) == 24


def test_mean_active_layers_over_many_draws():
    draws = [pld.sample_gates(0.5, 12, seed=7, step=s, micro_step=m).num_active
             for s in range(4000) for m in range(5)]
    # 20,000 draws; the std of one draw is sqrt(sum p(1-p)) = 1.38, so the mean's std is
    # 0.0098: 0.04 is four of them.
    assert abs(np.mean(draws) - 8.75) < 0.04


def test_each_layer_kept_at_its_probability():
    keeps = np.array([pld.sample_gates(0.5, 12, seed=1, step=s, micro_step=0).keep
                      for s in range(20_000)])
    expected = np.array(pld.keep_probabilities(0.5, 12))
    assert np.abs(keeps.mean(axis=0) - expected).max() < 0.015  # 4 sigma at p = 0.5


def test_gates_are_a_pure_function_of_seed_step_micro_step():
    a = pld.sample_gates(0.6, 12, seed=3, step=10, micro_step=1)
    assert a == pld.sample_gates(0.6, 12, seed=3, step=10, micro_step=1)
    # each of seed, step and micro-step changes the draw (fixed values: no flakiness)
    assert all(pld.sample_gates(0.6, 12, seed=s, step=t, micro_step=m).keep != a.keep
               for s, t, m in [(4, 10, 1), (3, 11, 1), (3, 10, 2)])
    # the draw and the rescaling use the same p_i (the old client mixed two layers)
    assert all(a.scale(i) == 1 / a.keep_prob[i] for i in range(12))


def test_full_depth_at_theta_one():
    gates = pld.sample_gates(1.0, 12, seed=0, step=5, micro_step=0)
    assert gates.keep == (True,) * 12 and gates.keep_prob == (1.0,) * 12


@pytest.mark.parametrize("theta_bar, gamma", [(0.0, 0.001), (-0.1, 0.001), (1.5, 0.001),
                                               (0.5, -1e-4), (0.5, float("inf")), (True, 0.1)])
def test_schedule_rejects_bad_parameters(theta_bar, gamma):
    with pytest.raises(pld.PLDConfigError, match="theta|gamma"):
        pld.PLDSchedule(theta_bar=theta_bar, gamma=gamma)


def test_schedule_accepts_the_domain_edges():
    assert pld.PLDSchedule(theta_bar=1.0, gamma=0.0).theta(100) == 1.0
    assert pld.PLDSchedule(theta_bar=1e-6, gamma=0.001).theta(0) == 1.0
