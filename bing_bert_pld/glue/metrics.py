"""GLUE's metrics as NumPy functions of (predictions, labels).

As the GLUE benchmark defines them: CoLA Matthews correlation; MRPC and QQP F1 (the
positive class is 1) and accuracy; STS-B Pearson and Spearman correlation; accuracy for
the others. The tests check each against scikit-learn / SciPy on fixed predictions.
Degenerate inputs follow those references: MCC is 0 when a marginal is constant, F1 is
0 without true or predicted positives, a correlation with a constant input is NaN.
"""

from __future__ import annotations

import numpy as np

from .data import TaskSpec


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1_binary(predictions: np.ndarray, labels: np.ndarray) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    true_pos = np.sum((predictions == 1) & (labels == 1))
    denominator = np.sum(predictions == 1) + np.sum(labels == 1)
    return float(2 * true_pos / denominator) if denominator else 0.0


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class MCC (Gorodkin's R_K); the usual phi coefficient for two classes."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    truth, pred = encoded[:len(labels)], encoded[len(labels):]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (truth, pred), 1)
    true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    cov_tp = correct * total - true_counts @ pred_counts
    cov_pp = total ** 2 - pred_counts @ pred_counts
    cov_tt = total ** 2 - true_counts @ true_counts
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    return float(np.sum(dx * dy) / denominator) if denominator else float("nan")


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their positions (scipy's 'average')."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(average_ranks(x), average_ranks(y))


METRICS = {"accuracy": accuracy, "f1": f1_binary, "mcc": matthews_corrcoef,
           "pearson": pearson, "spearman": spearman}


def predictions_from_logits(spec: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """(N, C) logits -> class indices, or (N, 1) -> scores for regression."""
    return logits[:, 0] if spec.is_regression else logits.argmax(axis=-1)


def compute_metrics(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: METRICS[name](predictions, labels) for name in spec.metrics}
