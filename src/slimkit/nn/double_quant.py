"""Double quantization of group parameters: each row's group scales (and offsets) are themselves
stored as `param_bits`-bit codes on one per-row grid, as QLoRA quantizes its quantization
constants (Dettmers et al. 2023, "QLoRA", double quantization: 8-bit constants, 0.5 -> 0.127 bits
per weight) and llama.cpp's K-quants store Q4_K's group scales and mins as 6-bit codes under one
fp16 scale and min per 256-weight super-block. Here the "super-block" is the row:

    scale_g  = code_s[g] * step_s                 code_s in [1, 2^p - 1]   (never 0: a usable scale)
    offset_g = omin + code_o[g] * step_o           code_o in [0, 2^p - 1]   (asymmetric only)

with step_s, omin, step_o one fp16 (or fp32) value each per row. At 4 bits and group 32 this is
4 + 2 * 6 / 32 = 4.375 bits per weight plus 48 bits per row, against 5.0 for fp16 scale + offset.

Why the weight codes are rounded again afterwards: plain fp16 parameters keep every weight within
half a step of its value (groupwise.py); quantized parameters move the grid, so the weight codes
are recomputed against the parameters as stored. The "coverage" choice (offset rounded down onto
its grid, scale rounded up to reach the group max from there) keeps every weight within half of
the stored step, whose excess over the plain step is bounded:

    |w - w^| <= s'/2,    s' <= (hi - lo) / maxq + step_o / maxq + step_s

(maxq = 2^bits - 1). `search` then also tries one step smaller scale and one step higher offset
per group and keeps whichever of the (at most 4) choices has the least squared error on the
group's weights, so a group's RMS error never exceeds the coverage choice's bound.
"""

from __future__ import annotations

import dataclasses

import torch

from .groupwise import (
    _round_up_fp16,
    effective_group,
    grouped,
    quantize_column,
)

PARAM_BITS = (6, 8)
FP16_MAX = 65504.0
CHUNK_ROWS = 2048  # rows per search block: 4 candidates x [rows * groups, group] fp32 temporaries


@dataclasses.dataclass
class DoubleQuant:
    """Codes [rows, groups] (uint8, unpacked) and per-row grids of the group parameters."""

    bits: int
    scale_codes: torch.Tensor
    scale_step: torch.Tensor
    offset_codes: torch.Tensor | None = None
    offset_min: torch.Tensor | None = None
    offset_step: torch.Tensor | None = None

    def scale(self) -> torch.Tensor:
        """fp32 [rows, groups] scales as stored (the same ops wherever they are decoded)."""
        return decode_scale(self.scale_codes, self.scale_step)

    def offset(self) -> torch.Tensor | None:
        if self.offset_codes is None or self.offset_min is None or self.offset_step is None:
            return None
        return decode_offset(self.offset_codes, self.offset_min, self.offset_step)


