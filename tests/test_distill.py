"""KD losses equal their formulas (Hinton et al. 2015)."""

from __future__ import annotations

import math

import torch

from slimkit.methods.distill.losses import binary_kd, is_binary, softmax_kd


def test_softmax_kd_equals_formula() -> None:
    s, t, T = torch.randn(4, 5), torch.randn(4, 5), 3.0
    p_t = torch.softmax(t / T, -1)
    expected = (p_t * (p_t.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert torch.allclose(softmax_kd(s, t, T), expected, atol=1e-6)


def test_binary_kd_equals_bernoulli_kl_and_two_class_softmax() -> None:
    s, t, T = torch.randn(16), torch.randn(16), 2.0
    p, q = torch.sigmoid(t / T), torch.sigmoid(s / T)
    kl = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
    assert torch.allclose(binary_kd(s, t, T), kl.mean() * T * T, atol=1e-5)
    # A single logit z is the two-class softmax over [0, z].
    two = lambda z: torch.stack([torch.zeros_like(z), z], -1)  # noqa: E731
    assert torch.allclose(binary_kd(s, t, T), softmax_kd(two(s), two(t), T), atol=1e-5)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    z = torch.randn(8)
    assert binary_kd(z, z, 1.0).abs() < 1e-6
    assert binary_kd(z + 1, z, 1.0) > 0
    assert math.isclose(float(softmax_kd(torch.ones(2, 3), torch.ones(2, 3), 4.0)), 0.0,
                        abs_tol=1e-6)
    assert is_binary(torch.zeros(3)) and is_binary(torch.zeros(3, 1))
    assert not is_binary(torch.zeros(3, 2))
