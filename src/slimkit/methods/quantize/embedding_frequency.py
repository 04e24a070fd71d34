"""Frequency-aware mixed precision per embedding row under a byte budget.

Row access counts are measured on the task's training batches; each row of a table then gets
8, 4 or 2 bits (1 on request; row-wise codes with an fp16 scale and offset, Guan et al. 2019,
"Post-Training 4-bit Quantization on Embedding Tables", arXiv:1911.02079), or shares the table's
one default row (rows never looked up in training always do; the coldest rows too when the
budget needs it). A table whose rows all get one width is stored without the id->slot map.
Precision follows access frequency as in Yang et al. 2020, "Mixed-Precision Embedding Using a
Cache" (arXiv:2010.11305: hot rows in high precision) and Li et al. 2024, "Mixed-Precision
Embeddings for Large-Scale Recommendation Models" (arXiv:2409.20305: precision per frequency
group). Widths minimise the expected lookup error sum_r count_r ||w_r - dequant(w_r)||^2 under
the budget: a multiple-choice knapsack over rows, solved by its Lagrangian (each row takes the
option minimising error + lambda * bytes, lambda bisected to the budget) and then filled with the
rows at the final lambda's ties. mixed.py's exact solver walks Pareto fronts per item and its
greedy rescans all items per move: neither scales to one item per row.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from ...core import Context, MethodConfig, Targets, Task, check_range, register
from ...core.config import DATA
from ...core.errors import ConfigError, SlimkitError
from ...eval.sensitivity import module_bytes
from ...graph import swap_module
from ...nn.frequency_embedding import FrequencyEmbedding, NarrowEmbedding, map_dtype
from ...nn.rowwise import dequantize, quantize_rows
from ..row_reads import count_row_reads

log = logging.getLogger(__name__)

ALLOWED_BITS = (8, 4, 2, 1)
EmbeddingTable = nn.Embedding | nn.EmbeddingBag
NARROW_EXTRA = 8  # NarrowEmbedding's fp32 scale and zero point


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddingFrequency(MethodConfig):
    """Per-row widths from `bits` (or the shared default row) so that all targeted tables'
    stored bytes (codes, per-row scale and offset, the id->slot map, the default row; narrow
    tables' codes and scale) fit `budget_bytes` if > 0, else `budget` times their fp32 bytes.
    Tables narrower than `min_dim` get one width for the whole table with a per-table scale.
    Counts come from `batches` training batches of `batch_size` (0 = one epoch). With
    `sensitivity="fisher"` each table's column errors are weighted by the mean squared loss
    gradient of one lookup (`fisher_batches` batches, one backward each), so tables whose
    errors reach the output differently (FM first-order weights vs embedding rows) are
    compared on one scale; "uniform" weighs every column 1 (plain expected lookup error)."""

    method = "quantize.embedding_frequency"
    bits: tuple[int, ...] = (8, 4, 2)
    budget: float = 0.125
    budget_bytes: int = 0
    min_dim: int = 4
    batches: int = 0
    batch_size: int = 1024
    sensitivity: Literal["uniform", "fisher"] = "uniform"
    fisher_batches: int = 16
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA

    def validate(self) -> None:
        if not self.bits or any(b not in ALLOWED_BITS for b in self.bits) \
                or len(set(self.bits)) != len(self.bits):
            raise ConfigError("bits", list(self.bits), "distinct values from 8, 4, 2, 1")
        check_range("budget", self.budget, 0.0, 1.0, lo_open=True)
        check_range("budget_bytes", self.budget_bytes, 0, 1 << 62)
        check_range("min_dim", self.min_dim, 1, 1 << 20)
        check_range("batches", self.batches, 0, 1 << 40)
        check_range("batch_size", self.batch_size, 1, 1 << 20)
        if self.sensitivity not in ("uniform", "fisher"):
            raise ConfigError("sensitivity", self.sensitivity, "one of 'uniform', 'fisher'")
        check_range("fisher_batches", self.fisher_batches, 1, 1 << 40)


class Table(NamedTuple):
    """One table's choices: `errors` [rows, options] and `cost` [options] in bytes, options in
    ascending bytes; wide tables' option 0 is the default row (0 bytes)."""

    name: str
    module: EmbeddingTable
    widths: tuple[int, ...]  # per option; 0 = default row
    errors: torch.Tensor
    cost: torch.Tensor
    narrow: bool


def fisher_columns(model: nn.Module, tables: list[tuple[str, EmbeddingTable]], task: Task, *,
                   batch_size: int, batches: int, seed: int) -> dict[str, torch.Tensor]:
    """Per table and column, the mean squared gradient of the per-example loss with respect to
    one looked-up row (a diagonal empirical Fisher shared by the table's rows): how much a
    row error of that column costs in loss, so that errors of FM first-order weights, which
    reach the logit directly, and of embedding rows are weighed on one scale."""
    sums = {n: torch.zeros(t.embedding_dim, dtype=torch.float64) for n, t in tables}
    reads = dict.fromkeys(sums, 0.0)
    leaves: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str, table: EmbeddingTable) -> Any:
        def swap(_module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            leaf = output.detach().requires_grad_()
            ids = args[0]
            if isinstance(table, nn.EmbeddingBag) and ids.dim() == 2:
                pad = table.padding_idx
                size = (ids != pad).sum(1) if pad is not None else torch.full(
                    ids.shape[:1], ids.shape[1])
            else:
                size = torch.ones(leaf.shape[:-1])
            leaves[name] = (leaf, size.double().reshape(-1).cpu())
            return leaf
        return swap

    handles = [t.register_forward_hook(hook(n, t)) for n, t in tables]
    was_training = model.training
    model.eval()
    try:
        for i, batch in enumerate(task.train_batches(batch_size, seed=seed + 1)):
            if i >= batches:
                break
            with torch.enable_grad():
                outputs = model(*task.inputs(batch))
                # Sum over examples (not the mean): each example's own gradient.
                loss = task.loss(outputs, batch) * len(outputs.reshape(-1))
                grads = torch.autograd.grad(loss, [leaf for leaf, _ in leaves.values()])
            for (name, (_, size)), grad in zip(leaves.items(), grads, strict=True):
                g = grad.detach().double().cpu().reshape(-1, grad.shape[-1]).pow(2)
                table = dict(tables)[name]
                if isinstance(table, nn.EmbeddingBag) and table.mode == "mean":
                    # A row error reaches a mean bag divided by the bag's size.
                    sums[name] += (g / size.clamp(min=1).unsqueeze(1)).sum(0)
                else:
                    sums[name] += (g * size.unsqueeze(1)).sum(0)
                reads[name] += float(size.sum())
            leaves.clear()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: (sums[n] / max(reads[n], 1.0)).float() for n in sums}


