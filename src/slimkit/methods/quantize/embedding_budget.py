"""Bit width per embedding table under a byte budget: each table's quality drop at INT8/INT4/INT2
(row-wise, Guan et al. 2019) is measured alone, then the widths minimising the summed drop whose
bytes fit the budget are chosen exactly (a multiple-choice knapsack, as in mixed.py)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

from torch import nn

from ...core import Context, MethodConfig, Targets, check_range, register
from ...core.config import DATA
from ...core.errors import ConfigError, SlimkitError
from ...eval.sensitivity import module_bytes
from ...graph import get_submodule
from .embedding import EmbeddingQuant
from .mixed import apply_choices, measure_options, solve

log = logging.getLogger(__name__)

WIDTHS = (32, 8, 4, 2)  # 32 = keep the table in fp32


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddingBudget(MethodConfig):
    """Choose per-table bits from `bits` so the quantizable tables' bytes (packed codes plus the
    fp16 scale and offset of each row) fit `budget_bytes` if > 0, else `budget` times their fp32
    bytes. Put 32 in `bits` to allow keeping a table in fp32. Tables narrower than `min_dim` stay
    fp32 and outside the budget, as in quantize.embedding."""

    method = "quantize.embedding_budget"
    bits: tuple[int, ...] = (8, 4, 2)
    budget: float = 0.2
    budget_bytes: int = 0
    min_dim: int = 4
    solver: Literal["exact", "greedy"] = "exact"
    split: str = "valid"
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA

    def validate(self) -> None:
        if not self.bits or any(b not in WIDTHS for b in self.bits) \
                or len(set(self.bits)) != len(self.bits):
            raise ConfigError("bits", list(self.bits), "distinct values from 32, 8, 4, 2")
        check_range("budget", self.budget, 0.0, 1.0, lo_open=True)
        check_range("budget_bytes", self.budget_bytes, 0, 1 << 62)
        check_range("min_dim", self.min_dim, 1, 1 << 20)
        if self.solver not in ("exact", "greedy"):
            raise ConfigError("solver", self.solver, "one of 'exact', 'greedy'")


def _candidates(config: EmbeddingBudget) -> dict[str, MethodConfig | None]:
    """Candidate name -> config restricted later to one table; None keeps the table fp32."""
    out: dict[str, MethodConfig | None] = {}
    for b in config.bits:
        out["fp32" if b == 32 else f"int{b}"] = None if b == 32 else \
            EmbeddingQuant(bits=b, min_dim=config.min_dim)  # type: ignore[arg-type]
    return out


@register(EmbeddingBudget)
def apply_embedding_budget(model: nn.Module, config: EmbeddingBudget,
                           ctx: Context) -> nn.Module:
    task = ctx.require_task(config.method)
    chosen = config.targets.select(model, ("Embedding", "EmbeddingBag"))
    if not chosen:
        raise SlimkitError(f"{config.method}: targets match no Embedding/EmbeddingBag module")
    tables = [n for n, t in chosen if t.embedding_dim >= config.min_dim]
    narrow = [n for n, t in chosen if t.embedding_dim < config.min_dim]
    if not tables:
        raise SlimkitError(f"{config.method}: no table is at least min_dim={config.min_dim} wide")
    configs = _candidates(config)
    baseline = task.evaluate(model, config.split)[task.primary_metric]
    options = measure_options(model, task, tables, configs, split=config.split, seed=ctx.seed,
                              baseline=baseline)
    fp32 = {n: module_bytes(get_submodule(model, n)) for n in tables}
    before = sum(fp32.values())
    budget = config.budget_bytes or int(config.budget * before)
    choices = solve(options, budget, config.solver, config.method)
    apply_choices(model, ctx, choices, configs)
    sizes = {n: module_bytes(get_submodule(model, n)) for n in tables}
    value = task.evaluate(model, config.split)[task.primary_metric]
    drops = {n: {o.name: round(o.drop, 6) for o in opts} for n, opts in options.items()}
    ctx.info.update({
        "tables": {n: {"bits": 32 if c == "fp32" else int(c[3:]), "bytes": sizes[n],
                       "fp32_bytes": fp32[n], "drop": drops[n][c]} for n, c in choices.items()},
        "drops": drops,
        "budget_bytes": budget, "bytes_before": before, "bytes_after": sum(sizes.values()),
        "measured_drop": round(baseline - value if task.higher_is_better else value - baseline,
                               6),
        "skipped_narrow": narrow,
    })
    log.info("%s: %s", config.method, choices)
    return model