def decode_scale(codes: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    return codes.float() * step.float().unsqueeze(-1)


def decode_offset(codes: torch.Tensor, low: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    return low.float().unsqueeze(-1) + codes.float() * step.float().unsqueeze(-1)


def _cast_up(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`value` in `dtype`, never below it (fp16 nudged one ulp up where rounding fell short)."""
    return _round_up_fp16(value, value) if dtype == torch.float16 else value.to(dtype)


def _cast_down(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype != torch.float16:
        return value.to(dtype)
    half = value.half()
    above = half.float() > value
    return torch.where(above, torch.nextafter(half, torch.full_like(half, -FP16_MAX)), half)


def quantize_offsets(lo: torch.Tensor, param_bits: int, dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offsets lo [rows, groups] -> (codes, omin [rows], step [rows]) with the decoded offset
    <= lo and above it by less than one step (rounded down: the group's min stays covered)."""
    top = (1 << param_bits) - 1
    omin = _cast_down(lo.amin(dim=1), dtype)
    span = (lo.amax(dim=1) - omin.float()).clamp(min=0)
    step = _cast_up(span / top, dtype)
    step = torch.where(step.float() > 0, step, torch.ones_like(step))  # all offsets equal
    codes = torch.floor((lo - omin.float()[:, None]) / step.float()[:, None]).clamp(0, top)
    # fp32 rounding of the division may land one code high: step back where it overshoots.
    over = decode_offset(codes, omin, step) > lo
    codes = torch.where(over & (codes > 0), codes - 1, codes)
    return codes, omin, step


def quantize_scales(need: torch.Tensor, param_bits: int, dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales need [rows, groups] (> 0) -> (codes >= 1, step [rows]) with the decoded scale >=
    need and above it by less than one step (rounded up: the group's max stays covered)."""
    top = (1 << param_bits) - 1
    step = _cast_up(need.amax(dim=1) / top, dtype)
    step = torch.where(step.float() > 0, step, torch.ones_like(step))
    codes = torch.ceil(need / step.float()[:, None]).clamp(1, top)
    under = decode_scale(codes, step) < need
    codes = torch.where(under & (codes < top), codes + 1, codes)
    return codes, step


def _sse(flat: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None,
         bits: int) -> torch.Tensor:
    """Squared error per group of RTN on flat [groups, group] against the given parameters."""
    q = quantize_column(flat, scale.reshape(-1), None if offset is None else offset.reshape(-1),
                        bits)
    s = scale.reshape(-1, 1)
    approx = (q - (1 << (bits - 1))) * s if offset is None else q * s + offset.reshape(-1, 1)
    return ((flat - approx) ** 2).sum(dim=1).reshape(scale.shape)


def _search(g: torch.Tensor, dq: DoubleQuant, bits: int) -> None:
    """Per group, the least-squared-error choice among scale code c or c - 1 and (asymmetric)
    offset code f or f + 1, written into `dq`'s codes in place."""
    top = (1 << dq.bits) - 1
    flat = g.reshape(-1, g.shape[-1])
    s0 = dq.scale_codes
    o0 = dq.offset_codes
    scale_options = [s0, (s0 - 1).clamp(min=1)]
    offset_options = [o0, (o0 + 1).clamp(max=top)] if o0 is not None else [None]
    best_err: torch.Tensor | None = None
    for sc in scale_options:
        for oc in offset_options:
            scale = decode_scale(sc, dq.scale_step)
            offset = None if oc is None or dq.offset_min is None or dq.offset_step is None \
                else decode_offset(oc, dq.offset_min, dq.offset_step)
            err = _sse(flat, scale, offset, bits)
            if best_err is None:  # the coverage choice: ties keep it
                best_err = err
                continue
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            dq.scale_codes = torch.where(better, sc, dq.scale_codes)
            if oc is not None and dq.offset_codes is not None:
                dq.offset_codes = torch.where(better, oc, dq.offset_codes)


def double_quantize(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool,
                    param_bits: int, dtype: torch.dtype = torch.float16,
                    search: bool = True) -> DoubleQuant:
    """Double-quantized group parameters of `weight` [rows, cols] for `bits`-bit weight codes
    (groups along cols, as groupwise.quantize_groups). A ragged last group is searched on its
    padded copy (its last column repeated), which weighs that column more; the bound holds."""
    if param_bits not in PARAM_BITS:
        raise ValueError(f"double_quantize: param_bits={param_bits!r} not in {PARAM_BITS}")
    w = weight.detach().float()
    rows, cols = w.shape
    g = grouped(w, effective_group(cols, group_size))
    maxq = (1 << bits) - 1
    if symmetric:
        need = 2 * g.abs().amax(dim=2) / maxq
        need = torch.where(need > 0, need, torch.ones_like(need))
        codes, step = quantize_scales(need, param_bits, dtype)
        dq = DoubleQuant(param_bits, codes, step)
    else:
        lo, hi = g.amin(dim=2), g.amax(dim=2)
        o_codes, omin, o_step = quantize_offsets(lo, param_bits, dtype)
        need = (hi - decode_offset(o_codes, omin, o_step)) / maxq
        # A constant group still needs a usable positive scale (as groupwise.group_params).
        need = torch.where(need > 0, need, torch.ones_like(need))
        codes, step = quantize_scales(need, param_bits, dtype)
        dq = DoubleQuant(param_bits, codes, step, o_codes, omin, o_step)
    if search:
        for start in range(0, rows, CHUNK_ROWS):
            part = slice(start, start + CHUNK_ROWS)
            sub = DoubleQuant(param_bits, dq.scale_codes[part], dq.scale_step[part],
                              *(None if t is None else t[part]
                                for t in (dq.offset_codes, dq.offset_min, dq.offset_step)))
            _search(g[part], sub, bits)
            dq.scale_codes[part] = sub.scale_codes
            if dq.offset_codes is not None and sub.offset_codes is not None:
                dq.offset_codes[part] = sub.offset_codes
    dq.scale_codes = dq.scale_codes.to(torch.uint8)
    if dq.offset_codes is not None:
        dq.offset_codes = dq.offset_codes.to(torch.uint8)
    return dq


def quantize_groups_dq(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool,
                       param_bits: int, dtype: torch.dtype = torch.float16,
                       search: bool = True) -> tuple[torch.Tensor, DoubleQuant]:
    """Round to nearest against double-quantized parameters: (codes uint8 [rows, cols], params);
    the codes are rounded against the parameters as stored (and clamped to the code range)."""
    dq = double_quantize(weight, bits, group_size, symmetric, param_bits, dtype, search)
    w = weight.detach().float()
    rows, cols = w.shape
    group = effective_group(cols, group_size)
    flat = grouped(w, group).reshape(-1, group)
    offset = dq.offset()
    codes = quantize_column(flat, dq.scale().reshape(-1),
                            None if offset is None else offset.reshape(-1), bits)
    return codes.reshape(rows, -1)[:, :cols].to(torch.uint8), dq

