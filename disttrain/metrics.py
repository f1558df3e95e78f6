"""Evaluation metrics on gathered predictions: AUC (tie-aware), log loss, accuracy."""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class is absent."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    positives = labels.sum()
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(labels.size, dtype=np.float64)
    # Average rank of each run of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [labels.size]])
    run_ranks = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(((np.asarray(probabilities) >= 0.5) == (np.asarray(labels) >= 0.5)).mean())


def evaluate(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    return {
        "auc": auc(labels, probabilities),
        "logloss": log_loss(labels, probabilities),
        "accuracy": accuracy(labels, probabilities),
    }