def _row_bytes(dim: int, bits: int) -> int:
    return -(-dim * bits // 8) + 4  # packed codes + fp16 scale and offset


def wide_table(name: str, module: EmbeddingTable, count: torch.Tensor, bits: tuple[int, ...],
               default: torch.Tensor, column: torch.Tensor) -> Table:
    """Row errors count_r * sum_j column_j (w_rj - q_rj)^2 of the default row and each width."""
    weight = module.weight.detach().float()
    dim = weight.shape[1]
    widths = (0, *sorted(bits))
    column = column.float()
    errors = [count * ((weight - default).pow(2) * column).sum(dim=1).double()]
    for b in widths[1:]:
        codes, scale, offset = quantize_rows(weight, b)
        err = ((dequantize(codes, scale, offset) - weight).pow(2) * column).sum(dim=1)
        errors.append(count * err.double())
    stacked = torch.stack([e.double() for e in errors], dim=1)
    if module.padding_idx is not None:
        # The padding row keeps its own value: unknown ids read it, and it is usually zero,
        # which no shared default row reproduces.
        stacked[module.padding_idx, 0] = math.inf
    cost = torch.tensor([0, *(_row_bytes(dim, b) for b in widths[1:])], dtype=torch.float64)
    return Table(name, module, widths, stacked, cost, narrow=False)


def narrow_table(name: str, module: EmbeddingTable, count: torch.Tensor,
                 bits: tuple[int, ...], column: torch.Tensor) -> Table:
    weight = module.weight.detach().float()
    rows, dim = weight.shape
    widths = tuple(sorted(bits))
    errors, cost = [], []
    for b in widths:
        codes, scale, zero = NarrowEmbedding.quantize(weight, b)
        err = (((codes.float() - zero) * scale - weight).pow(2) * column.float()).sum(dim=1)
        err = err.double()
        errors.append(float((count * err).sum()))
        cost.append(-(-rows * dim * b // 8) + NARROW_EXTRA)
    return Table(name, module, widths, torch.tensor([errors], dtype=torch.float64),
                 torch.tensor(cost, dtype=torch.float64), narrow=True)


def table_bytes(table: Table, pick: torch.Tensor) -> int:
    """Exact stored bytes of `table` with option `pick` per row (one pick for a narrow one)."""
    if table.narrow:
        return int(table.cost[pick[0]])
    rows, dim = table.errors.shape[0], table.module.weight.shape[1]
    kept = int((pick > 0).sum())
    if kept == rows and bool((pick == pick[0]).all()):
        return int(table.cost[pick].sum())  # one width for every id: no map, no default row
    slot_bytes = torch.empty(0, dtype=map_dtype(kept + 1)).element_size()
    return int(table.cost[pick].sum()) + rows * slot_bytes + 2 * dim


def _picks(tables: list[Table], lam: float) -> list[torch.Tensor]:
    """Each table's choice minimising error + lam * bytes: per row, or (wide tables) one width
    for all rows, which needs neither the map nor the default row."""
    out = []
    for t in tables:
        # argmin takes the first of equal values: options are in ascending bytes, ties save bytes
        value = t.errors + lam * t.cost
        pick = torch.argmin(value, dim=1)
        if not t.narrow:
            best = float(value[torch.arange(len(pick)), pick].sum()) + lam * (
                table_bytes(t, pick) - float(t.cost[pick].sum()))
            for option in range(1, len(t.widths)):
                uniform = float(value[:, option].sum())
                if uniform < best:
                    best, pick = uniform, torch.full_like(pick, option)
        out.append(pick)
    return out


def _total(tables: list[Table], picks: list[torch.Tensor]) -> int:
    return sum(table_bytes(t, p) for t, p in zip(tables, picks, strict=True))


def solve_rows(tables: list[Table], budget: int, method: str) -> list[torch.Tensor]:
    """Option per row minimising the summed error with total bytes <= budget (Lagrangian)."""
    least = _total(tables, _picks(tables, 1e200))  # every row that may: the default row
    if least > budget:
        raise SlimkitError(f"{method}: budget of {budget} bytes is below the smallest reachable "
                           f"size ({least} bytes)")
    first = _picks(tables, 0.0)
    if _total(tables, first) <= budget:
        return first
    lo, hi = -200.0, 200.0  # log10 of lambda: lo does not fit, hi fits
    for _ in range(200):
        mid = (lo + hi) / 2
        if _total(tables, _picks(tables, 10.0 ** mid)) <= budget:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-9:
            break
    picks = _picks(tables, 10.0 ** hi)
    richer = _picks(tables, 10.0 ** lo)
    # Fill what is left with the rows that change between the two lambdas, best gain per byte.
    moves = []
    for i, (t, p, q) in enumerate(zip(tables, picks, richer, strict=True)):
        for r in (p != q).nonzero().flatten().tolist():
            gain = float(t.errors[r, p[r]] - t.errors[r, q[r]])
            extra = float(t.cost[q[r]] - t.cost[p[r]])
            moves.append((gain / max(extra, 1e-9), i, r, int(q[r])))
    moves.sort(reverse=True)
    total = _total(tables, picks)
    # Each table's bytes from its option histogram and cost sum (table_bytes' terms), updated
    # per move: recomputing them from the picks made the fill quadratic in rows.
    hists = [torch.bincount(p, minlength=len(t.cost)) for t, p in zip(tables, picks, strict=True)]
    sums = [int(t.cost[p].sum()) for t, p in zip(tables, picks, strict=True)]
    for _, i, r, option in moves:
        t, old = tables[i], int(picks[i][r])
        hist = hists[i].clone()
        hist[old] -= 1
        hist[option] += 1
        cost = sums[i] - int(t.cost[old]) + int(t.cost[option])
        grown = total - _bytes_of(t, hists[i], sums[i]) + _bytes_of(t, hist, cost)
        if grown <= budget:
            picks[i][r], hists[i], sums[i], total = option, hist, cost, grown
    return picks


def _bytes_of(table: Table, hist: torch.Tensor, cost: int) -> int:
    """table_bytes from the count of rows at each option and their summed cost."""
    if table.narrow:
        return cost
    rows, dim = table.errors.shape[0], table.module.weight.shape[1]
    kept = rows - int(hist[0])
    if kept == rows and int((hist > 0).sum()) == 1:
        return cost  # one width for every id: no map, no default row
    slot_bytes = torch.empty(0, dtype=map_dtype(kept + 1)).element_size()
    return cost + rows * slot_bytes + 2 * dim


def default_row(weight: torch.Tensor, count: torch.Tensor, chosen: torch.Tensor,
                padding_idx: int | None) -> torch.Tensor:
    """The shared row: the count-weighted mean of the seen rows it stands for (the vector
    minimising their expected error), else the plain mean of the unseen ones."""
    weight = weight.detach().float()
    mask = chosen.clone()
    if padding_idx is not None:
        mask[padding_idx] = False
    seen = mask & (count > 0)
    if bool(seen.any()):
        w = count[seen].float()
        return (weight[seen] * w.unsqueeze(1)).sum(0) / w.sum()
    if bool(mask.any()):
        return weight[mask].mean(0)
    return torch.zeros(weight.shape[1])


@register(EmbeddingFrequency)
def apply_embedding_frequency(model: nn.Module, config: EmbeddingFrequency,
                              ctx: Context) -> nn.Module:
    task = ctx.require_task(config.method)
    chosen: list[tuple[str, EmbeddingTable]] = []
    for name, table in config.targets.select(model, ("Embedding", "EmbeddingBag")):
        if not isinstance(table, (nn.Embedding, nn.EmbeddingBag)):
            raise ConfigError("targets", name, "an nn.Embedding or nn.EmbeddingBag")
        chosen.append((name, table))
    if not chosen:
        raise SlimkitError(f"{config.method}: targets match no Embedding/EmbeddingBag module")
    for name, table in chosen:
        if isinstance(table, nn.EmbeddingBag) and table.mode not in ("sum", "mean"):
            raise ConfigError("targets", name, f"an EmbeddingBag in mode sum or mean, not "
                              f"{table.mode!r}")
        if table.max_norm is not None:  # torch renormalises rows on lookup; codes cannot
            raise ConfigError("targets", name, "a table without max_norm")
    counts = count_row_reads(model, chosen, task, batch_size=config.batch_size,
                             batches=config.batches, seed=ctx.seed)
    bits = tuple(config.bits)
    columns = {n: torch.ones(t.embedding_dim) for n, t in chosen}
    if config.sensitivity == "fisher":
        columns = fisher_columns(model, chosen, task, batch_size=config.batch_size,
                                 batches=config.fisher_batches, seed=ctx.seed)
    # Two rounds: the default row is first the mean of the rows nobody reads (or of the colder
    # half), then the count-weighted mean of the rows the first solution sent to it.
    guess = {n: _cold(c) for n, c in counts.items()}
    before = sum(module_bytes(t) for _, t in chosen)
    budget = config.budget_bytes or int(config.budget * before)
    for _ in range(2):
        defaults = {n: default_row(t.weight, counts[n], guess[n], t.padding_idx)
                    for n, t in chosen if t.embedding_dim >= config.min_dim}
        tables = [wide_table(n, t, counts[n], bits, defaults[n], columns[n]) if n in defaults
                  else narrow_table(n, t, counts[n], bits, columns[n]) for n, t in chosen]
        picks = solve_rows(tables, budget, config.method)
        guess = {t.name: p == 0 for t, p in zip(tables, picks, strict=True) if not t.narrow}
    info: dict[str, Any] = {}
    for t, p in zip(tables, picks, strict=True):
        info[t.name] = _swap(model, t, p, defaults.get(t.name), counts[t.name])
    after = sum(v["bytes"] for v in info.values())
    ctx.info.update({
        "tables": info, "budget_bytes": budget, "bytes_before": before, "bytes_after": after,
        "ratio": round(before / max(after, 1), 3),
        "expected_error": sum(float(t.errors[torch.arange(len(p)), p].sum())
                              for t, p in zip(tables, picks, strict=True)),
    })
    log.info("%s: %d -> %d bytes (budget %d)", config.method, before, after, budget)
    return model


def _cold(count: torch.Tensor) -> torch.Tensor:
    unseen = count == 0
    if bool(unseen.any()):
        return unseen
    return count <= count.median()


def _swap(model: nn.Module, table: Table, pick: torch.Tensor, default: torch.Tensor | None,
          count: torch.Tensor) -> dict[str, Any]:
    module = table.module
    mode = module.mode if isinstance(module, nn.EmbeddingBag) else "none"
    last = bool(getattr(module, "include_last_offset", False))
    new: FrequencyEmbedding | NarrowEmbedding
    if table.narrow:
        new = NarrowEmbedding.build(module.weight, table.widths[int(pick[0])], mode=mode,
                                    padding_idx=module.padding_idx, include_last_offset=last)
        summary: dict[str, Any] = {"bits": new.bits}
    else:
        widths = torch.tensor(table.widths)[pick]
        new = FrequencyEmbedding.build(module.weight, widths,
                                       torch.zeros(0) if default is None else default, mode=mode,
                                       padding_idx=module.padding_idx, include_last_offset=last)
        summary = {"rows": {str(b): int((widths == b).sum()) for b in table.widths},
                   "unseen_rows": int((count == 0).sum()),
                   "map_dtype": str(new.slot.dtype).removeprefix("torch.") if new.mapped
                   else None}
    summary.update(bytes=module_bytes(new), fp32_bytes=module_bytes(module))
    if summary["bytes"] != table_bytes(table, pick):
        raise SlimkitError(f"{table.name}: stored {summary['bytes']} bytes, budgeted "
                           f"{table_bytes(table, pick)}")  # the accounting must stay exact
    swap_module(model, table.name, new, new.spec())
    return summary
