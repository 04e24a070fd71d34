"""An embedding table with fewer rows than ids: the hottest ids keep their own row, every other id
shares one of `buckets` rows chosen by a fixed hash (the hashing trick, Weinberger et al. 2009;
HashedNets, Chen et al. 2015). Also the id-map helpers qr_embedding shares.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.module_types import register_module_type
from .bags import MODES, RowTable

# h(i) = ((i * A + salt) mod P) mod buckets: A < 2^32 and ids < 2^31 keep i * A inside int64,
# and every op is one ONNX Runtime runs on int64 (Mul, Add, Mod).
HASH_A = 2654435761
HASH_P = 2147483647


def hash_rows(index: torch.Tensor, buckets: int, salt: int) -> torch.Tensor:
    return ((index.long() * HASH_A + salt) % HASH_P) % buckets


def slot_dtype(rows: int) -> torch.dtype:
    """The id map's integer type: int16 while every row (and -1) fits, else int32."""
    return torch.int16 if rows <= torch.iinfo(torch.int16).max else torch.int32


def stored_bytes(module: nn.Module) -> int:
    """Every byte the module stores (its state dict), id maps and padding row included."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def check_mode(name: str, mode: str, padding_idx: int | None, num_embeddings: int) -> None:
    if mode not in MODES:
        raise ValueError(f"{name}: mode={mode!r} unsupported (one of {MODES})")
    if padding_idx is not None and not 0 <= padding_idx < num_embeddings:
        raise ValueError(f"{name}: padding_idx={padding_idx!r} outside [0, {num_embeddings})")


@register_module_type
class HashedEmbedding(RowTable):
    """Rows 0..hot-1 of `table` are the hot ids' own rows, rows hot.. the shared buckets.

    With hot > 0 the id -> row map is stored (`slot`, int16 while rows fit); with hot == 0 the
    row is the hash itself and nothing per id is stored. The padding id reads `pad_row` (mode
    "none") or is left out of bags. `mode` "sum"/"mean" behaves as nn.EmbeddingBag."""

    slot: torch.Tensor
    pad_row: torch.Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int, hot: int, buckets: int,
                 mode: str = "none", padding_idx: int | None = None, salt: int = 0) -> None:
        super().__init__()
        check_mode("HashedEmbedding", mode, padding_idx, num_embeddings)
        if buckets < 1 or hot < 0:
            raise ValueError(f"HashedEmbedding: buckets={buckets!r} hot={hot!r} (need >= 1, >= 0)")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.hot = hot
        self.buckets = buckets
        self.mode = mode
        self.padding_idx = padding_idx
        self.salt = salt
        # A plain nn.Embedding, so quantize.embedding can quantize the shared rows afterwards.
        self.table = nn.Embedding(hot + buckets, embedding_dim)
        if hot > 0:
            self.register_buffer("slot", torch.zeros(num_embeddings,
                                                     dtype=slot_dtype(hot + buckets)))
        if padding_idx is not None:
            self.register_buffer("pad_row", torch.zeros(embedding_dim))

    def spec(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "hot": self.hot, "buckets": self.buckets, "mode": self.mode,
                "padding_idx": self.padding_idx, "salt": self.salt}

    def row_of(self, index: torch.Tensor) -> torch.Tensor:
        """The stored row each id reads."""
        if self.hot > 0:
            return self.slot[index].long()
        return hash_rows(index, self.buckets, self.salt)

    def rows_of(self, index: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.table(self.row_of(index))
        return out

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings} ids -> {self.hot} hot + {self.buckets} buckets, "
                f"{self.embedding_dim}, mode={self.mode}")
