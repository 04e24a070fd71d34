"""Structured pruning with physical removal: attention heads, neurons, channels and embedding
widths leave the model, so its tensors shrink and it runs faster.

Groups come from the dependency analysis (graph/deps.py); each is scored (importance.py), cut to
its share per layer or by a global ranking, optionally rounded to multiples of 8/16, and removed
(graph/shrink.py), in one shot or over several steps with recovery training in between
(iterative pruning, as in Molchanov et al. 2019 and Torch-Pruning's progressive mode).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Any, Literal

import torch
from torch import nn

from ...core import Context, Targets, check_range, register
from ...core.config import DATA, DATA_AND_TEACHER
from ...core.errors import SlimkitError
from ...graph.deps import Analysis, Group, analyse_units
from ...graph.edits import swap_module
from ...graph.shrink import AttrFix, Keep, probe_all, shrink
from ...graph.trace import eval_outputs
from ...nn.sliced_attention import SlicedMultiheadAttention
from ..recovery import Recovery, recover
from . import importance

log = logging.getLogger(__name__)
LAYER_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "Embedding", "EmbeddingBag",
               "BatchNorm1d", "BatchNorm2d")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Structured(Recovery):
    """Remove `ratio` of the channels of every prunable group (`head_ratio` of attention heads)."""

    method = "prune.structured"
    ratio: float = 0.5
    head_ratio: float | None = None
    criterion: Literal["l1", "l2", "fpgm", "taylor", "activation", "bn_scale"] = "l2"
    scope: Literal["layer", "global"] = "layer"
    max_group_ratio: float = 0.9
    round_to: int = 1
    steps: int = 1
    recover: Literal["none", "finetune", "distill"] = "none"
    epochs: float = 0.0
    calibration_batches: int = 8
    # Also cut widths a normalisation reads (a transformer's hidden width under LayerNorm or
    # RMSNorm, the plain consistent cut): runs, but not exact, so recover afterwards.
    normalised_widths: bool = False
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        # Scoring channels always reads batches; recovery by distillation needs the teacher.
        return DATA_AND_TEACHER if self.recover == "distill" and self.epochs > 0 else DATA

    def validate(self) -> None:
        check_range("ratio", self.ratio, 0.0, 1.0, hi_open=True)
        if self.head_ratio is not None:
            check_range("head_ratio", self.head_ratio, 0.0, 1.0, hi_open=True)
        check_range("max_group_ratio", self.max_group_ratio, 0.0, 1.0, lo_open=True,
                    hi_open=True)
        check_range("round_to", self.round_to, 1, 1024)
        check_range("steps", self.steps, 1, 100)
        self.check_recovery()
        check_range("calibration_batches", self.calibration_batches, 1, 1 << 20)


def _ratio(config: Structured, group: Group) -> float:
    if group.kind == "head" and config.head_ratio is not None:
        return config.head_ratio
    return config.ratio


def _signature(group: Group) -> tuple[tuple[str, int], ...]:
    return tuple((m.name, m.dim) for m in group.members)


def _n_keep(config: Structured, group: Group, target: int) -> int:
    n = max(1, min(group.size, target))
    if config.round_to > 1 and group.kind == "channel":
        # The width a kernel sees is n x repeat (channels within each of G conv groups).
        step = config.round_to // math.gcd(config.round_to, group.repeat)
        n = min(group.size, math.ceil(n / step) * step)
    return n


def choose(config: Structured, groups: list[Group], scores: dict[int, torch.Tensor],
           targets: dict[int, int]) -> Keep:
    """Indices each group keeps: its top `targets[id]` channels (layer scope), or the top of a
    ranking over all groups of a kind with scores normalised by each group's mean (global)."""
    keep: Keep = {}
    if config.scope == "global":
        for kind in ("head", "channel"):
            members = [g for g in groups if g.kind == kind]
            budget = sum(targets[g.id] for g in members)
            pool = [(float(s) / (float(scores[g.id].mean()) + 1e-12), g.id, i)
                    for g in members for i, s in enumerate(scores[g.id])]
            pool.sort(reverse=True)
            floor = {g.id: max(1, math.ceil(g.size * (1 - config.max_group_ratio)))
                     for g in members}
            counts = dict.fromkeys(floor, 0)
            chosen = {g.id: [] for g in members}
            # Every group keeps its floor of best channels, the rest compete globally.
            for _, gid, i in pool:
                if counts[gid] < floor[gid]:
                    chosen[gid].append(i)
                    counts[gid] += 1
            left = budget - sum(counts.values())
            for _, gid, i in pool:
                if left <= 0:
                    break
                if i not in chosen[gid]:
                    chosen[gid].append(i)
                    left -= 1
            for g in members:
                n = _n_keep(config, g, len(chosen[g.id]))
                top = torch.argsort(scores[g.id], descending=True, stable=True)[:n]
                keep[g.id] = torch.sort(top).values if n != len(chosen[g.id]) \
                    else torch.sort(torch.tensor(chosen[g.id])).values
        return keep
    for g in groups:
        n = _n_keep(config, g, targets[g.id])
        top = torch.argsort(scores[g.id], descending=True, stable=True)[:n]
        keep[g.id] = torch.sort(top).values
    return keep


