"""Calibration observers: exact histogram merging, min-max exactness, outlier clipping by
percentile, MSE and KL clipping below the max on heavy tails, valid affine qparams."""

from __future__ import annotations

import math

import pytest
import torch

from slimkit.methods.quantize.observers import (
    OBSERVERS,
    Histogram,
    activation_qparams,
    kl_threshold,
    qparams_from_range,
)


def _hist(*batches: torch.Tensor) -> Histogram:
    h = Histogram()
    for b in batches:
        h.update(b)
    return h


def test_histogram_grows_exactly_across_batches() -> None:
    torch.manual_seed(0)
    batches = [torch.randn(5000) * s + m for s, m in [(1, 0), (10, 3), (0.1, -50), (40, 0)]]
    h = _hist(*batches)
    x = torch.cat(batches).double()
    assert len(h.counts) <= h.max_bins
    assert h.total == x.numel()
    assert (h.min, h.max) == (float(x.min()), float(x.max()))
    # Every value sits in the bin [k w, (k+1) w) its own value names: merging lost nothing.
    direct = torch.bincount(torch.floor(x / h.width).long() - h.first, minlength=len(h.counts))
    assert torch.equal(direct.double(), h.counts)
    assert h.folded().sum() == x.numel()


def test_minmax_is_exact_affine_range() -> None:
    h = _hist(torch.tensor([-1.0, 0.5, 3.0]), torch.tensor([2.0, -0.25]))
    scale, zp = activation_qparams(h, "minmax")
    assert scale == pytest.approx(4.0 / 255, rel=1e-6)
    assert zp == round(1.0 / scale)
    # Zero is exactly representable, and the ends map to the ends of the code range.
    assert round(-1.0 / scale) + zp == 0 and round(3.0 / scale) + zp == 255


def test_range_is_widened_to_hold_zero() -> None:
    scale, zp = qparams_from_range(2.0, 6.0)
    assert zp == 0 and scale == pytest.approx(6.0 / 255)
    scale, zp = qparams_from_range(-4.0, -1.0, 0, 127)
    assert zp == 127 and scale == pytest.approx(4.0 / 127)


def test_percentile_clips_outliers() -> None:
    torch.manual_seed(0)
    x = torch.randn(200_000)
    x[:3] = torch.tensor([500.0, -400.0, 300.0])
    h = _hist(x)
    scale, zp = activation_qparams(h, "percentile", percentile=99.99)
    hi = (255 - zp) * scale
    lo = -zp * scale
    assert 3.0 < hi < 6.0 and -6.0 < lo < -3.0  # N(0,1) 99.99th percentile is 3.72
    full, _ = activation_qparams(h, "minmax")
    assert scale < full / 50


@pytest.mark.parametrize(("observer", "shrink"), [("mse", 0.9), ("kl", 0.5)])
def test_heavy_tails_are_clipped_below_the_max(observer: str, shrink: float) -> None:
    torch.manual_seed(0)
    x = torch.distributions.StudentT(2.0).sample((100_000,))
    h = _hist(x)
    scale, zp = activation_qparams(h, observer)
    full, _ = activation_qparams(h, "minmax")
    assert math.isfinite(scale) and 0 < scale < shrink * full
    assert 0 <= zp <= 255
    # The clip still covers the bulk of the distribution.
    assert (255 - zp) * scale > 2.0 and zp * scale > 2.0


@pytest.mark.parametrize("observer", OBSERVERS)
def test_non_negative_activations_use_zero_point_zero(observer: str) -> None:
    torch.manual_seed(0)
    h = _hist(torch.relu(torch.randn(50_000)), torch.relu(torch.randn(50_000) * 2))
    scale, zp = activation_qparams(h, observer, qmax=127)
    assert zp == 0 and 0 < scale <= h.max / 127 + 1e-7


def test_kl_keeps_everything_when_the_histogram_is_narrow() -> None:
    counts = torch.ones(100, dtype=torch.float64)
    assert kl_threshold(counts, 128) == 100


def test_unknown_observer_and_empty_histogram_raise() -> None:
    with pytest.raises(ValueError, match="observer"):
        activation_qparams(_hist(torch.randn(10)), "median")
    with pytest.raises(ValueError, match="no calibration"):
        activation_qparams(Histogram(), "minmax")
