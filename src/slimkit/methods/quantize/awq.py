"""Pure AWQ math (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression
and Acceleration"): per-input-channel scales s = s_x^alpha protect the weights that meet large
activations; the layer computes (x / s) Q(W s)^T, which equals x W^T before rounding."""

from __future__ import annotations

import torch

from ...nn.groupwise import dequantize_groups, effective_group, grouped, quantize_groups


class ActivationStats:
    """Mean |x| per input channel over every row, plus up to `max_rows` rows kept (the first rows
    of each batch) to measure output error during the searches."""

    def __init__(self, features: int, max_rows: int, batches: int) -> None:
        self.features = features
        self.abs_sum = torch.zeros(features, dtype=torch.float64)
        self.rows = 0
        self.per_batch = max(1, -(-max_rows // max(1, batches)))
        self.samples: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.features).float()
        self.abs_sum += x.abs().sum(dim=0).double()
        self.rows += x.shape[0]
        self.samples.append(x[:self.per_batch].clone())

    def mean_abs(self) -> torch.Tensor:
        return (self.abs_sum / max(1, self.rows)).float()

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples) if self.samples else torch.zeros(0, self.features)


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool,
                  dtype: torch.dtype = torch.float16) -> torch.Tensor:
    codes, scale, offset = quantize_groups(weight, bits, group_size, symmetric, dtype)
    return dequantize_groups(codes, scale, offset, bits, group_size)


def search_scales(weight: torch.Tensor, x: torch.Tensor, mean_abs: torch.Tensor, *, bits: int,
                  group_size: int, symmetric: bool, grid: int = 20,
                  dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, float, list[float]]:
    """(scales [in], best alpha, loss per alpha) over alpha = k / grid, k = 0 .. grid - 1.

    alpha = 0 gives s = 1, i.e. plain rounding, and is always a candidate: the chosen scales are
    never worse than round-to-nearest on the sampled rows. Scales are normalised by
    sqrt(max * min) as in the reference code, so W s keeps a similar range.
    """
    w = weight.detach().float()
    x = x.float()
    ref = x @ w.T
    best_loss, best_s, best_alpha = float("inf"), torch.ones_like(mean_abs), 0.0
    losses = []
    for k in range(grid):
        alpha = k / grid
        s = mean_abs.float().pow(alpha).clamp(min=1e-4)
        s = s / torch.sqrt(s.max() * s.min())
        approx = fake_quantize(w * s, bits, group_size, symmetric, dtype) / s
        loss = float((x @ approx.T - ref).pow(2).mean())
        losses.append(loss)
        if loss < best_loss:
            best_loss, best_s, best_alpha = loss, s, alpha
    return best_s, best_alpha, losses


def search_clip(weight: torch.Tensor, x: torch.Tensor, *, bits: int, group_size: int,
                symmetric: bool, grid: int = 20, max_shrink: float = 0.5,
                dtype: torch.dtype = torch.float16, chunk: int = 256) -> torch.Tensor:
    """Per (output row, group) clipping bound max|w| * (1 - k / grid), k < max_shrink * grid, that
    minimises the group's share of the output error (AWQ's auto_clip). Returns bounds [out, G]."""
    w = weight.detach().float()
    rows, cols = w.shape
    group = effective_group(cols, group_size)
    xg = grouped(x.float(), group)  # [n, G, g]
    if cols % group:  # the padded tail of a ragged group must not contribute
        xg[:, -1, group - (-cols) % group:] = 0.0
    bounds = torch.empty(rows, xg.shape[1])
    for r0 in range(0, rows, chunk):
        wg = grouped(w[r0:r0 + chunk], group)  # [o, G, g]
        ref = torch.einsum("ngk,ogk->nog", xg, wg)
        amax = wg.abs().amax(dim=-1)
        best_err = torch.full_like(amax, float("inf"))
        best = amax.clone()
        for k in range(max(1, int(max_shrink * grid))):
            bound = amax * (1 - k / grid)
            clipped = torch.maximum(torch.minimum(wg, bound[..., None]), -bound[..., None])
            flat = clipped.reshape(clipped.shape[0], -1)[:, :cols]
            approx = grouped(fake_quantize(flat, bits, group_size, symmetric, dtype), group)
            err = (torch.einsum("ngk,ogk->nog", xg, approx) - ref).pow(2).mean(dim=0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, bound, best)
        bounds[r0:r0 + chunk] = best
    return bounds


def apply_clip(weight: torch.Tensor, bounds: torch.Tensor, group_size: int) -> torch.Tensor:
    """Clamp each (row, group) of `weight` to [-bound, bound]."""
    cols = weight.shape[1]
    group = effective_group(cols, group_size)
    b = bounds[:, torch.arange(cols) // group]
    return torch.maximum(torch.minimum(weight.float(), b), -b)
