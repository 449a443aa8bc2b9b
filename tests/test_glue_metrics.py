"""GLUE metrics against scikit-learn / SciPy on fixed predictions; the summary table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from bing_bert_pld.glue import metrics, summary
from bing_bert_pld.glue.data import get_task

RNG = np.random.default_rng(1234)
LABELS = RNG.integers(0, 2, size=200)
PREDICTIONS = np.where(RNG.random(200) < 0.8, LABELS, 1 - LABELS)  # ~80% right
LABELS3 = RNG.integers(0, 3, size=150)
PREDICTIONS3 = np.where(RNG.random(150) < 0.7, LABELS3, RNG.integers(0, 3, size=150))
SCORES = np.round(RNG.uniform(0, 5, size=120), 1)  # STS-B-like, rounded: ties in the ranks
PREDICTED_SCORES = np.round(SCORES + RNG.normal(0, 1.0, size=120), 1)


def test_accuracy_and_f1_match_sklearn():
    assert metrics.accuracy(PREDICTIONS, LABELS) == pytest.approx(
        skm.accuracy_score(LABELS, PREDICTIONS), abs=1e-12)
    assert metrics.f1_binary(PREDICTIONS, LABELS) == pytest.approx(
        skm.f1_score(LABELS, PREDICTIONS), abs=1e-12)


def test_matthews_matches_sklearn_binary_and_multiclass():
    assert metrics.matthews_corrcoef(PREDICTIONS, LABELS) == pytest.approx(
        skm.matthews_corrcoef(LABELS, PREDICTIONS), abs=1e-12)
    assert metrics.matthews_corrcoef(PREDICTIONS3, LABELS3) == pytest.approx(
        skm.matthews_corrcoef(LABELS3, PREDICTIONS3), abs=1e-12)


def test_correlations_match_scipy_with_ties():
    assert len(np.unique(SCORES)) < len(SCORES)  # the ranks do have ties
    assert metrics.pearson(PREDICTED_SCORES, SCORES) == pytest.approx(
        stats.pearsonr(PREDICTED_SCORES, SCORES)[0], abs=1e-12)
    assert metrics.spearman(PREDICTED_SCORES, SCORES) == pytest.approx(
        stats.spearmanr(PREDICTED_SCORES, SCORES)[0], abs=1e-12)
    np.testing.assert_array_equal(metrics.average_ranks(SCORES), stats.rankdata(SCORES))


def test_degenerate_inputs_follow_the_references():
    constant = np.zeros(10, dtype=int)
    labels = np.array([0, 1] * 5)
    assert metrics.matthews_corrcoef(constant, labels) == skm.matthews_corrcoef(labels, constant) == 0.0
    assert metrics.f1_binary(constant, labels) == skm.f1_score(labels, constant, zero_division=0) == 0.0
    assert math.isnan(metrics.pearson(np.ones(5), np.arange(5.0)))


def test_compute_metrics_picks_each_tasks_glue_metrics():
    assert set(metrics.compute_metrics(get_task("CoLA"), PREDICTIONS, LABELS)) == {"mcc"}
    assert set(metrics.compute_metrics(get_task("MRPC"), PREDICTIONS, LABELS)) == {"f1", "accuracy"}
    assert set(metrics.compute_metrics(get_task("QQP"), PREDICTIONS, LABELS)) == {"f1", "accuracy"}
    assert set(metrics.compute_metrics(get_task("STS-B"), PREDICTED_SCORES, SCORES)) == \
        {"pearson", "spearman"}
    for task in ("SST-2", "MNLI", "QNLI", "RTE", "WNLI"):
        assert set(metrics.compute_metrics(get_task(task), PREDICTIONS, LABELS)) == {"accuracy"}
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0]])
    np.testing.assert_array_equal(metrics.predictions_from_logits(get_task("MNLI"), logits), [1, 0])
    np.testing.assert_array_equal(
        metrics.predictions_from_logits(get_task("STS-B"), np.array([[3.5], [1.0]])), [3.5, 1.0])


def _write_run(root, task, seed, run_metrics):
    run_dir = root / task / f"seed{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"task": task, "seed": seed,
                                                      "metrics": run_metrics}))


def test_summary_table_over_tasks_and_seeds(tmp_path, capsys):
    _write_run(tmp_path, "RTE", 1, {"dev": {"accuracy": 0.60}})
    _write_run(tmp_path, "RTE", 2, {"dev": {"accuracy": 0.70}})
    _write_run(tmp_path, "MRPC", 1, {"dev": {"f1": 0.90, "accuracy": 0.80}})
    _write_run(tmp_path, "MNLI", 1, {"dev_matched": {"accuracy": 0.84},
                                     "dev_mismatched": {"accuracy": 0.82}})
    _write_run(tmp_path, "WNLI", 1, {"dev": {"accuracy": 0.10}})
    result = summary.summarize(summary.collect(tmp_path))
    rows = {(row["task"], row["metric"]): row for row in result["rows"]}
    assert rows[("RTE", "accuracy")]["mean"] == pytest.approx(65.0)
    assert rows[("RTE", "accuracy")]["std"] == pytest.approx(np.std([60.0, 70.0], ddof=1))
    assert rows[("MNLI-m", "accuracy")]["mean"] == pytest.approx(84.0)
    assert rows[("MNLI-mm", "accuracy")]["mean"] == pytest.approx(82.0)
    assert result["task_scores"] == pytest.approx({"MRPC": 85.0, "MNLI": 83.0, "RTE": 65.0,
                                                   "WNLI": 10.0})
    assert result["average"] == pytest.approx((85.0 + 83.0 + 65.0) / 3)  # WNLI left out
    assert [row["task"] for row in result["rows"]] == ["MRPC", "MRPC", "MNLI-m", "MNLI-mm",
                                                       "RTE", "WNLI"]
    assert summary.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| RTE | accuracy | 65.00 | 7.07 | 2 | 1: 60.00, 2: 70.00 |" in printed
    assert (tmp_path / "summary.md").read_text() == printed
    assert json.loads((tmp_path / "summary.json").read_text())["average"] == pytest.approx(77.6666, 1e-4)
