"""An embedding table that keeps only some rows of a vocabulary but still takes the original
token ids: a lookup table maps each original id to its new row (dropped ids go to the row of the
unknown token), so the tokenizer need not change until deployment rewrites it."""

from __future__ import annotations

import torch
from torch import nn

from ..core.module_types import register_module_type


@register_module_type
class RemappedEmbedding(nn.Module):
    """`kept_ids[i]` is the original id stored in row i; ids not kept read row `unk_row`."""

    kept_ids: torch.Tensor
    remap: torch.Tensor

    def __init__(self, vocab_size: int, num_kept: int, embedding_dim: int,
                 padding_idx: int | None = None) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.weight = nn.Parameter(torch.empty(num_kept, embedding_dim))
        # int32: the id map is stored in the artifact and is as long as the whole vocabulary.
        self.register_buffer("kept_ids", torch.zeros(num_kept, dtype=torch.int32))
        self.register_buffer("remap", torch.zeros(vocab_size, dtype=torch.int32))

    @classmethod
    def from_embedding(cls, table: nn.Embedding, kept_ids: torch.Tensor,
                       unk_id: int) -> RemappedEmbedding:
        kept = torch.unique(torch.cat([kept_ids.long(), torch.tensor([unk_id])]))
        pad = table.padding_idx
        pad_row = int((kept == pad).nonzero()[0]) if pad is not None and bool((kept == pad).any()) \
            else None
        new = cls(table.num_embeddings, len(kept), table.embedding_dim, pad_row)
        with torch.no_grad():
            new.weight.copy_(table.weight[kept])
            new.kept_ids.copy_(kept)
            unk_row = int((kept == unk_id).nonzero()[0])
            new.remap.fill_(unk_row)
            new.remap[kept] = torch.arange(len(kept), dtype=torch.int32)
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(self.remap[ids].long(), self.weight, self.padding_idx)
