"""Learned Step Size Quantization (Esser et al. 2019), the pure math.

v_hat = round(clip(v / s, -Qn, Qp)) * s, with the straight-through estimator for round and a
learned step s whose gradient is scaled by g = 1 / sqrt(N * Qp) so it trains at the pace of the
weights.
"""

from __future__ import annotations

import math

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round forward, identity backward (the straight-through estimator)."""
    return (x.round() - x).detach() + x


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by `factor`."""
    return (x - x * factor).detach() + x * factor


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """(Qn, Qp): levels below and above zero. Signed is symmetric, as the int8 kernels expect."""
    if signed:
        return (1 << (bits - 1)) - 1, (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def lsq(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """Fake-quantize `x` with learned `step` (broadcastable, e.g. [out, 1] per channel)."""
    per_step = x.numel() / step.numel()
    g = 1.0 / math.sqrt(per_step * qp)
    s = scale_grad(step, g)
    return round_ste(torch.clamp(x / s, -qn, qp)) * s


def init_step(x: torch.Tensor, qp: int, dim: int | None = None) -> torch.Tensor:
    """The paper's initialisation s = 2 * mean(|x|) / sqrt(Qp), per row when `dim` is given."""
    mean = x.detach().abs().mean(dim=dim, keepdim=dim is not None)
    return (2 * mean / math.sqrt(qp)).clamp(min=1e-8)


def integer_codes(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """The integers a deployed layer stores: exactly the values `lsq` multiplies by `step`."""
    return torch.clamp(torch.round(x / step), -qn, qp)
