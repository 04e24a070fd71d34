"""Vocabulary pruning: keep the rows of a word-embedding table that a domain corpus uses (plus
special tokens) and drop the rest (as in Abdaoui et al. 2020, "Load What You Need", and
TextPruner's vocabulary pruning). Half of MiniLM's parameters are its 30,522-row table; product
reviews use a fraction of it. The model keeps taking the original token ids through an id map;
deployment writes a tokenizer whose vocabulary is the kept rows.
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

    def requires(self) -> frozenset[str]:
        return DATA

    def validate(self) -> None:
        check_range("min_count", self.min_count, 1, 1 << 30)
        check_range("epochs", self.epochs, 0.0, 100.0, lo_open=True)
        check_range("batch_size", self.batch_size, 1, 1 << 20)
        for i in self.keep_ids:
            check_range("keep_ids", i, 0, 1 << 31)


def token_counts(task: Any, vocab_size: int, epochs: float, batch_size: int,
                 seed: int) -> torch.Tensor:
    """How often each id occurs (padding excluded) in `epochs` of the task's training batches."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    total = max(1, round(epochs * task.num_train_batches(batch_size)))
    for step, batch in enumerate(task.train_batches(batch_size, seed=seed)):
        if step >= total:
            break
        ids, mask = task.inputs(batch)[:2]
        counts += torch.bincount(ids[mask.bool()].flatten(), minlength=vocab_size)[:vocab_size]
    return counts


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
    extra = torch.tensor([i for i in [*specials, *config.keep_ids, unk] if 0 <= i < n],
                         dtype=torch.long)
    new = RemappedEmbedding.from_embedding(table, torch.cat([kept, extra]), int(unk))
    swap_module(model, config.module, new,
                {"vocab_size": n, "num_kept": int(new.weight.shape[0]),
                 "embedding_dim": table.embedding_dim, "padding_idx": new.padding_idx})
    ctx.info.update({"vocab_before": n, "vocab_after": int(new.weight.shape[0]),
                     "rows_removed": round(1 - new.weight.shape[0] / n, 4),
                     "tokens_counted": int(counts.sum())})
    return model
