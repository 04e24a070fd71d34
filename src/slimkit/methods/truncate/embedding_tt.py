"""Tensor-train embedding tables (TT-Rec, Yin et al. 2021): each large table is replaced by K TT
cores fitted to the trained rows by TT-SVD, with the largest rank whose cores fit `budget` of
the table's fp32 bytes (or a fixed `rank`), then optionally recovered by fine-tuning or
distillation from the uncompressed model. TT-Rec trains its cores from scratch; fitted
post-training, a table that is not low-rank in row order loses accuracy until it recovers."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from ...core import Context, Targets, check_range, register
from ...core.config import DATA, DATA_AND_TEACHER, NOTHING
from ...core.errors import ConfigError, SlimkitError
from ...graph import swap_module
from ...nn.tt_embedding import TTEmbedding, balanced_factors, core_bytes, exact_factors, tt_svd
from ..recovery import Recovery, recover


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddingTT(Recovery):
    """Replace Embedding/EmbeddingBag tables of at least `min_rows` rows and `min_dim` columns
    by `cores` TT cores (a 1-wide table, an FM first-order term, has nothing to factor).
    Recovery (`recover`, `epochs`, ...) defaults to none: post-training."""

    method = "truncate.embedding_tt"
    budget: float = 0.1
    rank: int = 0
    cores: int = 3
    min_rows: int = 1000
    min_dim: int = 4
    recover: Literal["none", "finetune", "distill"] = "none"
    epochs: float = 0.0
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        if self.recover == "distill" and self.epochs > 0:
            return DATA_AND_TEACHER
        return DATA if self.recover != "none" and self.epochs > 0 else NOTHING

    def validate(self) -> None:
        check_range("budget", self.budget, 0.0, 1.0, lo_open=True)
        check_range("rank", self.rank, 0, 1 << 16)
        check_range("cores", self.cores, 2, 8)
        check_range("min_rows", self.min_rows, 1, 1 << 40)
        check_range("min_dim", self.min_dim, 1, 1 << 20)
        self.check_recovery()


def choose_rank(rows: int, dim: int, row_factors: list[int], dim_factors: list[int],
                budget_bytes: float) -> int:
    """The largest uniform inner rank whose cores fit `budget_bytes` (0 when even rank 1
    does not)."""
    rank = 0
    while core_bytes(row_factors, dim_factors, [rank + 1] * (len(row_factors) - 1)) \
            <= budget_bytes and rank < rows * dim:
        rank += 1
    return rank


def tt_table(table: nn.Embedding | nn.EmbeddingBag, config: EmbeddingTT) -> TTEmbedding | None:
    """The TT form of `table` at the configured size, or None when no rank fits the budget."""
    rows, dim = table.weight.shape
    row_factors = balanced_factors(rows, config.cores)
    dim_factors = exact_factors(dim, config.cores)
    rank = config.rank or choose_rank(rows, dim, row_factors, dim_factors,
                                      config.budget * 4 * rows * dim)
    if rank == 0:
        return None
    cores = tt_svd(table.weight, row_factors, dim_factors, rank)
    mode = table.mode if isinstance(table, nn.EmbeddingBag) else "none"
    new = TTEmbedding(rows, dim, row_factors, dim_factors, [c.shape[3] for c in cores[:-1]],
                      mode=mode, padding_idx=table.padding_idx)
    for param, core in zip(new.cores, cores, strict=True):
        param.data.copy_(core)
    return new


def relative_error(new: TTEmbedding, weight: torch.Tensor, block: int = 1 << 16) -> float:
    """||TT - W||^2 / ||W||^2 over every row (padding row included), a block of rows at a time."""
    num = den = 0.0
    with torch.no_grad():
        for start in range(0, weight.shape[0], block):
            ids = torch.arange(start, min(start + block, weight.shape[0]))
            saved, new.padding_idx = new.padding_idx, None
            try:
                rows = new.rows(ids)
            finally:
                new.padding_idx = saved
            num += float((rows - weight[ids]).double().pow(2).sum())
            den += float(weight[ids].double().pow(2).sum())
    return num / den if den > 0 else 0.0


@register(EmbeddingTT)
def apply_embedding_tt(model: nn.Module, config: EmbeddingTT, ctx: Context) -> nn.Module:
    chosen = [(n, m) for n, m in config.targets.select(model, ("Embedding", "EmbeddingBag"))
              if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    if not chosen:
        raise SlimkitError(f"{config.method}: targets match no Embedding/EmbeddingBag module")
    done, skipped, report = [], [], {}
    for name, table in chosen:
        if table.weight.shape[0] < config.min_rows or table.weight.shape[1] < config.min_dim:
            skipped.append(name)
            continue
        if isinstance(table, nn.EmbeddingBag) and (table.mode not in ("sum", "mean")
                                                   or table.include_last_offset):
            raise SlimkitError(f"{config.method}: {name} is an EmbeddingBag in mode "
                               f"{table.mode!r} (include_last_offset={table.include_last_offset})"
                               "; only sum and mean without a last offset are supported")
        if table.max_norm is not None:
            raise SlimkitError(f"{config.method}: {name} has max_norm={table.max_norm!r}: torch "
                               "renormalises its rows on lookup, TT rows would not be")
        new = tt_table(table, config)
        if new is None:
            raise ConfigError("budget", config.budget, f"enough for rank-1 cores of {name}")
        if sum(c.numel() for c in new.cores) >= table.weight.numel():
            raise ConfigError("rank", config.rank, f"cores smaller than {name}'s rows")
        report[name] = {"rank": max(new.ranks), "bytes": 4 * sum(c.numel() for c in new.cores),
                        "relative_error": round(relative_error(new, table.weight), 6)}
        swap_module(model, name, new, new.spec())
        done.append(name)
    if not done:
        raise SlimkitError(f"{config.method}: no table has min_rows={config.min_rows} rows and "
                           f"min_dim={config.min_dim} columns (left alone: {', '.join(skipped)})")
    ctx.info.update(replaced=done, skipped_small=skipped, tables=report)
    recover(model, config, ctx, desc=f"{config.method}: {config.recover}")
    return model
