"""Metrics: exact AUC against brute-force pair counting, log loss against its formula."""

import math

import numpy as np
import pytest
import torch

from slimkit.eval.metrics import auc, logloss


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auc_matches_pairwise_counting_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=500)
    s = rng.integers(0, 20, size=500).astype(np.float64) + y * rng.random() * 3  # many ties
    assert auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_auc_accepts_tensors_and_known_values() -> None:
    assert auc(torch.tensor([0, 0, 1, 1]), torch.tensor([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert auc([0, 1], [0.2, 0.9]) == 1.0
    assert auc([0, 1], [0.9, 0.2]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="both classes"):
        auc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="only 0 and 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="to match"):
        auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="non-empty"):
        auc([], [])


def test_logloss_matches_formula_and_clips() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=100)
    p = rng.random(100)
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert logloss(y, p) == pytest.approx(expected, rel=1e-12)
    assert logloss(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])) == pytest.approx(
        -math.log(1 - 1e-7), rel=1e-6)
    assert math.isfinite(logloss([1, 0], [0.0, 1.0]))
    with pytest.raises(ValueError, match="probs"):
        logloss([0, 1], [0.5, 1.5])


def test_cv_probe_accuracy_tests_every_row_once_on_unseen_folds() -> None:
    from slimkit.tasks.text.metrics import cv_probe_accuracy

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(100) // 50  # two blocks: every fold (row % 5) holds both classes
    x = torch.randn(100, 8, generator=gen) + 3.0 * y[:, None].float()
    assert cv_probe_accuracy(x, y) > 0.95
    noise = torch.randn(100, 8, generator=gen)
    assert cv_probe_accuracy(noise, y) < 0.8  # nothing to learn: near chance, not memorised
