"""How often training reads each row of embedding tables, for the methods that treat rows by
their frequency (quantize.embedding_frequency, truncate.embedding_hash / embedding_qr,
truncate.vocab, distill.static): ids are Zipf-distributed, so a few rows take most lookups and
many are never read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..core.task import Task

Table = nn.Embedding | nn.EmbeddingBag


def count_row_reads(model: nn.Module, tables: Sequence[tuple[str, Table]], task: Task, *,
                    batch_size: int, batches: int, seed: int) -> dict[str, torch.Tensor]:
    """Reads of each row of each table (float64 [rows]) over `batches` of the task's training
    batches (0: one epoch), counted by forward hooks while the model runs in eval mode. Padding
    ids are not reads: bags skip them, and every method keeps the padding row as it is."""
    counts = {n: torch.zeros(t.num_embeddings, dtype=torch.float64) for n, t in tables}

    def hook(name: str, table: Table) -> Callable[..., None]:
        def count(_module: nn.Module, args: tuple[Any, ...]) -> None:
            ids = args[0].detach().reshape(-1).long().cpu()
            if table.padding_idx is not None:
                ids = ids[ids != table.padding_idx]
            # Only the ids seen: a full-length bincount per batch costs rows x batches.
            counts[name].index_add_(0, ids, torch.ones(ids.shape[0], dtype=torch.float64))
        return count

    handles = [t.register_forward_pre_hook(hook(n, t)) for n, t in tables]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(task.train_batches(batch_size, seed=seed)):
                if batches and i >= batches:
                    break
                model(*task.inputs(batch))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counts


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
