"""An embedding table that keeps only some rows of a vocabulary but still takes the original
token ids: a lookup table maps each original id to its new row, so the tokenizer need not change
until deployment rewrites it.

A dropped id reads the row of the unknown token, or, with `pieces`, the mean of the kept rows
that spell it: its WordPiece segmentation over the kept vocabulary ("emotionally" -> "emotional"
+ "##ly"). That is how new tokens are commonly initialised when a vocabulary is adapted (the
mean of their sub-word embeddings), and it keeps general text out of [UNK] when the kept rows
come from a domain corpus."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.module_types import register_module_type

MAX_PIECES = 4  # pieces per dropped token; a longer spelling reads the [UNK] row


@register_module_type
class RemappedEmbedding(nn.Module):
    """`kept_ids[i]` is the original id stored in row i; ids not kept read row `unk_row`, or
    the mean of rows `pieces[id]` (-1 = unused slot) when the table composes."""

    kept_ids: torch.Tensor
    remap: torch.Tensor
    pieces: torch.Tensor | None

    def __init__(self, vocab_size: int, num_kept: int, embedding_dim: int,
                 padding_idx: int | None = None, compose: bool = False) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.compose = compose
        self.weight = nn.Parameter(torch.empty(num_kept, embedding_dim))
        # int32: the id map is stored in the artifact and is as long as the whole vocabulary.
        self.register_buffer("kept_ids", torch.zeros(num_kept, dtype=torch.int32))
        self.register_buffer("remap", torch.zeros(vocab_size, dtype=torch.int32))
        # int16 rows while they fit: the map is as long as the vocabulary, four to a token.
        dtype = torch.int16 if num_kept <= torch.iinfo(torch.int16).max else torch.int32
        self.register_buffer("pieces", torch.full((vocab_size, MAX_PIECES), -1, dtype=dtype)
                             if compose else None)

    @classmethod
    def from_embedding(cls, table: nn.Embedding, kept_ids: torch.Tensor, unk_id: int,
                       tokens: Sequence[str] | None = None) -> RemappedEmbedding:
        """Keep rows `kept_ids` (and `unk_id`) of `table`. With `tokens` (the vocabulary's
        strings, by id), dropped ids compose from the kept pieces that spell them."""
        kept = torch.unique(torch.cat([kept_ids.long(), torch.tensor([unk_id])]))
        pad = table.padding_idx
        pad_row = int((kept == pad).nonzero()[0]) if pad is not None and bool((kept == pad).any()) \
            else None
        new = cls(table.num_embeddings, len(kept), table.embedding_dim, pad_row,
                  compose=tokens is not None)
        with torch.no_grad():
            new.weight.copy_(table.weight[kept])
            new.kept_ids.copy_(kept)
            unk_row = int((kept == unk_id).nonzero()[0])
            new.remap.fill_(unk_row)
            new.remap[kept] = torch.arange(len(kept), dtype=torch.int32)
            if tokens is not None and new.pieces is not None:
                new.pieces.copy_(spell_with(tokens, kept, new.remap).to(new.pieces.dtype))
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.pieces is None:
            return nn.functional.embedding(self.remap[ids].long(), self.weight, self.padding_idx)
        rows = self.pieces[ids].long()  # [..., MAX_PIECES]
        used = (rows >= 0).to(self.weight.dtype)
        vectors = nn.functional.embedding(rows.clamp(min=0), self.weight, self.padding_idx)
        return (vectors * used.unsqueeze(-1)).sum(-2) / used.sum(-1, keepdim=True)

    def full_table(self) -> torch.Tensor:
        """[vocab_size, dim]: the row every original id reads (for formats without the map)."""
        with torch.no_grad():
            rows: torch.Tensor = self(torch.arange(self.vocab_size))
        return rows

    def spelled_share(self, ids: torch.Tensor) -> tuple[float, float]:
        """(share of `ids` read from composed pieces, share read from the [UNK] row) of the ids
        that are not kept themselves (special tokens count as kept)."""
        ids = ids.flatten().long()
        kept = torch.zeros(self.vocab_size, dtype=torch.bool)
        kept[self.kept_ids.long()] = True
        dropped = ~kept[ids]
        if self.pieces is None:
            return 0.0, float(dropped.double().mean()) if len(ids) else 0.0
        composed = dropped & (self.pieces[ids, 0] != self.remap[ids])
        n = max(1, len(ids))
        return float(composed.sum()) / n, float((dropped & ~composed).sum()) / n


def spell_with(tokens: Sequence[str], kept: torch.Tensor, remap: torch.Tensor) -> torch.Tensor:
    """[len(tokens), MAX_PIECES] rows spelling each token: its own row if kept, else the greedy
    longest-match WordPiece segmentation over the kept tokens (a continuation "##x" spelled by
    continuations only), -1 padded; its `remap` row (the [UNK] row) alone when it needs more
    than MAX_PIECES pieces or a character no kept token has."""
    out = torch.full((len(tokens), MAX_PIECES), -1, dtype=torch.int32)
    row_of = {tokens[int(i)]: int(remap[int(i)]) for i in kept}
    for i, token in enumerate(tokens):
        if token in row_of:
            out[i, 0] = row_of[token]
            continue
        cont = token.startswith("##")
        text, first = (token[2:] if cont else token), not cont
        pieces: list[int] = []
        while text and len(pieces) < MAX_PIECES:
            for end in range(len(text), 0, -1):
                piece = text[:end] if first else "##" + text[:end]
                if piece in row_of:
                    pieces.append(row_of[piece])
                    text, first = text[end:], False
                    break
            else:
                break
        if not text and pieces:
            out[i, :len(pieces)] = torch.tensor(pieces, dtype=torch.int32)
        else:
            out[i, 0] = int(remap[i])  # the [UNK] row
    return out
