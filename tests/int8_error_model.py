"""Reference models for int8 tests: the rounding-noise error a quantized layer should have, and
the x86 kernel without VNNI that adds pairs of u8 x s8 products in saturating 16 bits."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def predicted_linear_error(x: torch.Tensor, weight: torch.Tensor, s_in: float,
                           s_w: torch.Tensor, s_out: float | None) -> float:
    """Expected |error| (L2 norm over all outputs) of y = x W^T when x is rounded with step s_in,
    row j of W with step s_w[j], and y with step s_out: each rounding adds independent uniform
    noise of variance step^2 / 12, propagated linearly."""
    x = x.reshape(-1, x.shape[-1]).double()
    w = weight.double()
    var = (s_in ** 2 / 12) * (w ** 2).sum(1)[None, :] \
        + (x ** 2).sum(1)[:, None] * (s_w.double() ** 2 / 12)[None, :]
    if s_out is not None:
        var = var + s_out ** 2 / 12
    return float(var.sum().sqrt())


def predicted_conv_error(x: torch.Tensor, weight: torch.Tensor, s_in: float, s_w: torch.Tensor,
                         s_out: float | None, conv_args: tuple) -> float:
    """The same model for a convolution: the weight term sees each output's input patch energy;
    the input term uses the whole kernel (an upper bound at zero-padded borders)."""
    stride, padding, dilation, groups = conv_args
    ones = torch.ones(1, weight.shape[1] * groups, *weight.shape[2:], dtype=torch.float64)
    patch = F.conv2d(x.double() ** 2, ones, None, stride, padding, dilation)  # [n, 1, h, w]
    w = weight.double()
    var = (s_in ** 2 / 12) * (w ** 2).flatten(1).sum(1)[None, :, None, None] \
        + patch * (s_w.double() ** 2 / 12)[None, :, None, None]
    if s_out is not None:
        var = var + s_out ** 2 / 12
    return float(var.sum().sqrt())


def saturating_int8_matmul(x_u8: torch.Tensor, w_s8: torch.Tensor) -> torch.Tensor:
    """x [n, k] uint8 codes times w [m, k] int8 codes as vpmaddubsw computes them: each pair of
    adjacent products is summed and saturated to int16, then pairs are added in int32."""
    k = x_u8.shape[1]
    if k % 2:
        x_u8 = F.pad(x_u8, (0, 1))
        w_s8 = F.pad(w_s8, (0, 1))
    prod = x_u8.long()[:, None, :] * w_s8.long()[None, :, :]  # [n, m, k]
    pairs = prod.reshape(*prod.shape[:2], -1, 2).sum(-1).clamp(-32768, 32767)
    return pairs.sum(-1)
