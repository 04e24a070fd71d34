"""Rebuild trained embedding tables as mixed-dimension tables (Ginart et al. 2021, "Mixed
Dimension Embeddings with Application to Memory-Efficient Recommendation Systems"), post-training:
rows sorted by how often training reads them are cut into `blocks` blocks of geometrically
growing size (the hottest 4^-(K-1) of the rows first), block k gets width
w_k = lambda * dim * (p_k / p_1)^alpha with p_k the block's mean read count (the paper's power
rule), lambda the largest that fits `budget` of the table's fp32 bytes (rows, projections,
biases, id map and padding row all counted). Each block starts from its count-weighted PCA: the
rows' coordinates on the top w_k principal directions, those directions as the projection and
the weighted mean as the bias, so the rows training reads most are reproduced best."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ...core import Context, check_range, register
from ...core.errors import ConfigError
from ...nn.hashed_embedding import slot_dtype
from ...nn.mixed_dim_embedding import MixedDimEmbedding
from .row_counts import Table, TableShrink, bag_mode, budget_error, rebuild_tables, row_weights

# Rows per pass when accumulating a block's covariance and projecting its rows.
BLOCK_ROWS = 1 << 18


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddingMixedDim(TableShrink):
    """`blocks` frequency blocks per table, widths by the power rule with exponent `alpha`
    (0: one width for all; larger: cold rows narrower), sized to `budget` (default 1/8)."""

    method = "truncate.embedding_mixed_dim"
    blocks: int = 4
    alpha: float = 0.3
    hot: float = 0.0

    def validate(self) -> None:
        self.check_common()
        if self.hot != 0.0:
            raise ConfigError("hot", self.hot, "0: every block is sized by the power rule")
        check_range("blocks", self.blocks, 1, 16)
        check_range("alpha", self.alpha, 0.0, 4.0)


def block_sizes(n: int, blocks: int) -> list[int]:
    """Sizes of `blocks` blocks over n sorted rows, each 4x the one before (at least one row)."""
    ends = [max(1, math.ceil(n * 4.0 ** (k - blocks + 1))) for k in range(blocks)]
    ends = sorted({min(n, e) for e in ends})
    return [b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def table_bytes(table: Table, sizes: list[int], widths: list[int]) -> int:
    dim = table.embedding_dim
    floats = sum(n * w + w * dim + dim for n, w in zip(sizes, widths, strict=True))
    pad = dim if table.padding_idx is not None else 0
    slot = torch.empty(0, dtype=slot_dtype(sum(sizes))).element_size()
    return 4 * (floats + pad) + slot * table.num_embeddings


def choose_widths(table: Table, sizes: list[int], popularity: list[float], alpha: float,
                  budget_bytes: float) -> list[int] | None:
    """The widest power-rule widths that fit, by bisection on lambda; None if width 1 does not."""
    dim = table.embedding_dim
    top = max(popularity[0], 1e-12)
    shape = [(max(p, 1e-12) / top) ** alpha for p in popularity]

    def widths(lam: float) -> list[int]:
        return [min(dim, max(1, round(lam * dim * s))) for s in shape]

    if table_bytes(table, sizes, widths(0.0)) > budget_bytes:
        return None
    lo, hi = 0.0, 1.0 / min(shape)
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if table_bytes(table, sizes, widths(mid)) <= budget_bytes else (lo, mid)
    return widths(lo)


def weighted_pca(weight: torch.Tensor, ids: torch.Tensor, w: torch.Tensor, width: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(coordinates [len(ids), width], directions [width, dim], mean [dim]) of the rows `ids`,
    weighted by `w`; covariance and projection a block of rows at a time."""
    dim = weight.shape[1]
    mass = w[ids].double()
    total = float(mass.sum()) or 1.0
    mean = torch.zeros(dim, dtype=torch.float64)
    for s in range(0, len(ids), BLOCK_ROWS):
        mean += (weight[ids[s:s + BLOCK_ROWS]].double() * mass[s:s + BLOCK_ROWS, None]).sum(0)
    mean /= total
    cov = torch.zeros(dim, dim, dtype=torch.float64)
    for s in range(0, len(ids), BLOCK_ROWS):
        x = (weight[ids[s:s + BLOCK_ROWS]].double() - mean) * mass[s:s + BLOCK_ROWS, None].sqrt()
        cov += x.T @ x
    _, vectors = torch.linalg.eigh(cov)
    directions = vectors[:, -width:].flip(1)  # the top `width` principal directions [dim, w]
    coords = torch.cat([(weight[ids[s:s + BLOCK_ROWS]].double() - mean) @ directions
                        for s in range(0, len(ids), BLOCK_ROWS)])
    return coords.float(), directions.T.float(), mean.float()


def mixed_dim_table(table: Table, counts: torch.Tensor, config: EmbeddingMixedDim
                    ) -> nn.Module | str:
    n, pad = table.num_embeddings, table.padding_idx
    budget = config.effective_budget()
    weight = table.weight.detach().float().cpu()
    w = row_weights(counts, pad)
    order = torch.argsort(counts.double(), descending=True, stable=True)
    sizes = block_sizes(n, config.blocks)
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    popularity = [float(counts[order[a:a + s]].double().mean())
                  for a, s in zip(starts, sizes, strict=True)]
    widths = choose_widths(table, sizes, popularity, config.alpha,
                           budget * 4 * n * table.embedding_dim)
    if widths is None:
        raise budget_error(budget, f"{n} x {table.embedding_dim}",
                           f"{table_bytes(table, sizes, [1] * len(sizes))} bytes at width 1")
    if widths == [table.embedding_dim] * len(widths):
        return "the budget keeps every block at full width"
    new = MixedDimEmbedding(n, table.embedding_dim, sizes, widths, bag_mode(table), pad)
    slot = torch.empty(n, dtype=torch.long)
    slot[order] = torch.arange(n)
    new.slot.copy_(slot.to(new.slot.dtype))
    for k, (a, s) in enumerate(zip(starts, sizes, strict=True)):
        coords, directions, mean = weighted_pca(weight, order[a:a + s], w, widths[k])
        new.rows[k].data.copy_(coords)
        new.proj[k].data.copy_(directions)
        new.bias[k].data.copy_(mean)
    if pad is not None:
        new.pad_row.copy_(weight[pad])
    return new.to(table.weight.device)


@register(EmbeddingMixedDim)
def apply_embedding_mixed_dim(model: nn.Module, config: EmbeddingMixedDim,
                              ctx: Context) -> nn.Module:
    return rebuild_tables(model, config, ctx, lambda _name, table, counts:
                          mixed_dim_table(table, counts, config))
