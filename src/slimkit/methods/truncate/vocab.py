"""Vocabulary pruning: keep the rows of a word-embedding table that a domain corpus uses (plus
special tokens) and drop the rest (as in Abdaoui et al. 2020, "Load What You Need", and
TextPruner's vocabulary pruning). Half of MiniLM's parameters are its 30,522-row table; product
reviews use a fraction of it. The model keeps taking the original token ids through an id map.

A dropped token used to read the [UNK] row, which turned 13% of the word pieces of general
English (held-out Wikipedia) into [UNK] for a review vocabulary. With `compose` (the default)
it reads the mean of the kept pieces that spell it instead (nn/remapped_embedding.py), and
single Latin characters are always kept, so only tokens of more than four pieces fall back to
[UNK]: 0.84% of held-out Wikipedia's word pieces (12.2% spelled) for the MiniLM plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ...core import Context, MethodConfig, check_range, register
from ...core.config import DATA
from ...core.errors import ConfigError, SlimkitError
from ...graph import get_submodule, swap_module
from ...nn.remapped_embedding import RemappedEmbedding
from ..row_reads import token_counts

LATIN_END = 0x250  # end of Unicode's Latin Extended-B block


@dataclasses.dataclass(frozen=True, kw_only=True)
class Vocab(MethodConfig):
    """Keep the token ids seen at least `min_count` times in the task's training text."""

    method = "truncate.vocab"
    module: str = "embeddings.word_embeddings"
    min_count: int = 1
    epochs: float = 1.0
    batch_size: int = 64
    keep_ids: tuple[int, ...] = ()
    unk_id: int | None = None
    compose: bool | None = None  # None: when the task has a WordPiece tokenizer to spell with

    def requires(self) -> frozenset[str]:
        return DATA

    def validate(self) -> None:
        check_range("min_count", self.min_count, 1, 1 << 30)
        check_range("epochs", self.epochs, 0.0, 100.0, lo_open=True)
        check_range("batch_size", self.batch_size, 1, 1 << 20)
        for i in self.keep_ids:
            check_range("keep_ids", i, 0, 1 << 31)


def _special_ids(task: Any) -> list[int]:
    tokenizer = getattr(task, "tokenizer", None)
    return [int(i) for i in getattr(tokenizer, "all_special_ids", [])]


@register(Vocab)
def apply_vocab(model: nn.Module, config: Vocab, ctx: Context) -> nn.Module:
    try:
        table = get_submodule(model, config.module)
    except AttributeError:
        raise ConfigError("module", config.module, "the path of an nn.Embedding") from None
    if not isinstance(table, nn.Embedding):
        raise ConfigError("module", config.module,
                          f"an nn.Embedding (it is a {type(table).__name__})")
    task = ctx.require_task(config.method)
    specials = _special_ids(task)
    unk = config.unk_id if config.unk_id is not None else getattr(
        getattr(task, "tokenizer", None), "unk_token_id", None)
    if unk is None:
        raise SlimkitError("truncate.vocab: set unk_id (the task has no tokenizer to ask)")
    n = table.num_embeddings
    counts = token_counts(task, n, config.epochs, config.batch_size, ctx.seed)
    kept = (counts >= config.min_count).nonzero().flatten()
    tokens = _vocabulary(task, n) if config.compose is not False else None
    if config.compose and tokens is None:
        raise ConfigError("compose", True, "false or unset for a task without a WordPiece "
                          "tokenizer (the dropped tokens are spelled from the kept ones)")
    # Latin letters, digits and punctuation alone (a few hundred rows) spell any English word.
    chars = [i for i, t in enumerate(tokens or []) if len(t.removeprefix("##")) == 1
             and ord(t.removeprefix("##")) < LATIN_END]
    extra = torch.tensor([i for i in [*specials, *config.keep_ids, unk, *chars] if 0 <= i < n],
                         dtype=torch.long)
    new = RemappedEmbedding.from_embedding(table, torch.cat([kept, extra]), int(unk), tokens)
    swap_module(model, config.module, new,
                {"vocab_size": n, "num_kept": int(new.weight.shape[0]),
                 "embedding_dim": table.embedding_dim, "padding_idx": new.padding_idx,
                 "compose": tokens is not None})
    ctx.info.update({"vocab_before": n, "vocab_after": int(new.weight.shape[0]),
                     "rows_removed": round(1 - new.weight.shape[0] / n, 4),
                     "tokens_counted": int(counts.sum()), "compose": tokens is not None,
                     **_general_text_shares(task, new)})
    return model


def _vocabulary(task: Any, n: int) -> list[str] | None:
    """The token strings by id when the task's tokenizer is a WordPiece one of `n` ids."""
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is None or len(tokenizer) != n or \
            type(getattr(tokenizer, "backend_tokenizer", None)).__name__ != "Tokenizer":
        return None
    model = getattr(tokenizer.backend_tokenizer, "model", None)
    if type(model).__name__ != "WordPiece":
        return None
    return list(tokenizer.convert_ids_to_tokens(list(range(n))))


def _general_text_shares(task: Any, table: RemappedEmbedding) -> dict[str, float]:
    """How the kept vocabulary reads general text the task holds out (`general_text_ids`, if
    the task has it): the shares of word pieces spelled from kept pieces and read as [UNK]."""
    held_out = getattr(task, "general_text_ids", None)
    if held_out is None:
        return {}
    ids = torch.tensor([i for seq in held_out() for i in seq], dtype=torch.long)
    composed, unk = table.spelled_share(ids)
    return {"general_text_composed": round(composed, 5), "general_text_unk": round(unk, 5)}