def _share_head_targets(groups: list[Group], targets: dict[int, int], config: Structured,
                        done: float) -> None:
    """With grouped-query attention the query heads are (kv head) x (position in its group),
    two groups; the head ratio applies to their product. Prefer dropping whole kv groups."""
    by_head: dict[int, list[Group]] = {}
    for g in groups:
        if g.head_of is not None:
            by_head.setdefault(g.head_of, []).append(g)
    for factors in by_head.values():
        if len(factors) != 2:
            continue
        # The kv-head factor also owns the key and value projections: more slices.
        kv, rep = sorted(factors, key=lambda g: -len(g.members))
        total = kv.size * rep.size
        want = max(1, round(total * (1 - _ratio(config, kv) * done)))
        best = min((abs(a * b - want), b != rep.size, -b, a, b)
                    for a in range(1, kv.size + 1) for b in range(1, rep.size + 1))
        targets[kv.id], targets[rep.id] = best[3], best[4]


def _wanted(group: Group, selected: set[str], layers: set[str]) -> bool:
    """Every layer the group cuts must be targeted (norm or custom tensors just follow)."""
    paths = {m.name.rpartition(".")[0] for m in group.members}
    return any(p in selected for p in paths) and not (paths & layers) - selected


def _all_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return Targets().select(model, LAYER_TYPES, subclasses=True, tied_ok=True)


def _output_shapes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in eval_outputs(model, inputs)]


def _scores(model: nn.Module, analysis: Analysis, groups: list[Group], config: Structured,
            ctx: Context) -> tuple[dict[int, torch.Tensor], int]:
    task = ctx.require_task(config.method)
    batches = task.calibration_batches(config.calibration_batches) \
        if config.criterion in ("activation", "taylor") else []
    norms, taylor = None, None
    if config.criterion == "activation":
        norms = importance.input_norms(model, groups, (task.inputs(b) for b in batches))
    elif config.criterion == "taylor":
        taylor = {}
        was_training = model.training
        model.eval()  # no dropout noise in the gradients
        try:
            for batch in batches:
                model.zero_grad(set_to_none=True)
                task.loss(model(*task.inputs(batch)), batch).backward()
                importance.taylor_accumulate(model, analysis, groups, taylor)
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
    return importance.scores(model, analysis, groups, config.criterion, norms=norms,
                             taylor=taylor)


def _usable(model: nn.Module, analysis: Analysis, groups: list[Group],
            example: tuple[torch.Tensor, ...]) -> tuple[list[Group], list[AttrFix], list[Any]]:
    usable, fixes, skipped = [], [], []
    probed = probe_all(model, analysis, groups, example)
    for g in groups:
        result = probed[g.id]
        if isinstance(result, str):
            skipped.append({"group": g.describe(), "reason": result})
        else:
            usable.append(g)
            fixes.extend(result)
    return usable, fixes, skipped


