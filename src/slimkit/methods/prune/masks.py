"""Pure math of unstructured magnitude pruning: exact-count masks per layer or over all layers."""

from __future__ import annotations

import torch


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask zeroing exactly floor(sparsity * numel) entries of smallest |w| (ties by position)."""
    return global_masks([weight], sparsity)[0]


def global_masks(weights: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Bool keep-masks that zero exactly floor(sparsity * total) smallest-magnitude entries across
    `weights` (a byte an entry, a quarter of a float mask).

    A threshold comparison would over-prune when many weights tie (e.g. already-zero weights), so
    the k smallest are chosen by a stable sort and the count is exact.
    """
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    k = int(sparsity * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        order = torch.sort(flat, stable=True).indices
        keep[order[:k]] = False
    masks, start = [], 0
    for w in weights:
        masks.append(keep[start:start + w.numel()].view_as(w).clone())
        start += w.numel()
    return masks


def cubic_sparsity(step: int, total: int, final: float, initial: float = 0.0) -> float:
    """Zhu and Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - t / T)^3, clamped to t in [0, T]."""
    t = min(max(step, 0), total) / max(total, 1)
    return final + (initial - final) * (1.0 - t) ** 3


def sparsity_of(tensors: list[torch.Tensor]) -> float:
    total = sum(t.numel() for t in tensors)
    zeros = sum(int((t == 0).sum()) for t in tensors)
    return zeros / max(total, 1)
