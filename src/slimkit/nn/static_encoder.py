"""A static-embedding sentence encoder (Model2Vec, Tulkens and van Dongen 2024, "Model2Vec: Fast
State-of-the-Art Static Embeddings"; sentence-transformers' StaticEmbedding): one vector per
vocabulary token, and a sentence is the sum of its tokens' vectors. No attention, no context: a
batch costs one gather and one reduction, hundreds of times less than a transformer.

The table lives in an `nn.EmbeddingBag(mode="sum")` named `bag`, so `quantize.embedding` swaps it
for a row-wise INT8/INT4 table like any other bag. Special tokens ([CLS], [SEP], [UNK], ...) hold
zero rows, and masked positions are read as the padding id, which bags skip: the plain sum over
the ids is then the sentence vector, with no per-sample weights (the quantized bag has none).
The task L2-normalises the [batch, dim] output; after normalisation a sum and a mean agree, so
the sentence-transformers folder (mean bag, see export/static.py) gives the same vectors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..core.module_types import register_module_type, type_name


@register_module_type
class StaticEncoder(nn.Module):
    """forward(input_ids, attention_mask) -> [batch, dim]: the sum of the rows of the unmasked
    ids; row `pad_id` is skipped (and kept zero, as every special token's row is)."""

    def __init__(self, vocab_size: int, embedding_dim: int, pad_id: int = 0) -> None:
        super().__init__()
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"StaticEncoder: pad_id={pad_id} outside the vocabulary "
                             f"[0, {vocab_size})")
        self.vocab_size, self.embedding_dim, self.pad_id = vocab_size, embedding_dim, pad_id
        # nn.Module, not nn.EmbeddingBag: quantize.embedding may swap in a QuantizedEmbedding.
        self.bag: nn.Module = nn.EmbeddingBag(vocab_size, embedding_dim, mode="sum",
                                              padding_idx=pad_id)
        # How the artifact loader rebuilds this model (before replaying swaps of `bag`).
        self.slimkit_spec: dict[str, Any] = {
            "builder": type_name(StaticEncoder),
            "kwargs": {"vocab_size": vocab_size, "embedding_dim": embedding_dim,
                       "pad_id": pad_id}}

    @classmethod
    def from_table(cls, table: torch.Tensor, pad_id: int = 0) -> StaticEncoder:
        """An encoder holding a copy of `table` [vocab, dim]; its padding row is zeroed."""
        new = cls(int(table.shape[0]), int(table.shape[1]), pad_id)
        with torch.no_grad():
            new.table.copy_(table)
            new.table[pad_id] = 0.0
        return new

    @property
    def table(self) -> torch.Tensor:
        """The fp32 table (only while `bag` is a plain nn.EmbeddingBag)."""
        weight = getattr(self.bag, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"StaticEncoder: the table is a {type(self.bag).__name__} now, "
                            "with no fp32 weight")
        return weight

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        ids = input_ids.long()
        if attention_mask is not None:
            ids = torch.where(attention_mask.bool(), ids, torch.full_like(ids, self.pad_id))
        if isinstance(self.bag, nn.EmbeddingBag) and torch.onnx.is_in_onnx_export():
            # torch's TorchScript exporter rejects embedding_bag with padding_idx: Gather + a
            # masked sum computes the same. (A quantized bag exports its own Gather form.)
            keep = (ids != self.pad_id).unsqueeze(-1).to(self.bag.weight.dtype)
            return (F.embedding(ids, self.bag.weight) * keep).sum(dim=1)
        out: torch.Tensor = self.bag(ids)
        return out

    def extra_repr(self) -> str:
        return f"vocab={self.vocab_size}, dim={self.embedding_dim}, pad_id={self.pad_id}"
