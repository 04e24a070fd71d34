"""Pure math of binary and ternary weights: BinaryConnect sign, XNOR-Net per-channel scale, TWN
threshold and scale, the straight-through estimator, and 1-/2-bit packing of the codes.

Every function works on a 2-D weight [out, in] and reduces per output channel (row).
"""

from __future__ import annotations

import torch

from .rowwise import pack, unpack

KINDS = ("binaryconnect", "xnor", "ternary")
BITS = {"binaryconnect": 1, "xnor": 1, "ternary": 2}


def signs(weight: torch.Tensor) -> torch.Tensor:
    """Deterministic binarization of BinaryConnect: +1 where w >= 0, else -1 (sign(0) = +1, so
    every weight gets one of the two codes a single bit can hold)."""
    w = weight.detach().float()
    return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))


def xnor_scale(weight: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's optimal scale for W ~ alpha * sign(W): alpha = mean |W| per output channel."""
    return weight.detach().float().abs().mean(dim=1)


def ternary_threshold(weight: torch.Tensor, factor: float = 0.7) -> torch.Tensor:
    """TWN's approximate optimum delta = 0.7 * mean |W| per output channel."""
    return factor * weight.detach().float().abs().mean(dim=1)


def ternarize(weight: torch.Tensor,
              factor: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN: codes t in {-1, 0, +1} (|w| > delta keeps its sign) and alpha = mean |w| over the
    kept weights per channel (0 for a channel that keeps none, whose codes are all zero)."""
    w = weight.detach().float()
    delta = ternary_threshold(w, factor)
    keep = w.abs() > delta[:, None]
    codes = torch.sign(w) * keep
    count = keep.sum(dim=1)
    alpha = (w.abs() * keep).sum(dim=1) / count.clamp(min=1)
    return codes, torch.where(count > 0, alpha, torch.zeros_like(alpha))


def quantize(weight: torch.Tensor, kind: str,
             factor: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in {-1, 0, +1} as float, per-channel scale) for `kind` in KINDS."""
    if kind == "binaryconnect":
        # The paper's binary weights carry no scale: the network learns around +-1.
        return signs(weight), torch.ones(weight.shape[0])
    if kind == "xnor":
        return signs(weight), xnor_scale(weight)
    if kind == "ternary":
        return ternarize(weight, factor)
    raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")


def fake_quantize(weight: torch.Tensor, kind: str, factor: float = 0.7) -> torch.Tensor:
    """The dense weight a deployed layer would use: scale * codes."""
    codes, scale = quantize(weight, kind, factor)
    return codes * scale[:, None]


def ste(latent: torch.Tensor, quantized: torch.Tensor, clip: float) -> torch.Tensor:
    """Straight-through estimator: forward gives `quantized`; backward passes the gradient to
    `latent` unchanged where |latent| <= clip and cancels it outside (Courbariaux et al. 2015,
    the "hard tanh" gradient of sign)."""
    inside = latent.abs() <= clip
    through = torch.where(inside, latent, latent.detach())
    return through + (quantized.to(latent.dtype) - through).detach()


def pack_codes(codes: torch.Tensor, kind: str) -> torch.Tensor:
    """Codes [out, in] -> uint8 [out, ceil(in * bits / 8)]: binary stores 1 for +1 (a bit per
    weight), ternary stores t + 1 in two bits (0: -1, 1: 0, 2: +1)."""
    if kind == "ternary":
        return pack((codes + 1).to(torch.uint8), 2)
    return pack((codes > 0).to(torch.uint8), 1)


def unpack_codes(packed: torch.Tensor, kind_bits: int, in_features: int) -> torch.Tensor:
    """Inverse of `pack_codes` for 1 (binary) or 2 (ternary) bits -> float codes in {-1, 0, 1}."""
    raw = unpack(packed, kind_bits, in_features).float()
    return raw * 2 - 1 if kind_bits == 1 else raw - 1
