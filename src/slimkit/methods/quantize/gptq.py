"""Pure GPTQ math (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"): quantize a weight column by column and spread each column's rounding
error over the columns not yet quantized, using the Cholesky factor of the inverse Hessian."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...nn.double_quant import DoubleQuant, double_quantize
from ...nn.groupwise import (
    dequantize_column,
    effective_group,
    group_params,
    num_groups,
    quantize_column,
)

# The Hessian helpers live in layerwise.py, shared with SparseGPT (prune/sparsegpt.py);
# hessian_error is re-exported for the callers that import it from here.
from ..layerwise import hessian_error as hessian_error
from ..layerwise import inverse_cholesky, live_hessian, one_thread


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int, group_size: int,
                  symmetric: bool, damp_percent: float = 0.01, block_size: int = 128,
                  act_order: bool = False, dtype: torch.dtype = torch.float16,
                  static: tuple[torch.Tensor, torch.Tensor | None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(codes uint8 [out, in], scale [out, groups], offset [out, groups] | None), the layout of
    `groupwise.quantize_groups`, so a GPTQ result and an RTN result are stored the same way.

    Group parameters are chosen when the loop reaches a group's first column, from the weights as
    updated by the errors so far (the paper's lazy grouping). With `act_order` the columns run in
    order of decreasing H_ii; groups then stay contiguous in the original column order with
    parameters taken from the original weight ("static groups"), so no group index is stored.
    Dead inputs (H_ii = 0: never active on the calibration data) keep their weights and get plain
    rounding: the reference implementation zeroes them, which would break inputs unseen in
    calibration. `static` (scale, offset) [out, groups]: fixed group parameters for every group
    (double-quantized ones, `gptq_quantize_dq`); they are returned as given.
    """
    w = weight.detach().float().clone()
    rows, cols = w.shape
    h = live_hessian(hessian)
    group = effective_group(cols, group_size)
    scale = torch.ones(rows, num_groups(cols, group_size), dtype=dtype)
    offset = None if symmetric else torch.zeros_like(scale)
    if static is not None:
        scale, offset = static[0].clone(), None if static[1] is None else static[1].clone()

    def set_group(index: int, columns: torch.Tensor) -> None:
        s, o = group_params(columns, bits, symmetric, dtype)
        scale[:, index] = s.to(dtype)
        if offset is not None and o is not None:
            offset[:, index] = o.to(dtype)

    perm = torch.arange(cols)
    if act_order and static is None:
        for gi in range(scale.shape[1]):
            set_group(gi, w[:, gi * group:(gi + 1) * group])
        perm = torch.argsort(torch.diag(h), descending=True, stable=True)
        w = w[:, perm]
        h = h[perm][:, perm]
    group_of = perm // group
    codes = torch.zeros_like(w)
    # The column loop runs thousands of tiny ops: with several intra-op threads each one pays a
    # thread barrier, measured 20-500x slower on 2 busy cores than with one thread; LAPACK's
    # cholesky_inverse on a 1536-wide H took 3.1 s with 2 threads and 0.05 s with one.
    with one_thread():
        hinv = inverse_cholesky(h, damp_percent).float()
        _column_loop(w, hinv, codes, scale, offset, group_of, set_group, bits=bits, group=group,
                     block_size=block_size, lazy_groups=not act_order and static is None)
    codes = codes[:, torch.argsort(perm)]
    return codes.to(torch.uint8), scale, offset


def _column_loop(w: torch.Tensor, hinv: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                 offset: torch.Tensor | None, group_of: torch.Tensor,
                 set_group: Callable[[int, torch.Tensor], None], *, bits: int, group: int,
                 block_size: int, lazy_groups: bool) -> None:
    """Quantize the columns of `w` in place order, writing `codes` and (lazily) group params."""
    cols = w.shape[1]
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if lazy_groups and col % group == 0:
                ahead = torch.cat([w1[:, i:], w[:, i2:]], dim=1)[:, :group]
                set_group(col // group, ahead)
            gi = int(group_of[col])
            s = scale[:, gi]
            o = offset[:, gi] if offset is not None else None
            q = quantize_column(w1[:, i], s, o, bits)
            codes[:, col] = q
            err = (w1[:, i] - dequantize_column(q, s, o, bits)) / hinv1[i, i]
            # Lazy batch update: inside the block now, beyond it once per block (one matmul).
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]


def gptq_quantize_dq(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int, group_size: int,
                     symmetric: bool, param_bits: int, damp_percent: float = 0.01,
                     block_size: int = 128, act_order: bool = False,
                     dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, DoubleQuant]:
    """GPTQ against double-quantized group parameters (nn/double_quant.py): all of them are
    chosen up front from the original weight (static groups) and quantized, and the column loop
    rounds against them as stored, so GPTQ's error feedback also absorbs the error of quantizing
    the parameters. Lazy per-group parameters cannot be used: a row's grid spans all its groups."""
    dq = double_quantize(weight, bits, group_size, symmetric, param_bits, dtype)
    codes, _, _ = gptq_quantize(weight, hessian, bits=bits, group_size=group_size,
                                symmetric=symmetric, damp_percent=damp_percent,
                                block_size=block_size, act_order=act_order, dtype=dtype,
                                static=(dq.scale(), dq.offset()))
    return codes, dq
