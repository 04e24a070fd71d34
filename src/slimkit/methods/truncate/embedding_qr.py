"""Rebuild trained embedding tables as quotient-remainder compositional embeddings (Shi et al.
2020, KDD, "Compositional Embeddings Using Complementary Partitions for Memory-Efficient
Recommendation Systems"): row i ~ Q(i // m) op R(i % m), op = multiply or add, post-training.
Q and R are fitted to the trained rows by count-weighted least squares (alternating updates; for
the product one rank-1 problem per dimension, started from its SVD), so the rows training reads
most are reproduced best; the hottest ids can keep an exact row of their own."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from torch import nn

from ...core import Context, check_range, register
from ...core.errors import ConfigError
from ...nn.qr_embedding import QREmbedding
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
class EmbeddingQR(TableShrink):
    """Split each id into quotient and remainder by `collisions` (m: ids sharing a Q row), or
    choose the smallest m whose ceil(N / m) + m rows fit `budget` of the table's fp32 bytes
    (default 1/8 when neither is set). `hot` > 0 gives that share of the stored rows to the
    hottest ids as exact rows (plus an id map). At most `iterations` of the alternating fit."""

    method = "truncate.embedding_qr"
    collisions: int | None = None
    op: Literal["mult", "add"] = "mult"
    hot: float = 0.0
    iterations: int = 100

    def validate(self) -> None:
        self.check_common()
        if self.collisions is not None:
            if self.budget is not None:
                raise ConfigError("collisions", self.collisions, "unset when budget is set")
            check_range("collisions", self.collisions, 2, 1 << 40)
        check_range("iterations", self.iterations, 0, 10_000)


def fit_qr(weight: torch.Tensor, w: torch.Tensor, collisions: int, op: str,
           iterations: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q [ceil(N / m), D], R [m, D]) minimising sum_i w_i ||E_i - Q[i // m] op R[i % m]||^2,
    by at most `iterations` alternating updates (stopping once the residual stops falling)."""
    n, dim = weight.shape
    m = collisions
    nq = -(-n // m)
    grid = torch.zeros(nq * m, dim, dtype=torch.float64)
    grid[:n] = weight.double()
    mass = torch.zeros(nq * m, dtype=torch.float64)
    mass[:n] = w.double()
    grid, mass = grid.view(nq, m, dim), mass.view(nq, m, 1)
    tiny = 1e-30

    def add_step(q: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = (mass * (grid - r)).sum(1) / mass.sum(1).clamp(min=tiny)
        r = (mass * (grid - q.unsqueeze(1))).sum(0) / mass.sum(0).clamp(min=tiny)
        return q, r

    def mult_step(q: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = (mass * grid * r).sum(1) / (mass * r * r).sum(1).clamp(min=tiny)
        qq = q.unsqueeze(1)
        r = (mass * grid * qq).sum(0) / (mass * qq * qq).sum(0).clamp(min=tiny)
        return q, r

    if op == "add":
        step = add_step
        q, r = add_step(torch.zeros(nq, dim, dtype=torch.float64),
                        torch.zeros(m, dim, dtype=torch.float64))
    else:
        # Per dimension d, the [nq, m] matrix E[:, d] is a rank-1 q_d r_d^T: the SVD of the
        # sqrt-weighted matrix starts it, alternating weighted least squares finishes it.
        step = mult_step
        u, s, vh = torch.linalg.svd((mass.sqrt() * grid).permute(2, 0, 1), full_matrices=False)
        root = s[:, :1].sqrt()
        q, r = (u[:, :, 0] * root).T, (vh[:, 0, :] * root).T  # [nq, D], [m, D]
    last = math.inf
    for i in range(iterations):
        q, r = step(q, r)
        if i % 10 == 9:
            both = q.unsqueeze(1) + r if op == "add" else q.unsqueeze(1) * r
            loss = float((mass * (grid - both).pow(2)).sum())
            if last - loss <= 1e-6 * loss:
                break
            last = loss
    return q.to(weight.dtype), r.to(weight.dtype)


def smallest_collisions(n: int, rows: int) -> int | None:
    """The smallest m >= 2 with ceil(n / m) + m <= rows (m beyond sqrt(n) only grows it)."""
    for m in range(max(2, math.ceil(n / max(rows, 1))), math.isqrt(n) + 2):
        if -(-n // m) + m <= rows:
            return m
    return None


def sizes(table: Table, config: EmbeddingQR) -> tuple[int, int]:
    """(hot rows, collisions) for `table`."""
    n = table.num_embeddings
    if config.collisions is not None:
        given = config.collisions
        return hot_for_share(-(-n // given) + given, config.hot), given
    budget = config.effective_budget()
    rows = budget_rows(table, budget, with_map=config.hot > 0)
    n_hot = round(rows * config.hot)
    m = smallest_collisions(n, rows - n_hot)
    if m is None:
        least = 2 * math.isqrt(n)
        raise budget_error(budget, f"{n} x {table.embedding_dim}",
                           f"about {least} rows for Q and R besides {n_hot} hot rows")
    return n_hot, m


def qr_table(table: Table, counts: torch.Tensor, config: EmbeddingQR) -> nn.Module | str:
    n, pad = table.num_embeddings, table.padding_idx
    n_hot, m = sizes(table, config)
    n_hot = min(n_hot, n - (pad is not None))
    stored = n_hot + -(-n // m) + m
    if stored >= n:
        return f"{stored} rows (collisions={m}, {n_hot} hot) is not fewer than its {n} rows"
    new = QREmbedding(n, table.embedding_dim, m, config.op, n_hot, bag_mode(table), pad)
    weight = table.weight.detach().float().cpu()
    w = row_weights(counts, pad)
    if n_hot > 0:
        hot = hot_ids(counts, n_hot, pad)
        w[hot] = 0.0  # exact rows: Q and R need not reproduce them
        new.slot[hot] = torch.arange(n_hot, dtype=new.slot.dtype)
        new.exact.weight.copy_(weight[hot])
    q, r = fit_qr(weight, w, m, config.op, config.iterations)
    new.q.weight.copy_(q)
    new.r.weight.copy_(r)
    if pad is not None:
        new.pad_row.copy_(weight[pad])
    return new.to(table.weight.device)


@register(EmbeddingQR)
def apply_embedding_qr(model: nn.Module, config: EmbeddingQR, ctx: Context) -> nn.Module:
    return rebuild_tables(model, config, ctx,
                          lambda _name, table, counts: qr_table(table, counts, config))
