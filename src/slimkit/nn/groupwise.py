"""Pure math of group-wise weight quantization (asymmetric or symmetric) and bit packing for 8, 6,
4, 3 and 2 bits (6 only for double-quantized group parameters, double_quant.py); groups run
along the input dimension and the last one may be shorter (ragged).

Asymmetric:  w ~ q * scale + offset,          q in [0, 2^b - 1], offset a float (the group min).
Symmetric:   w ~ (q - 2^(b-1)) * scale,        scale = 2 max|w| / (2^b - 1) (as in GPTQ).
A float offset rather than an integer zero point keeps every weight within half a step even when a
group does not straddle zero, and maps directly onto tinygemm-style kernels (zero = offset + 8 s).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .rowwise import in_row_blocks
from .rowwise import pack as pack_pow2
from .rowwise import unpack as unpack_pow2

BITS = (8, 4, 3, 2)
FP16_MAX = 65504.0


def num_groups(in_features: int, group_size: int) -> int:
    """Groups per row; `group_size` -1 (or >= in_features) means one group per output channel."""
    size = in_features if group_size <= 0 else min(group_size, in_features)
    return -(-in_features // size)


def effective_group(in_features: int, group_size: int) -> int:
    return in_features if group_size <= 0 else min(group_size, in_features)


def grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    """[out, in] -> [out, groups, group]; a ragged last group is padded by repeating its last
    column, which leaves every group's min and max unchanged."""
    rows, cols = w.shape
    pad = (-cols) % group
    if pad:
        w = F.pad(w.unsqueeze(0), (0, pad), mode="replicate").squeeze(0)
    return w.reshape(rows, -1, group)


def _round_up_fp16(value: torch.Tensor, needed: torch.Tensor) -> torch.Tensor:
    """value cast to fp16, nudged one ulp up wherever the rounding fell below `needed`."""
    half = value.half()
    low = half.float() < needed
    return torch.where(low, torch.nextafter(half, torch.full_like(half, FP16_MAX)), half)


def group_params(w: torch.Tensor, bits: int, symmetric: bool, dtype: torch.dtype = torch.float16
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale [rows] and offset [rows] (None when symmetric) for one group of columns w [rows, g].

    The stored (possibly fp16) values are the ones the codes are computed with, so the half-step
    bound holds for what is saved: fp16 offsets round down and fp16 scales round up.
    """
    w = w.detach().float()
    maxq = (1 << bits) - 1
    if symmetric:
        amax = w.abs().amax(dim=1)
        need = 2 * amax / maxq
        scale = _round_up_fp16(need, need) if dtype == torch.float16 else need
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, None
    lo, hi = w.amin(dim=1), w.amax(dim=1)
    if dtype == torch.float16:
        offset = lo.half()
        above = offset.float() > lo
        offset = torch.where(above, torch.nextafter(offset, torch.full_like(offset, -FP16_MAX)),
                             offset)
        span = (hi - offset.float()).clamp(min=0)
        scale = _round_up_fp16(span / maxq, span / maxq)
    else:
        offset, scale = lo, (hi - lo) / maxq
    # A constant group (or a pruned, all-zero one) still needs a usable positive scale.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, offset


def quantize_column(w: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None,
                    bits: int) -> torch.Tensor:
    """Codes (float, exact integers) for w [rows, ...] with per-row scale/offset [rows]."""
    maxq = (1 << bits) - 1
    shape = (-1,) + (1,) * (w.dim() - 1)
    s = scale.float().reshape(shape)
    if offset is None:
        q = torch.round(w / s) + (1 << (bits - 1))
    else:
        q = torch.round((w - offset.float().reshape(shape)) / s)
    return q.clamp(0, maxq)


def dequantize_column(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None,
                      bits: int) -> torch.Tensor:
    shape = (-1,) + (1,) * (q.dim() - 1)
    s = scale.float().reshape(shape)
    if offset is None:
        return (q - (1 << (bits - 1))) * s
    return q * s + offset.float().reshape(shape)


def quantize_groups(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool,
                    dtype: torch.dtype = torch.float16
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round to nearest: (codes uint8 [out, in], scale [out, G], offset [out, G] or None)."""
    w = weight.detach().float()
    rows, cols = w.shape
    group = effective_group(cols, group_size)
    g = grouped(w, group)
    flat = g.reshape(-1, group)
    scale, offset = group_params(flat, bits, symmetric, dtype)
    codes = quantize_column(flat, scale, offset, bits).reshape(rows, -1)[:, :cols]
    scale = scale.reshape(rows, -1)
    offset = offset.reshape(rows, -1) if offset is not None else None
    return codes.to(torch.uint8), scale, offset


def dequantize_groups(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None,
                      bits: int, group_size: int) -> torch.Tensor:
    """Dense fp32 weight [out, in] from codes and per-group parameters."""
    rows, cols = codes.shape
    group = effective_group(cols, group_size)
    if cols % group == 0:
        # Broadcast each group's parameters instead of gathering them per weight: the same
        # per-weight arithmetic (so the same floats), without two [out, in] temporaries.
        q = codes.reshape(rows, cols // group, group).float()
        if offset is None:
            w = (q - (1 << (bits - 1))) * scale.float().unsqueeze(-1)
        else:
            w = q * scale.float().unsqueeze(-1) + offset.float().unsqueeze(-1)
        return w.reshape(rows, cols)
    idx = torch.arange(cols, device=codes.device) // group
    s = scale.float()[:, idx]
    if offset is None:
        return (codes.float() - (1 << (bits - 1))) * s
    return codes.float() * s + offset.float()[:, idx]


# Widths that do not divide 8 pack into 24-bit words: 8 INT3 or 4 INT6 codes in 3 bytes.
WORD24 = (3, 6)


def packed_width(cols: int, bits: int) -> int:
    """Bytes per row: INT3 / INT6 store 24 // bits codes in 3 bytes, the others 8 // bits a byte."""
    if bits in WORD24:
        return -(-cols // (24 // bits)) * 3
    return -(-cols * bits // 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [rows, cols] -> [rows, packed_width] bytes (low bits first)."""
    if bits not in WORD24:
        return pack_pow2(codes, bits)
    cols = codes.shape[1]
    per = 24 // bits
    pad = (-cols) % per

    def block(rows: torch.Tensor) -> torch.Tensor:
        c = F.pad(rows.to(torch.int32), (0, pad)).view(rows.shape[0], -1, per)
        word = (c << (torch.arange(per, dtype=torch.int32, device=c.device) * bits)).sum(dim=-1)
        out = torch.stack([(word >> shift) & 0xFF for shift in (0, 8, 16)], dim=-1)
        return out.reshape(rows.shape[0], -1).to(torch.uint8)

    return in_row_blocks(block, codes, packed_width(cols, bits))


def unpack_codes(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of `pack_codes`: [rows, packed_width] -> uint8 codes [rows, cols]."""
    if bits not in WORD24:
        return unpack_pow2(packed, bits, cols)
    rows = packed.shape[0]
    per = 24 // bits
    b = packed.to(torch.int32).view(rows, -1, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    shifts = torch.arange(per, dtype=torch.int32, device=b.device) * bits
    codes = (word.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(rows, -1)[:, :cols].to(torch.uint8)
