"""Mixed precision under a size budget: measure each layer's sensitivity to each candidate
precision, then pick one precision per layer minimising the summed predicted quality drop subject
to the bytes of the chosen layers fitting the budget (a multiple-choice knapsack, as in HAQ,
Wang et al. 2019, and HAWQ-V3, Yao et al. 2021, with measured drops as the cost)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

from torch import nn

from ...core import Context, MethodConfig, Targets, Task, check_range, lookup, register
from ...core.config import DATA
from ...core.errors import ConfigError, SlimkitError
from ...eval.sensitivity import for_layer, layer_sensitivity, module_bytes
from ...graph import get_submodule
from .binary import BinaryWeights
from .dynamic_int8 import DynamicInt8

log = logging.getLogger(__name__)

KEEP = "fp32"
ALIASES: dict[str, MethodConfig] = {
    "int8": DynamicInt8(),
    "ternary": BinaryWeights(kind="ternary"),
    "binary": BinaryWeights(kind="xnor"),
    "binaryconnect": BinaryWeights(kind="binaryconnect"),
}


class Option(NamedTuple):
    name: str
    bytes: int
    drop: float


def solve_exact(options: Mapping[str, Sequence[Option]], budget: int) -> dict[str, int] | None:
    """Exact multiple-choice knapsack by dynamic programming over Pareto fronts.

    A state is (bytes, cost, choices); after each layer only states not dominated in both bytes
    and cost survive, so the front stays small. Negative drops count as 0 (a measured gain is
    noise, not a reason to quantize). Ties go to fewer bytes. None if nothing fits the budget.
    """
    front: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for opts in options.values():
        grown = [(b + o.bytes, c + max(o.drop, 0.0), ch + (i,))
                 for b, c, ch in front for i, o in enumerate(opts) if b + o.bytes <= budget]
        grown.sort(key=lambda s: (s[0], s[1]))
        front = []
        for state in grown:
            if not front or state[1] < front[-1][1]:
                front.append(state)
        if not front:
            return None
    best = min(front, key=lambda s: (s[1], s[0]))
    return dict(zip(options, best[2], strict=True))


def solve_greedy(options: Mapping[str, Sequence[Option]], budget: int) -> dict[str, int] | None:
    """Start every layer at its largest option; while over budget, take the move with the least
    added drop per byte saved. Near-optimal, linear in layers x options per move."""
    choice = {name: max(range(len(o)), key=lambda i, o=o: o[i].bytes)
              for name, o in options.items()}
    total = sum(options[n][i].bytes for n, i in choice.items())
    while total > budget:
        best = None
        for name, opts in options.items():
            cur = opts[choice[name]]
            for i, o in enumerate(opts):
                saved = cur.bytes - o.bytes
                if saved <= 0:
                    continue
                rate = (max(o.drop, 0.0) - max(cur.drop, 0.0)) / saved
                if best is None or rate < best[0]:
                    best = (rate, name, i, saved)
        if best is None:
            return None
        _, name, i, saved = best
        choice[name] = i
        total -= saved
    return choice


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixedPrecision(MethodConfig):
    """Per-layer precision from `candidates` under a bytes budget for the targeted layers:
    `budget_bytes` if > 0, else `budget` times their current bytes.

    Candidates are "fp32" (keep), the aliases int8 (quantize.dynamic_int8), ternary / binary /
    binaryconnect (quantize.binary), or any registered method name whose config has `targets`
    (used with its defaults). Drops are measured one layer at a time on `split`.
    """

    method = "quantize.mixed"
    candidates: tuple[str, ...] = (KEEP, "int8", "ternary", "binary")
    budget: float = 0.25
    budget_bytes: int = 0
    solver: Literal["exact", "greedy"] = "exact"
    split: str = "valid"
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA

    def validate(self) -> None:
        check_range("budget", self.budget, 0.0, 1.0, lo_open=True)
        check_range("budget_bytes", self.budget_bytes, 0, 1 << 62)
        if self.solver not in ("exact", "greedy"):
            raise ConfigError("solver", self.solver, "one of 'exact', 'greedy'")
        if not self.candidates or len(set(self.candidates)) != len(self.candidates):
            raise ConfigError("candidates", list(self.candidates), "a non-empty list of names "
                              "without repeats")
        for i, name in enumerate(self.candidates):
            if name != KEEP and name not in ALIASES:
                config_cls, _ = lookup(name, f"candidates[{i}]")
                if "targets" not in {f.name for f in dataclasses.fields(config_cls)}:
                    raise ConfigError(f"candidates[{i}]", name, "a method with a targets field")


def candidate_config(name: str) -> MethodConfig:
    return ALIASES[name] if name in ALIASES else lookup(name)[0]()


def measure_options(model: nn.Module, task: Task, layers: list[str],
                    configs: Mapping[str, MethodConfig | None], *, split: str, seed: int,
                    baseline: float) -> dict[str, list[Option]]:
    """Options per layer: (candidate, bytes after, measured drop) for each named config, where
    a None config means keep the layer as it is (current bytes, drop 0)."""
    options: dict[str, list[Option]] = {n: [] for n in layers}
    for cand, config in configs.items():
        if config is None:
            for n in layers:
                options[n].append(Option(cand, module_bytes(get_submodule(model, n)), 0.0))
            continue
        for row in layer_sensitivity(model, task, for_layer(config), layers=layers, split=split,
                                     seed=seed, baseline=baseline):
            options[row["layer"]].append(Option(cand, row["bytes_after"], row["drop"]))
    # A layer no candidate can change is not a choice at all.
    changed = {c for c, cfg in configs.items() if cfg is not None}
    return {n: o for n, o in options.items() if any(x.name in changed for x in o)}


def apply_choices(model: nn.Module, ctx: Context, choices: Mapping[str, str],
                  configs: Mapping[str, MethodConfig | None]) -> None:
    """Apply each layer's chosen config to that layer alone (None = leave it)."""
    for name, cand in choices.items():
        chosen = configs[cand]
        if chosen is None:
            continue
        config = for_layer(chosen)(name)
        _, apply = lookup(config.method)
        apply(model, config, dataclasses.replace(ctx, info={}))


