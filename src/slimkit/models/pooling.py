"""Pooling of token states into one vector per sequence, shared by the encoder models, their
export and encoder distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` [batch, seq, dim] over the positions where `mask` is 1."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` [batch, seq, dim] over the tokens where `mask` is 1, L2-normalised: the
    pooling sentence-transformers applies to all-MiniLM-L6-v2 (Reimers and Gurevych, 2019)."""
    return F.normalize(masked_mean_pool(hidden, mask), dim=-1)
