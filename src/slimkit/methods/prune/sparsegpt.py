"""SparseGPT (Frantar and Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot"): prune a weight column by column as an approximate OBS reconstruction,
spreading each pruned weight's error over the columns not yet visited through the Cholesky factor
of the inverse Hessian (the GPTQ update, Frantar et al. 2022, with zero as the "rounded" value).
The mask is chosen adaptively per block of columns, by w^2 / [H^-1]_jj^2 on the weights as
updated by the errors of the earlier blocks; in N:M mode per group of m columns."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ...core import Context, MethodConfig, Targets, check_range, register
from ...core.config import DATA
from ...core.errors import ConfigError
from ..layerwise import (
    HessianAccumulator,
    hessian_error,
    inverse_cholesky,
    live_hessian,
    one_thread,
)
from .calibrated import check_options, keep_n_of_m, prune_calibrated


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float = 0.5,
                    n: int = 0, m: int = 0, damp_percent: float = 0.01,
                    block_size: int = 128) -> torch.Tensor:
    """The pruned, error-compensated weight (float32, exact zeros where pruned).

    Unstructured: each block of `block_size` columns prunes its lowest-scored entries over all
    rows (the paper's adaptive selection: rows and columns differ in how much they can lose),
    floor(sparsity * rows * i2) - floor(sparsity * rows * i1) of them for columns [i1, i2), so
    the layer's count is exactly floor(sparsity * numel), as prune.magnitude's. N:M (`n` kept of
    every `m` inputs, `block_size` a multiple of m): each group is chosen when the loop reaches
    it. Dead inputs (H_jj = 0 on the calibration data) keep a unit diagonal, as in gptq.py,
    and compete by magnitude instead of being zeroed outright as the reference code does.
    """
    w = weight.detach().float().clone()
    rows, cols = w.shape
    h = live_hessian(hessian)
    # One thread: thousands of tiny ops per layer (see gptq.py's measurement).
    with one_thread():
        hinv = inverse_cholesky(h, damp_percent).float()
        for i1 in range(0, cols, block_size):
            i2 = min(i1 + block_size, cols)
            w1 = w[:, i1:i2].clone()
            hinv1 = hinv[i1:i2, i1:i2]
            d = torch.diag(hinv1)
            err1 = torch.zeros_like(w1)
            if n:
                keep1 = torch.ones_like(w1, dtype=torch.bool)
            else:
                k = int(sparsity * rows * i2) - int(sparsity * rows * i1)
                keep1 = _keep_all_but(w1.pow(2) / d.pow(2)[None, :], k)
            for i in range(i2 - i1):
                if n and i % m == 0:
                    keep1[:, i:i + m] = keep_n_of_m(
                        w1[:, i:i + m].pow(2) / d[i:i + m].pow(2)[None, :], n, m)
                col = w1[:, i]
                err = (col - col * keep1[:, i]) / d[i]
                # Lazy batch update (as GPTQ): inside the block now, beyond it once per block.
                w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
                err1[:, i] = err
            # The update leaves pruned entries at rounding noise around zero: make them zero.
            w[:, i1:i2] = w1.masked_fill(~keep1, 0.0)
            w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def _keep_all_but(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool keep-mask without the k lowest scores of the whole block (ties by position)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.sort(scores.flatten(), stable=True).indices[:k]] = False
    return keep.view_as(scores)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseGPT(MethodConfig):
    """Prune to `sparsity` with OBS-style weight updates (Frantar and Alistarh 2023), the mask
    chosen per block of `block_size` columns; with `n` and `m` set (2 and 4) the n best of every
    m consecutive inputs kept (then `sparsity` is not used). `damp_percent` of mean(diag H) is
    added to the Hessian. Calibration on `calibration_batches` of the task; `sequential` takes
    each layer's Hessian with the layers upstream already pruned, False from the dense model.
    Each layer's relative output error on the calibration rows is recorded."""

    method = "prune.sparsegpt"
    sparsity: float = 0.5
    n: int = 0
    m: int = 0
    damp_percent: float = 0.01
    block_size: int = 128
    calibration_batches: int = 8
    sequential: bool = True
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA

    def validate(self) -> None:
        check_options(self)
        check_range("damp_percent", self.damp_percent, 0.0, 1.0, lo_open=True)
        check_range("block_size", self.block_size, 1, 1 << 20)
        if self.m and self.block_size % self.m:
            raise ConfigError("block_size", self.block_size, f"a multiple of m ({self.m})")


@register(SparseGPT)
def apply_sparsegpt(model: nn.Module, config: SparseGPT, ctx: Context) -> nn.Module:
    def prune(weight: torch.Tensor, stats: Any) -> tuple[torch.Tensor, dict[str, float]]:
        new = sparsegpt_prune(weight, stats.hessian, sparsity=config.sparsity, n=config.n,
                              m=config.m, damp_percent=config.damp_percent,
                              block_size=config.block_size)
        return new, {"error": hessian_error(weight, new, stats.hessian)}

    return prune_calibrated(model, config, ctx, make=HessianAccumulator, prune=prune)
