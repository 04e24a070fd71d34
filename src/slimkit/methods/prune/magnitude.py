"""Unstructured magnitude pruning (Han et al. 2015), one-shot or gradual with the cubic schedule
of Zhu and Gupta (2017). While this step trains, bool `weight_mask` buffers hold the masks; when
it ends they are dropped and the layers flagged, so later training re-derives them from the zeros
(`slimkit.graph.training_masks`) and an inference model carries no mask."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from ...core import Context, MethodConfig, Targets, check_range, check_training, register
from ...core.config import DATA, NOTHING
from ...core.errors import ConfigError, SlimkitError
from ...graph import MASK, mark_masked
from ...train import fit
from .masks import cubic_sparsity, global_masks, sparsity_of

DEFAULT_TYPES = ("Linear", "Conv1d", "Conv2d")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Magnitude(MethodConfig):
    """Zero the smallest-magnitude weights. `gradual` ramps sparsity while fine-tuning `epochs`."""

    method = "prune.magnitude"
    sparsity: float = 0.5
    scope: Literal["layer", "global"] = "layer"
    schedule: Literal["oneshot", "gradual"] = "oneshot"
    initial_sparsity: float = 0.0
    epochs: float = 0.0
    lr: float = 1e-3
    batch_size: int = 512
    update_every: int = 20
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA if self.epochs > 0 else NOTHING

    def validate(self) -> None:
        check_range("sparsity", self.sparsity, 0.0, 1.0, hi_open=True)
        check_range("initial_sparsity", self.initial_sparsity, 0.0, 1.0, hi_open=True)
        if self.initial_sparsity > self.sparsity:
            raise ConfigError("initial_sparsity", self.initial_sparsity,
                              f"a value <= sparsity ({self.sparsity})")
        check_training(self, allow_zero_epochs=True)
        check_range("update_every", self.update_every, 1, 1 << 30)
        if self.schedule == "gradual" and self.epochs <= 0:
            raise ConfigError("epochs", self.epochs, "> 0 with schedule 'gradual'")


def _set_masks(layers: list[nn.Module], sparsity: float, scope: str) -> None:
    weights = [m.weight for m in layers]
    if scope == "global":
        masks = global_masks(weights, sparsity)
    else:
        masks = [global_masks([w], sparsity)[0] for w in weights]
    with torch.no_grad():
        for module, mask in zip(layers, masks, strict=True):
            module.register_buffer(MASK, mask, persistent=False)
            module.weight.mul_(mask)


def _prune(model: nn.Module, layers: list[nn.Module], config: Magnitude, ctx: Context) -> None:
    if config.schedule == "oneshot":
        _set_masks(layers, config.sparsity, config.scope)
        if config.epochs > 0:
            fit(model, ctx.require_task(config.method), ctx, epochs=config.epochs, lr=config.lr,
                batch_size=config.batch_size, desc="prune: fine-tune")
        return
    task = ctx.require_task(config.method)
    total = max(1, int(config.epochs * task.num_train_batches(config.batch_size)))
    # Reach the final sparsity at 3/4 of training and recover at it for the last quarter.
    ramp = max(1, int(0.75 * total))
    _set_masks(layers, config.initial_sparsity, config.scope)

    def on_step(step: int, _total: int) -> None:
        if step % config.update_every == 0 or step == ramp:
            target = cubic_sparsity(step, ramp, config.sparsity, config.initial_sparsity)
            _set_masks(layers, target, config.scope)

    fit(model, task, ctx, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
        on_step=on_step, desc="prune: gradual")
    _set_masks(layers, config.sparsity, config.scope)


@register(Magnitude)
def apply_magnitude(model: nn.Module, config: Magnitude, ctx: Context) -> nn.Module:
    chosen = config.targets.select(model, DEFAULT_TYPES)
    if not chosen:
        raise SlimkitError("prune.magnitude: targets match no Linear/Conv module")
    layers = [m for _, m in chosen]
    try:
        _prune(model, layers, config, ctx)
    finally:
        # The masks served this step's training only; later training re-derives them.
        for module in layers:
            module._buffers.pop(MASK, None)
    mark_masked(model, [name for name, _ in chosen])
    ctx.info["sparsity"] = round(sparsity_of([m.weight for m in layers]), 6)
    ctx.info["layers"] = {name: round(sparsity_of([m.weight]), 4) for name, m in chosen}
    return model
