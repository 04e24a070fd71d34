"""A quotient-remainder compositional embedding (Shi et al. 2020, "Compositional Embeddings Using
Complementary Partitions for Memory-Efficient Recommendation Systems", KDD): id i reads
Q[i // m] op R[i % m], so ceil(N / m) + m rows stand in for N, and no two ids share both parts.
Optionally the hottest ids keep an exact row of their own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.module_types import register_module_type
from .bags import RowTable
from .hashed_embedding import check_mode, slot_dtype

OPS = ("mult", "add")


@register_module_type
class QREmbedding(RowTable):
    """`q` (ceil(N / m) rows) and `r` (m rows) combined by `op`; with hot > 0, `slot` maps each
    id to its exact row in `exact` (-1: composed). The padding id reads `pad_row` (mode "none")
    or is left out of bags. `mode` "sum"/"mean" behaves as nn.EmbeddingBag."""

    slot: torch.Tensor
    pad_row: torch.Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int, collisions: int,
                 op: str = "mult", hot: int = 0, mode: str = "none",
                 padding_idx: int | None = None) -> None:
        super().__init__()
        check_mode("QREmbedding", mode, padding_idx, num_embeddings)
        if op not in OPS or collisions < 1 or hot < 0:
            raise ValueError(f"QREmbedding: op={op!r} collisions={collisions!r} hot={hot!r} "
                             f"(need one of {OPS}, >= 1, >= 0)")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.collisions = collisions
        self.op = op
        self.hot = hot
        self.mode = mode
        self.padding_idx = padding_idx
        # Plain nn.Embeddings, so quantize.embedding can quantize them afterwards.
        self.q = nn.Embedding(-(-num_embeddings // collisions), embedding_dim)
        self.r = nn.Embedding(collisions, embedding_dim)
        if hot > 0:
            self.exact = nn.Embedding(hot, embedding_dim)
            self.register_buffer("slot", torch.full((num_embeddings,), -1,
                                                    dtype=slot_dtype(hot)))
        if padding_idx is not None:
            self.register_buffer("pad_row", torch.zeros(embedding_dim))

    def spec(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "collisions": self.collisions, "op": self.op, "hot": self.hot,
                "mode": self.mode, "padding_idx": self.padding_idx}

    def rows_of(self, index: torch.Tensor) -> torch.Tensor:
        index = index.long()
        quotient: torch.Tensor = self.q(torch.div(index, self.collisions, rounding_mode="floor"))
        remainder: torch.Tensor = self.r(torch.remainder(index, self.collisions))
        out = quotient * remainder if self.op == "mult" else quotient + remainder
        if self.hot > 0:
            slot = self.slot[index].long()
            exact: torch.Tensor = self.exact(slot.clamp(min=0))
            out = torch.where((slot >= 0).unsqueeze(-1), exact, out)
        return out

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings} ids -> {self.q.num_embeddings} x {self.r.num_embeddings} "
                f"({self.op}) + {self.hot} hot, {self.embedding_dim}, mode={self.mode}")
