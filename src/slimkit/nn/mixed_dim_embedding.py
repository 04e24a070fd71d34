"""An embedding table whose rows have a width by popularity (mixed-dimension embeddings, Ginart et
al. 2021, "Mixed Dimension Embeddings with Application to Memory-Efficient Recommendation
Systems"): rows are split into blocks by how often they are read, block k stores its rows at
width w_k and one projection [w_k, dim] plus a bias back to the model's width. An id map sends
each id to its block and row."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.module_types import register_module_type
from .bags import MODES, RowTable
from .hashed_embedding import slot_dtype


@register_module_type
class MixedDimEmbedding(RowTable):
    """`sizes[k]` rows of width `widths[k]` per block; `slot[i]` is id i's position in the
    blocks laid end to end. `mode` "none" is nn.Embedding, "sum"/"mean" nn.EmbeddingBag; the
    padding row is stored as it is."""

    slot: torch.Tensor
    pad_row: torch.Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int, sizes: list[int],
                 widths: list[int], mode: str = "none", padding_idx: int | None = None) -> None:
        super().__init__()
        if mode not in MODES or len(sizes) != len(widths) or not sizes \
                or min(sizes) < 1 or min(widths) < 1 or max(widths) > embedding_dim:
            raise ValueError(f"MixedDimEmbedding: sizes={sizes!r} widths={widths!r} "
                             f"mode={mode!r} do not describe blocks of a {embedding_dim}-wide "
                             "table")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.sizes, self.widths = list(sizes), list(widths)
        self.mode, self.padding_idx = mode, padding_idx
        self.rows = nn.ParameterList(nn.Parameter(torch.zeros(n, w))
                                     for n, w in zip(sizes, widths, strict=True))
        self.proj = nn.ParameterList(nn.Parameter(torch.zeros(w, embedding_dim))
                                     for w in widths)
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(embedding_dim)) for _ in widths)
        self.register_buffer("slot", torch.zeros(num_embeddings,
                                                 dtype=slot_dtype(sum(sizes))))
        self.register_buffer("pad_row", torch.zeros(embedding_dim if padding_idx is not None
                                                     else 0))

    def spec(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "sizes": self.sizes, "widths": self.widths, "mode": self.mode,
                "padding_idx": self.padding_idx}

    def rows_of(self, index: torch.Tensor) -> torch.Tensor:
        """Rows for ids of any shape -> [*index.shape, dim]. Each block projects the row at a
        clamped position and a select keeps the block the id belongs to (one static graph,
        which ONNX exports)."""
        slot = self.slot[index].long()
        out = torch.zeros(*index.shape, self.embedding_dim, device=index.device)
        start = 0
        blocks = zip(self.rows, self.proj, self.bias, self.sizes, strict=True)
        for rows, proj, bias, n in blocks:
            local = (slot - start).clamp(0, n - 1)
            value = rows[local] @ proj + bias
            inside = ((slot >= start) & (slot < start + n)).unsqueeze(-1)
            out = torch.where(inside, value, out)
            start += n
        return out

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, blocks={self.sizes}, "
                f"widths={self.widths}, mode={self.mode}")
