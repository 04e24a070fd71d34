"""Embedding / EmbeddingBag with row-wise INT8/INT4/INT2 storage; a lookup de-quantizes only the
rows it gathers, so memory stays at the packed size (Guan et al. 2019, post-training 4-bit tables)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .rowwise import pack, quantize_rows, unpack

MODES = ("none", "sum", "mean")


class QuantizedEmbedding(nn.Module):
    """`mode="none"` behaves as nn.Embedding; "sum"/"mean" as nn.EmbeddingBag on 2-D bags."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, mode: str = "none",
                 padding_idx: int | None = None) -> None:
        super().__init__()
        if bits not in (2, 4, 8) or mode not in MODES:
            raise ValueError(f"QuantizedEmbedding: bits={bits!r} mode={mode!r} unsupported")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.bits = bits
        self.mode = mode
        self.padding_idx = padding_idx
        width = -(-embedding_dim * bits // 8)
        self.register_buffer("packed", torch.zeros(num_embeddings, width, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(num_embeddings, dtype=torch.float16))
        self.register_buffer("offset", torch.zeros(num_embeddings, dtype=torch.float16))

    @classmethod
    def from_float(cls, module: nn.Embedding | nn.EmbeddingBag, bits: int) -> QuantizedEmbedding:
        mode = module.mode if isinstance(module, nn.EmbeddingBag) else "none"
        if mode not in MODES:
            raise ValueError(f"EmbeddingBag mode {mode!r} is not supported (sum or mean)")
        new = cls(module.num_embeddings, module.embedding_dim, bits, mode, module.padding_idx)
        codes, scale, offset = quantize_rows(module.weight, bits)
        new.packed.copy_(pack(codes, bits))
        new.scale.copy_(scale)
        new.offset.copy_(offset)
        return new

    def spec(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "bits": self.bits, "mode": self.mode, "padding_idx": self.padding_idx}

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """De-quantized rows for `index` of any shape -> [*index.shape, dim]."""
        codes = unpack(self.packed[index], self.bits, self.embedding_dim)
        scale = self.scale[index].float().unsqueeze(-1)
        offset = self.offset[index].float().unsqueeze(-1)
        return codes.float() * scale + offset

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        out = self.rows(index)
        if self.mode == "none":
            return out
        if index.dim() != 2:
            raise ValueError("QuantizedEmbedding bags take 2-D input [batch, bag_len]")
        keep = torch.ones_like(index, dtype=torch.bool)
        if self.padding_idx is not None:
            keep = index != self.padding_idx
        out = (out * keep.unsqueeze(-1)).sum(dim=1)
        if self.mode == "mean":
            # Empty bags give zeros, as nn.EmbeddingBag does.
            out = out / keep.sum(dim=1, keepdim=True).clamp(min=1)
        return out

    def dequantized_weight(self) -> torch.Tensor:
        return self.rows(torch.arange(self.num_embeddings))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int{self.bits}, mode={self.mode}"