def solve(options: Mapping[str, Sequence[Option]], budget: int, solver: str,
          method: str) -> dict[str, str]:
    pick = (solve_exact if solver == "exact" else solve_greedy)(options, budget)
    if pick is None:
        least = sum(min(o.bytes for o in opts) for opts in options.values())
        raise SlimkitError(f"{method}: budget of {budget} bytes is below the smallest "
                           f"reachable size ({least} bytes)")
    return {n: options[n][i].name for n, i in pick.items()}


@register(MixedPrecision)
def apply_mixed(model: nn.Module, config: MixedPrecision, ctx: Context) -> nn.Module:
    task = ctx.require_task(config.method)
    layers = [n for n, _ in config.targets.select(model, ("Linear",))]
    if not layers:
        raise SlimkitError(f"{config.method}: targets match no Linear module")
    configs = {c: None if c == KEEP else candidate_config(c) for c in config.candidates}
    baseline = task.evaluate(model, config.split)[task.primary_metric]
    options = measure_options(model, task, layers, configs, split=config.split, seed=ctx.seed,
                              baseline=baseline)
    if not options:
        raise SlimkitError(f"{config.method}: no candidate changes any targeted layer")
    before = sum(module_bytes(get_submodule(model, n)) for n in options)
    budget = config.budget_bytes or int(config.budget * before)
    choices = solve(options, budget, config.solver, config.method)
    apply_choices(model, ctx, choices, configs)
    after = sum(module_bytes(get_submodule(model, n)) for n in options)
    value = task.evaluate(model, config.split)[task.primary_metric]
    ctx.info.update({
        "choices": choices,
        "options": {n: {o.name: {"bytes": o.bytes, "drop": round(o.drop, 6)} for o in opts}
                    for n, opts in options.items()},
        "budget_bytes": budget, "bytes_before": before, "bytes_after": after,
        "predicted_drop": round(sum(max(o.drop, 0.0) for n, opts in options.items()
                                    for o in opts if o.name == choices[n]), 6),
        "measured_drop": round(baseline - value if task.higher_is_better else value - baseline,
                               6),
        "kept_fp32": sorted(set(layers) - {n for n, c in choices.items() if c != KEEP}),
    })
    log.info("%s: %s", config.method, choices)
    return model
