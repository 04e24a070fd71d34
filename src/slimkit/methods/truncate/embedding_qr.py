"""Rebuild trained embedding tables as quotient-remainder compositional embeddings (Shi et al.
2020, KDD, "Compositional Embeddings Using Complementary Partitions for Memory-Efficient
Recommendation Systems"): row i ~ Q(i // m) op R(i % m), op = multiply or add, post-training.
Q and R are fitted to the trained rows by count-weighted least squares (alternating updates; for
the product one rank-1 problem per dimension, started from its leading singular pair), so the
rows training reads most are reproduced best; the hottest ids can keep an exact row of their
own."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
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


# Table rows per pass of the fit: its fp64 working copies are per block, never the whole table
# (a 10M x 64 table is 5 GB per fp64 copy).
BLOCK_ROWS = 1 << 18
POWER_STEPS = 8
TINY = 1e-30

Block = tuple[int, int, torch.Tensor, torch.Tensor]


def _blocks(weight: torch.Tensor, w: torch.Tensor, m: int) -> Iterator[Block]:
    """(a0, a1, E [a1 - a0, m, D], mass [a1 - a0, m, 1]) in fp64 for Q rows [a0, a1); the rows
    past the table's end are zeros of zero mass."""
    n, dim = weight.shape
    nq = -(-n // m)
    per = max(1, BLOCK_ROWS // m)
    for a0 in range(0, nq, per):
        a1 = min(nq, a0 + per)
        lo, hi = a0 * m, min(n, a1 * m)
        grid = torch.zeros((a1 - a0) * m, dim, dtype=torch.float64)
        grid[:hi - lo] = weight[lo:hi].double()
        mass = torch.zeros((a1 - a0) * m, dtype=torch.float64)
        mass[:hi - lo] = w[lo:hi].double()
        yield a0, a1, grid.view(a1 - a0, m, dim), mass.view(a1 - a0, m, 1)


def _rank1_start(weight: torch.Tensor, w: torch.Tensor, m: int, nq: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per dimension d the [nq, m] matrix E[:, d] as a rank-1 q_d r_d^T: the leading singular
    pair of the sqrt-weighted matrix A_d, by power iteration over blocks (an exact rank-1 matrix
    needs one step)."""
    dim = weight.shape[1]
    v = torch.ones(m, dim, dtype=torch.float64) / math.sqrt(m)
    for _ in range(POWER_STEPS):
        nxt = torch.zeros(m, dim, dtype=torch.float64)
        for _a0, _a1, grid, mass in _blocks(weight, w, m):
            a = mass.sqrt() * grid
            nxt += (a * (a * v).sum(1, keepdim=True)).sum(0)  # A^T A v
        v = nxt / nxt.norm(dim=0, keepdim=True).clamp(min=TINY)
    u = torch.zeros(nq, dim, dtype=torch.float64)
    for a0, a1, grid, mass in _blocks(weight, w, m):
        u[a0:a1] = (mass.sqrt() * grid * v).sum(1)  # A v = s u_unit
    root = u.norm(dim=0).sqrt()  # sqrt(s)
    return u / root.clamp(min=TINY), v * root


def fit_qr(weight: torch.Tensor, w: torch.Tensor, collisions: int, op: str,
           iterations: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q [ceil(N / m), D], R [m, D]) minimising sum_i w_i ||E_i - Q[i // m] op R[i % m]||^2,
    by at most `iterations` alternating updates (stopping once the residual stops falling).
    Each update is a pass over the table a block of rows at a time (fp64 sums)."""
    n, dim = weight.shape
    m = collisions
    nq = -(-n // m)
    weight, w = weight.detach(), w.detach()

    def q_step(r: torch.Tensor) -> torch.Tensor:
        q = torch.zeros(nq, dim, dtype=torch.float64)
        for a0, a1, grid, mass in _blocks(weight, w, m):
            if op == "add":
                q[a0:a1] = (mass * (grid - r)).sum(1) / mass.sum(1).clamp(min=TINY)
            else:
                q[a0:a1] = (mass * grid * r).sum(1) / (mass * r * r).sum(1).clamp(min=TINY)
        return q

    def r_step(q: torch.Tensor) -> torch.Tensor:
        num = torch.zeros(m, dim, dtype=torch.float64)
        den = torch.zeros(m, 1 if op == "add" else dim, dtype=torch.float64)
        for a0, a1, grid, mass in _blocks(weight, w, m):
            qq = q[a0:a1].unsqueeze(1)
            if op == "add":
                num += (mass * (grid - qq)).sum(0)
                den += mass.sum(0)
            else:
                num += (mass * grid * qq).sum(0)
                den += (mass * qq * qq).sum(0)
        return num / den.clamp(min=TINY)

    def loss(q: torch.Tensor, r: torch.Tensor) -> float:
        total = 0.0
        for a0, a1, grid, mass in _blocks(weight, w, m):
            qq = q[a0:a1].unsqueeze(1)
            both = qq + r if op == "add" else qq * r
            total += float((mass * (grid - both).pow(2)).sum())
        return total

    if op == "add":
        r = torch.zeros(m, dim, dtype=torch.float64)
        q = q_step(r)
        r = r_step(q)
    else:
        q, r = _rank1_start(weight, w, m, nq)
    last = math.inf
    for i in range(iterations):
        q = q_step(r)
        r = r_step(q)
        if i % 10 == 9:
            now = loss(q, r)
            if last - now <= 1e-6 * now:
                break
            last = now
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
