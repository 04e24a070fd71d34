"""Pure quality metrics (no sklearn): exact ROC AUC with ties, and binary log loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _as_1d(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got size 0")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def _binary_labels(labels: Any, n: int) -> np.ndarray:
    y = _as_1d(labels, "labels")
    if y.size != n:
        raise ValueError(f"labels: expected {n} values to match the scores, got {y.size}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels: expected only 0 and 1")
    return y


def auc(labels: Any, scores: Any) -> float:
    """Exact ROC AUC as the Mann-Whitney U statistic on ranks.

    Tied scores get their average rank, which counts a tied (positive, negative) pair as 1/2,
    the same as the trapezoidal area under the ROC curve.
    """
    s = _as_1d(scores, "scores")
    y = _binary_labels(labels, s.size)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"labels: AUC needs both classes, got {int(n_pos)} positive and "
                         f"{int(n_neg)} negative")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # 1-based average rank of each group of equal scores: last rank minus half the group's width.
    upper = np.cumsum(counts).astype(np.float64)
    ranks = (upper - (counts - 1) / 2.0)[inverse]
    u = float(ranks[y == 1].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def logloss(labels: Any, probs: Any, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities are clipped to [eps, 1 - eps] so it stays finite."""
    p = _as_1d(probs, "probs")
    y = _binary_labels(labels, p.size)
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps: expected a value in (0, 0.5), got {eps!r}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probs: expected values in [0, 1]")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))
