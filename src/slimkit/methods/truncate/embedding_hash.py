"""Rebuild trained embedding tables with far fewer rows by the hashing trick (Weinberger et al.
2009, "Feature Hashing for Large Scale Multitask Learning"; Chen et al. 2015, HashedNets),
frequency-aware and post-training: the ids training reads most keep their own row, the rest
hash into shared buckets, each initialised as the count-weighted mean of its ids' rows (the
least-squares choice for the rows as training reads them)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ...core import Context, check_range, register
from ...core.errors import ConfigError
from ...nn.hashed_embedding import HashedEmbedding, hash_rows
from .row_counts import (
    Table,
    TableShrink,
    bag_mode,
    budget_error,
    budget_rows,
    hot_for_share,
    hot_ids,
    rebuild_tables,
    row_weights,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddingHash(TableShrink):
    """Hash each table into `buckets` shared rows plus hot rows (`hot` of all stored rows), or
    size it to `budget` of its fp32 bytes (default 1/8 when neither is set). With hot = 0 no
    per-id map is stored: the row is computed from the id (seeded by `salt`)."""

    method = "truncate.embedding_hash"
    buckets: int | None = None
    salt: int = 0

    def validate(self) -> None:
        self.check_common()
        if self.buckets is not None:
            if self.budget is not None:
                raise ConfigError("buckets", self.buckets, "unset when budget is set")
            check_range("buckets", self.buckets, 1, 1 << 40)
        check_range("salt", self.salt, 0, (1 << 31) - 1)


BLOCK_ROWS = 1 << 18


def bucket_means(weight: torch.Tensor, rows: torch.Tensor, n_rows: int,
                 w: torch.Tensor) -> torch.Tensor:
    """Row r = the `w`-weighted mean of the `weight` rows whose id maps to r (zeros if none)."""
    w = w.double()
    total = torch.zeros(n_rows, weight.shape[1], dtype=torch.float64)
    # A block of rows at a time: the whole table in fp64 is 2x its size again (5 GB at 10M x 64).
    for start in range(0, weight.shape[0], BLOCK_ROWS):
        block = slice(start, start + BLOCK_ROWS)
        total.index_add_(0, rows[block], weight[block].double() * w[block].unsqueeze(1))
    mass = torch.zeros(n_rows, dtype=torch.float64).index_add_(0, rows, w)
    return (total / mass.clamp(min=1e-30).unsqueeze(1)).to(weight.dtype)


def sizes(table: Table, config: EmbeddingHash) -> tuple[int, int]:
    """(hot rows, buckets) for `table`."""
    if config.buckets is not None:
        return hot_for_share(config.buckets, config.hot), config.buckets
    budget = config.effective_budget()
    rows = budget_rows(table, budget, with_map=config.hot > 0)
    n_hot = round(rows * config.hot)
    if rows - n_hot < 1:
        name = f"{table.num_embeddings} x {table.embedding_dim}"
        raise budget_error(budget, name, "room for its id map and one shared row")
    return n_hot, rows - n_hot


def hash_table(table: Table, counts: torch.Tensor, config: EmbeddingHash) -> nn.Module | str:
    n, pad = table.num_embeddings, table.padding_idx
    n_hot, buckets = sizes(table, config)
    n_hot = min(n_hot, n - (pad is not None))
    if n_hot + buckets >= n:
        return f"{n_hot} hot + {buckets} buckets is not fewer than its {n} rows"
    new = HashedEmbedding(n, table.embedding_dim, n_hot, buckets, bag_mode(table), pad,
                          config.salt)
    weight = table.weight.detach().float().cpu()
    ids = torch.arange(n)
    rows = hash_rows(ids, buckets, config.salt) + n_hot
    w = row_weights(counts, pad)
    if n_hot > 0:
        hot = hot_ids(counts, n_hot, pad)
        rows[hot] = torch.arange(n_hot)
        w[hot] = 0.0  # exact rows: they do not pull on any bucket
        new.slot.copy_(rows.to(new.slot.dtype))
    table_rows = bucket_means(weight, rows, n_hot + buckets, w)
    if n_hot > 0:
        table_rows[:n_hot] = weight[hot]
    new.table.weight.copy_(table_rows)
    if pad is not None:
        new.pad_row.copy_(weight[pad])
    return new.to(table.weight.device)


@register(EmbeddingHash)
def apply_embedding_hash(model: nn.Module, config: EmbeddingHash, ctx: Context) -> nn.Module:
    return rebuild_tables(model, config, ctx,
                          lambda _name, table, counts: hash_table(table, counts, config))
