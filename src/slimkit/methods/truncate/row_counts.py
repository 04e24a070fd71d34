"""What truncate.embedding_hash and truncate.embedding_qr share: their common options, which
tables they rebuild, how often training reads each row (counted with hooks on the task's training
batches), the row arithmetic of a byte budget, and the rebuild-swap-recover loop."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...core import Context, MethodConfig, Targets, check_range
from ...core.config import DATA, DATA_AND_TEACHER
from ...core.errors import ConfigError, SlimkitError
from ...graph import swap_module
from ...nn.hashed_embedding import slot_dtype, stored_bytes
from ..distill.logits import distill
from ..row_reads import count_row_reads

log = logging.getLogger(__name__)

# Weight of a row training never read: small enough that it does not pull a shared row away from
# the rows that matter, non-zero so a bucket holding only such rows still gets their mean.
UNSEEN_WEIGHT = 1e-3
DEFAULT_BUDGET = 0.125  # when neither a budget nor an explicit size is set


@dataclasses.dataclass(frozen=True, kw_only=True)
class TableShrink(MethodConfig):
    """Options both embedding-rebuilding methods take. `budget`: a fraction of each table's
    fp32 bytes that everything the new table stores must fit (rows, id map, padding row);
    `hot`: the share of the stored rows given to the hottest ids (exact copies); tables with
    fewer than `min_rows` rows or narrower than `min_dim` are left alone. Rows are counted on
    `count_epochs` of the task's training batches; `recover_epochs` > 0 then distills from the
    model as it was before the plan (Hinton et al. 2015) at `lr`."""

    budget: float | None = None
    hot: float = 0.5
    min_rows: int = 256
    min_dim: int = 2
    count_epochs: float = 1.0
    batch_size: int = 512
    recover_epochs: float = 0.0
    lr: float = 1e-3
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA_AND_TEACHER if self.recover_epochs > 0 else DATA

    def effective_budget(self) -> float:
        return DEFAULT_BUDGET if self.budget is None else self.budget

    def check_common(self) -> None:
        # Checked at its default too, so `slimkit methods` shows the range.
        check_range("budget", self.effective_budget(), 0.0, 1.0, lo_open=True)
        check_range("hot", self.hot, 0.0, 1.0, hi_open=True)
        check_range("min_rows", self.min_rows, 2, 1 << 40)
        check_range("min_dim", self.min_dim, 1, 1 << 20)
        check_range("count_epochs", self.count_epochs, 0.0, 100.0, lo_open=True)
        check_range("batch_size", self.batch_size, 1, 1 << 20)
        check_range("recover_epochs", self.recover_epochs, 0.0, 1000.0)
        check_range("lr", self.lr, 0.0, 10.0, lo_open=True)


Table = nn.Embedding | nn.EmbeddingBag


def select_tables(model: nn.Module, config: TableShrink) -> tuple[list[tuple[str, Table]],
                                                                   dict[str, str]]:
    """The tables to rebuild, and why each other matching table is left alone."""
    chosen = config.targets.select(model, ("Embedding", "EmbeddingBag"))
    if not chosen:
        raise SlimkitError(f"{config.method}: targets match no Embedding/EmbeddingBag module")
    tables: list[tuple[str, Table]] = []
    skipped: dict[str, str] = {}
    for name, table in chosen:
        if not isinstance(table, (nn.Embedding, nn.EmbeddingBag)):
            skipped[name] = f"a {type(table).__name__}"
        elif table.num_embeddings < config.min_rows:
            skipped[name] = f"{table.num_embeddings} rows < min_rows"
        elif table.embedding_dim < config.min_dim:
            skipped[name] = f"{table.embedding_dim} wide < min_dim"
        elif isinstance(table, nn.EmbeddingBag) and (
                table.mode not in ("sum", "mean") or table.include_last_offset):
            skipped[name] = f"EmbeddingBag mode={table.mode!r} (sum or mean, no last offset)"
        elif table.max_norm is not None:  # torch renormalises rows on lookup; rebuilt rows not
            skipped[name] = f"max_norm={table.max_norm!r} (rows renormalised on lookup)"
        else:
            tables.append((name, table))
    return tables, skipped


def bag_mode(table: Table) -> str:
    return table.mode if isinstance(table, nn.EmbeddingBag) else "none"


def access_counts(model: nn.Module, tables: list[tuple[str, Table]], ctx: Context,
                  config: TableShrink) -> dict[str, torch.Tensor]:
    """How many times `count_epochs` of training read each row of each table (padding
    excluded)."""
    task = ctx.require_task(config.method)
    total = max(1, round(config.count_epochs * task.num_train_batches(config.batch_size)))
    return count_row_reads(model, tables, task, batch_size=config.batch_size, batches=total,
                           seed=ctx.seed)


def row_weights(counts: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
    w = counts.double() + UNSEEN_WEIGHT
    if padding_idx is not None:
        w[padding_idx] = 0.0  # the padding row is kept exactly, outside every fit
    return w


def hot_ids(counts: torch.Tensor, n_hot: int, padding_idx: int | None) -> torch.Tensor:
    """The `n_hot` most-read ids (ties: lower id first), never the padding id."""
    order = counts.double().clone()
    if padding_idx is not None:
        order[padding_idx] = -1.0
    return torch.sort(-order, stable=True).indices[:n_hot]


def fixed_bytes(table: Table, map_rows: int | None) -> int:
    """Bytes stored besides the rows: the padding row, and the id map when `map_rows` is set
    (the map's integer type depends on how many rows it indexes)."""
    pad = 4 * table.embedding_dim if table.padding_idx is not None else 0
    if map_rows is None:
        return pad
    return pad + table.num_embeddings * torch.empty(0, dtype=slot_dtype(map_rows)).element_size()


def budget_rows(table: Table, budget: float, with_map: bool) -> int:
    """How many fp32 rows fit `budget` x the table's fp32 bytes after the fixed bytes."""
    row = 4 * table.embedding_dim
    allowed = budget * table.num_embeddings * row
    rows = math.floor((allowed - fixed_bytes(table, 1 if with_map else None)) / row)
    if with_map and rows > torch.iinfo(torch.int16).max:  # the map needs int32 then
        rows = math.floor((allowed - fixed_bytes(table, rows)) / row)
    return rows


def hot_for_share(share_rows: int, hot: float) -> int:
    """Hot rows when `share_rows` other rows are sized explicitly: hot / (1 - hot) of them."""
    return round(share_rows * hot / (1.0 - hot))


def budget_error(budget: float, name: str, need: str) -> ConfigError:
    """Named `budget` even when the default budget was used (its value is shown)."""
    return ConfigError("budget", budget, f"a larger fraction: {name} needs {need}")


def init_error(table: Table, new: nn.Module, w: torch.Tensor) -> float:
    """sum_i w_i ||E_i - E'_i||^2 / sum_i w_i ||E_i||^2 over every id: 0 is exact, 1 is no
    better than zeros."""
    err = total = 0.0
    with torch.no_grad():  # a block of rows at a time: fp64 copies of a 10M-row table are GBs
        for start in range(0, table.num_embeddings, 1 << 16):
            ids = torch.arange(start, min(start + (1 << 16), table.num_embeddings),
                               device=table.weight.device)
            approx = new.vectors(ids).double().cpu()  # type: ignore[operator]
            weight = table.weight[ids].detach().double().cpu()
            err += float((w[ids.cpu()] * (weight - approx).pow(2).sum(1)).sum())
            total += float((w[ids.cpu()] * weight.pow(2).sum(1)).sum())
    return err / max(total, 1e-30)


Builder = Callable[[str, Table, torch.Tensor], nn.Module | str]


def rebuild_tables(model: nn.Module, config: TableShrink, ctx: Context,
                   build: Builder) -> nn.Module:
    """Swap each selected table for `build(name, table, counts)` (or leave it, when that returns
    a reason), record bytes before and after, then recover if asked."""
    tables, skipped = select_tables(model, config)
    counts = access_counts(model, tables, ctx, config) if tables else {}
    report: dict[str, dict[str, Any]] = {}
    for name, table in tables:
        with torch.no_grad():
            new = build(name, table, counts[name])
        if isinstance(new, str):
            skipped[name] = new
            continue
        before, after = stored_bytes(table), stored_bytes(new)
        if after >= before:  # explicit buckets/collisions on a small or narrow table
            skipped[name] = f"rebuilt it would store {after} bytes, not fewer than {before}"
            continue
        error = init_error(table, new, row_weights(counts[name], table.padding_idx))
        swap_module(model, name, new, new.spec())  # type: ignore[operator]
        report[name] = {"rows": table.num_embeddings, "bytes_before": before,
                        "bytes_after": after, "ratio": round(after / before, 4),
                        "init_error": round(error, 6),
                        **{k: v for k, v in new.spec().items()  # type: ignore[operator]
                           if k in ("hot", "buckets", "collisions", "op")}}
    if not report:
        raise SlimkitError(f"{config.method}: no table rebuilt ({skipped or 'none selected'})")
    ctx.info["tables"] = report
    ctx.info["skipped"] = skipped
    before = sum(r["bytes_before"] for r in report.values())
    after = sum(r["bytes_after"] for r in report.values())
    ctx.info.update({"bytes_before": before, "bytes_after": after,
                     "ratio": round(after / before, 4)})
    if config.recover_epochs > 0:
        distill(model, ctx, epochs=config.recover_epochs, lr=config.lr,
                batch_size=config.batch_size, temperature=2.0, alpha=0.5,
                desc=f"{config.method}: distill")
    return model
