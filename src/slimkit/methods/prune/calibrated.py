"""What the calibrated pruning methods share (prune.wanda, prune.sparsegpt): the sparsity
patterns (exact counts per output row, or N:M along the inputs), option checks, and the driver
that prunes Linear layers in execution order on the task's calibration batches
(layerwise.calibrate_in_order, so each layer sees the pruned layers upstream).

Pruned weights are stored as prune.magnitude stores them: zeros in the dense weight and the
layer flagged (graph.mark_masked), so the zeros survive save/load and any later training."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...core import Context, MethodConfig, check_range
from ...core.errors import ConfigError, SlimkitError
from ...core.task import batches_used
from ...graph import mark_masked
from ..layerwise import calibrate_in_order
from .masks import sparsity_of

log = logging.getLogger(__name__)

# (weight [out, in] float32, the layer's statistics) -> (pruned weight, report numbers)
PruneFn = Callable[[torch.Tensor, Any], tuple[torch.Tensor, dict[str, float]]]


def check_options(config: Any) -> None:
    """The range checks every calibrated pruning config shares (sparsity, n:m, calibration)."""
    check_range("sparsity", config.sparsity, 0.0, 1.0, hi_open=True)
    check_range("m", config.m, 0, 256)
    check_range("n", config.n, 0, 256)
    if (config.n == 0) != (config.m == 0):
        raise ConfigError("n", config.n, "set with m (n:m, e.g. 2:4), or both 0 (unstructured)")
    if config.m and config.n >= config.m:
        raise ConfigError("n", config.n, f"fewer than m ({config.m}) kept weights per group")
    check_range("calibration_batches", config.calibration_batches, 1, 1 << 16)


def pattern(config: Any) -> str:
    return f"{config.n}:{config.m}" if config.n else "unstructured"


def target_sparsity(config: Any) -> float:
    """With n:m the pattern fixes the sparsity (1 - n/m) and `sparsity` is not used."""
    return 1.0 - config.n / config.m if config.n else config.sparsity


def keep_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool keep-mask zeroing exactly floor(sparsity * in) lowest scores in every row (ties by
    position, as masks.global_masks: a threshold would over-prune on ties)."""
    k = int(sparsity * scores.shape[1])
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], False)
    return keep


def keep_n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool keep-mask keeping the n highest scores in every m consecutive inputs of a row
    (2:4: two of every four, the pattern sparse tensor cores run); width a multiple of m."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(2, torch.sort(groups, dim=2, stable=True).indices[..., :m - n], False)
    return keep.reshape(rows, cols)


def keep_mask(scores: torch.Tensor, config: Any) -> torch.Tensor:
    if config.n:
        return keep_n_of_m(scores, config.n, config.m)
    return keep_per_row(scores, config.sparsity)


def prune_calibrated(model: nn.Module, config: MethodConfig, ctx: Context, *,
                     make: Callable[[int], Any], prune: PruneFn) -> nn.Module:
    """Prune the targeted Linear layers of `model` in place, each by `prune` on the statistics
    `make(in_features)` gathered from its inputs; records sparsity, reports and calibration use
    in ctx.info. A layer that never runs on the calibration data is pruned by magnitude in the
    same pattern (and listed as `unseen`)."""
    cfg: Any = config
    chosen = [(n, m) for n, m in cfg.targets.select(model, ("Linear",))
              if isinstance(m, nn.Linear)]
    if not chosen:
        raise SlimkitError(f"{config.method}: targets match no Linear module")
    if cfg.n:
        odd = [n for n, m in chosen if m.in_features % cfg.m]
        if odd:
            raise SlimkitError(f"{config.method}: {pattern(cfg)} needs input widths that are "
                               f"multiples of {cfg.m}; not so for {', '.join(odd)}")
    task = ctx.require_task(config.method)
    reports: dict[str, dict[str, float]] = {}
    was_training = model.training
    model.eval()  # calibration must not see dropout
    try:
        batches = task.calibration_batches(cfg.calibration_batches)
        ctx.info["calibration"] = batches_used(task, batches, cfg.calibration_batches)
        progress = iter(ctx.progress(range(len(chosen)), total=len(chosen), desc=config.method))

        def handle(name: str, linear: nn.Module, stats: Any) -> None:
            new, report = prune(linear.weight.detach().float(), stats)
            with torch.no_grad():
                linear.weight.copy_(new.to(linear.weight.dtype))
            reports[name] = {k: round(float(v), 6) for k, v in report.items()}
            next(progress, None)

        unseen = calibrate_in_order(model, dict(chosen),
                                    [lambda b=b: model(*task.inputs(b)) for b in batches],
                                    make=make, handle=handle, sequential=cfg.sequential,
                                    info=ctx.info)
        for name in unseen:
            log.warning("%s: %s never ran on calibration data; pruning it by magnitude",
                        config.method, name)
            weight = model.get_submodule(name).weight
            with torch.no_grad():
                weight.mul_(keep_mask(weight.detach().abs().float(), cfg))
    finally:
        model.train(was_training)
    mark_masked(model, [name for name, _ in chosen])
    weights = [m.weight for _, m in chosen]
    ctx.info["pattern"] = pattern(cfg)
    ctx.info["target"] = round(target_sparsity(cfg), 6)
    ctx.info["sparsity"] = round(sparsity_of(weights), 6)
    ctx.info["layers"] = {name: {"sparsity": round(sparsity_of([m.weight]), 4),
                                 **reports.get(name, {})} for name, m in chosen}
    ctx.info["unseen"] = unseen
    return model
