"""Linear forward from a packed weight de-quantized a block of output rows at a time, so a packed
layer never holds its whole fp32 weight: the transient is one block (about BLOCK_BYTES of fp32).

Speed: about that of de-quantizing the whole matrix per call (3072x768 INT4 on this project's busy
2 cores, best of 15: 1.7 ms at batch 1 and 5.0 ms at batch 128 with 4 MiB blocks, 2.5 / 9.2 ms
whole-matrix, 0.56 / 3.3 ms with the cached weight). Blocks of 128 KiB were 2-4x slower (many
small GEMMs), hence 4 MiB.

Numerics: each output is the same dot product as F.linear on the whole de-quantized weight, but
the GEMM may sum it in another order, so the two agree within fp32 rounding: both lie within
gamma_(K+1) * (|b| + sum_k |x_k w_k|) of the exact value (Higham, Accuracy and Stability of
Numerical Algorithms, Thm 3.1; gamma_n = n u / (1 - n u), u = 2^-24), hence differ by at most
twice that.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

BLOCK_BYTES = 4 << 20


def block_rows(in_features: int) -> int:
    """Output rows per block: about BLOCK_BYTES of fp32 weight, at least one row."""
    return max(1, BLOCK_BYTES // (4 * max(in_features, 1)))


def blockwise_linear(x: torch.Tensor, out_features: int, rows_of: Callable[[slice], torch.Tensor],
                     bias: torch.Tensor | None, rows_per_block: int) -> torch.Tensor:
    """y = x W^T + b where `rows_of(slice)` de-quantizes rows of W [rows, in] (fp32)."""
    parts = []
    for start in range(0, out_features, rows_per_block):
        rows = slice(start, min(start + rows_per_block, out_features))
        w = rows_of(rows)
        b = bias[rows] if bias is not None else None
        if w.dtype != x.dtype:
            w = w.to(x.dtype)
            b = b.to(x.dtype) if b is not None else None
        parts.append(F.linear(x, w, b))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def rounding_bound(x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """Largest difference two fp32 evaluations of x W^T + b may show (see the module note)."""
    k = weight.shape[1] + 1
    u = 2.0 ** -24
    gamma = k * u / (1 - k * u)
    mag = x.double().abs() @ weight.double().abs().T
    if bias is not None:
        mag = mag + bias.double().abs()
    return 2 * gamma * mag