@register(Structured)
def apply_structured(model: nn.Module, config: Structured, ctx: Context) -> nn.Module:
    task = ctx.require_task(config.method)
    example = tuple(task.example_inputs(2))
    try:
        reference = _output_shapes(model, example)
    except Exception as exc:  # the user's forward may raise anything
        raise SlimkitError(f"prune.structured: the model does not run on the task's example "
                           f"inputs ({type(exc).__name__}: {exc})") from None
    # A tied head and embedding share one tensor, cut once along the width they share.
    _swap_attention(model, config)
    selected = {name for name, _ in config.targets.select(model, LAYER_TYPES, subclasses=True,
                                                          tied_ok=True)}
    layers = {name for name, _ in _all_layers(model)}
    before = sum(p.numel() for p in model.parameters())
    original: dict[tuple[tuple[str, int], ...], int] = {}
    report: dict[str, Any] = {}
    fallbacks = 0
    for step in range(config.steps):
        cuts: list[tuple[Analysis, Keep, list[AttrFix]]] = []
        skipped: list[Any] = []
        analyses = analyse_units(model, example)
        for analysis in analyses:
            candidates = analysis.prunable_inexact if config.normalised_widths \
                else analysis.prunable
            groups = [g for g in candidates
                      if _wanted(g, selected, layers) and _ratio(config, g) > 0]
            usable, fixes, failed = _usable(model, analysis, groups, example)
            skipped.extend(failed)
            if step == 0:
                original.update({_signature(g): g.size for g in usable})
            if not usable:
                continue
            done = (step + 1) / config.steps
            targets = {g.id: round(original.get(_signature(g), g.size)
                                   * (1 - _ratio(config, g) * done)) for g in usable}
            _share_head_targets(usable, targets, config, done)
            scores, n_fallback = _scores(model, analysis, usable, config, ctx)
            fallbacks += n_fallback
            cuts.append((analysis, choose(config, usable, scores, targets), fixes))
        if step == 0:
            reports = [a.report(config.normalised_widths) for a in analyses]
            report = {**(reports[0] if len(reports) == 1 else {"units": reports}),
                      "probe_failed": skipped}
        if not cuts:
            reasons = "; ".join(f"{s['group']}: {s['reason']}" for s in skipped[:3])
            raise SlimkitError("prune.structured: no group of channels can be removed"
                               + (f" ({reasons})" if reasons else " (all are locked)"))
        _cut(model, cuts, example, reference)
        log.info("structured step %d: %d groups cut", step, sum(len(k) for _, k, _ in cuts))
        recover(model, config, ctx, desc=f"structured: recover {step + 1}/{config.steps}")
    after = sum(p.numel() for p in model.parameters())
    ctx.info.update({"params_before": before, "params_after": after,
                     "params_removed": round(1 - after / before, 4),
                     "groups_cut": len(original), "criterion_fallbacks": fallbacks,
                     "analysis": report})
    return model


def _swap_attention(model: nn.Module, config: Structured) -> None:
    """torch's nn.MultiheadAttention derives head_dim from its input width, so it cannot lose
    heads: each one targeted becomes a SlicedMultiheadAttention (same function, same parameter
    names; a logged swap that load replays) before the analysis."""
    for path, module in config.targets.select(model, ("MultiheadAttention",)):
        if type(module) is nn.MultiheadAttention and SlicedMultiheadAttention.replaces(module):
            new = SlicedMultiheadAttention.from_torch(module)
            swap_module(model, path, new, new.args())


def _cut(model: nn.Module, cuts: list[tuple[Analysis, Keep, list[AttrFix]]],
         example: tuple[torch.Tensor, ...], reference: list[tuple[int, ...]]) -> None:
    """Apply every unit's cut; if the result does not run as before, restore the model."""
    backup = copy.deepcopy(model)
    try:
        # Inside the try: a resize rule can fail on a combination of cuts no probe saw alone.
        for analysis, keep, fixes in cuts:
            shrink(model, analysis, keep, fixes)
        shapes = _output_shapes(model, example)
        error = None if shapes == reference else f"output shapes {reference} -> {shapes}"
    except Exception as exc:  # recorded: in `error`, raised below as a SlimkitError
        error = f"{type(exc).__name__}: {exc}"
    if error is not None:
        model.__dict__.update(backup.__dict__)
        raise SlimkitError(f"prune.structured: the pruned model fails ({error}); "
                           "the model was left unchanged")
