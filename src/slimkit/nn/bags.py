"""nn.Embedding and nn.EmbeddingBag semantics over any row function, shared by the compressed
tables (frequency-aware, hashed, QR, tensor-train): each computes or de-quantizes only the rows
asked for, and this turns them into lookups or bags exactly as torch would."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

MODES = ("none", "sum", "mean")


def bag_lookup(rows: Callable[[torch.Tensor], torch.Tensor], index: torch.Tensor,
               offsets: torch.Tensor | None, per_sample_weights: torch.Tensor | None, *,
               dim: int, mode: str, padding_idx: int | None,
               include_last_offset: bool) -> torch.Tensor:
    """nn.Embedding ("none") or nn.EmbeddingBag ("sum"/"mean", 2-D bags or 1-D ids + offsets)
    semantics over `rows(ids)`, which de-quantizes only the rows asked for. Padding ids count
    in no bag; an empty bag gives zeros, as torch does."""
    if mode == "none":
        return rows(index)
    if per_sample_weights is not None and mode != "sum":
        raise ValueError("per_sample_weights: only with mode='sum', as nn.EmbeddingBag")
    present = torch.ones(index.shape, dtype=torch.float32, device=index.device)
    if padding_idx is not None:
        present = (index != padding_idx).float()
    if index.dim() == 2:
        if offsets is not None:
            raise ValueError("offsets: must be None for 2-D input, as nn.EmbeddingBag")
        keep = present if per_sample_weights is None else present * per_sample_weights.float()
        if mode == "mean":
            keep = keep / present.sum(dim=1, keepdim=True).clamp(min=1)
        return (rows(index) * keep.unsqueeze(-1)).sum(dim=1)
    if index.dim() != 1 or offsets is None:
        raise ValueError("input: bags take 2-D ids, or 1-D ids with offsets")
    starts = offsets[:-1] if include_last_offset else offsets
    bags, n = starts.shape[0], index.shape[0]
    if include_last_offset:  # ids past the last offset belong to no bag
        present = present * (torch.arange(n, device=index.device) < offsets[-1]).float()
    # Bag of each id: how many bag starts lie at or before its position (empty bags included).
    # scatter_add, not index_add: it exports as ONNX ScatterElements(reduction="add").
    marks = torch.zeros(n + 1, device=index.device).scatter_add(
        0, starts.long(), torch.ones(bags, device=index.device))
    bag = (marks.cumsum(0)[:n] - 1).clamp(min=0).long()
    keep = present if per_sample_weights is None else present * per_sample_weights.float()
    values = rows(index) * keep.unsqueeze(-1)
    out = torch.zeros(bags, dim, device=index.device).scatter_add(
        0, bag.unsqueeze(1).expand(-1, dim), values)
    if mode == "mean":
        count = torch.zeros(bags, device=index.device).scatter_add(0, bag, present)
        out = out / count.clamp(min=1).unsqueeze(-1)
    return out


class RowTable(nn.Module):
    """Base of the tables rebuilt with fewer stored values (hashed, QR, mixed-dimension): a
    subclass computes `rows_of(index)`; here the padding id reads its stored `pad_row` in a
    plain lookup, and bags follow nn.EmbeddingBag (padding left out)."""

    embedding_dim: int
    mode: str
    padding_idx: int | None
    pad_row: torch.Tensor

    def rows_of(self, index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def vectors(self, index: torch.Tensor) -> torch.Tensor:
        out = self.rows_of(index)
        if self.padding_idx is not None and self.mode == "none":
            out = torch.where((index == self.padding_idx).unsqueeze(-1), self.pad_row, out)
        return out

    def forward(self, index: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        return bag_lookup(self.vectors, index, offsets, per_sample_weights, dim=self.embedding_dim,
                          mode=self.mode, padding_idx=self.padding_idx, include_last_offset=False)
