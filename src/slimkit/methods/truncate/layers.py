"""Remove whole layers or blocks (depth truncation), chosen by index or by Block Influence, then
recover with fine-tuning or distillation from the teacher."""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from ...core import Context, check_range, register
from ...core.config import DATA, DATA_AND_TEACHER, NOTHING
from ...core.errors import ConfigError, SlimkitError
from ...graph import drop_blocks, get_submodule
from ..recovery import Recovery, recover
from .importance import block_influence


@dataclasses.dataclass(frozen=True, kw_only=True)
class Layers(Recovery):
    """Drop blocks of the Sequential/ModuleList at `container`: `indices`, or the `drop` blocks
    with the lowest Block Influence among those whose input and output shapes match."""

    method = "truncate.layers"
    container: str
    indices: tuple[int, ...] = ()
    drop: int = 0
    calibration_batches: int = 8

    def requires(self) -> frozenset[str]:
        if self.recover == "distill":
            return DATA_AND_TEACHER
        # Choosing which blocks to drop (drop=N) scores them on batches.
        return DATA if self.drop > 0 or self.recover != "none" else NOTHING

    def validate(self) -> None:
        if bool(self.indices) == (self.drop > 0):
            raise ConfigError("drop", self.drop, "> 0 or a list of indices, not both or neither")
        check_range("drop", self.drop, 0, 1 << 20)
        for i in self.indices:
            check_range("indices", i, 0, 1 << 20)
        self.check_recovery()
        check_range("calibration_batches", self.calibration_batches, 1, 1 << 20)


def _container(model: nn.Module, path: str) -> nn.Module:
    try:
        blocks = get_submodule(model, path)
    except AttributeError:
        raise ConfigError("container", path, "the name of a submodule of the model") from None
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        raise ConfigError("container", path, "a Sequential or ModuleList")
    return blocks


@register(Layers)
def apply_layers(model: nn.Module, config: Layers, ctx: Context) -> nn.Module:
    blocks = _container(model, config.container)
    n = len(blocks)
    task = ctx.task
    if task is not None:
        # Given indices need only the shape check: one batch, not a ranking over many.
        n_batches = config.calibration_batches if config.drop > 0 else 1
        batches = [task.inputs(b) for b in task.calibration_batches(n_batches)]
        scores, removable = block_influence(model, blocks, batches)
        # None, not inf, for blocks never scored: metrics.json must stay valid JSON.
        ctx.info["block_influence"] = [round(s, 6) if math.isfinite(s) else None for s in scores]
    elif config.drop > 0:
        raise SlimkitError("truncate.layers: choosing blocks by importance needs a task")
    else:
        removable = [True] * n
    if config.indices:
        for i in config.indices:
            if not 0 <= i < n:
                raise ConfigError("indices", i, f"an index in [0, {n})")
            if not removable[i]:
                raise ConfigError("indices", i, "a block whose input and output shapes match")
        chosen = sorted(set(config.indices))
    else:
        candidates = sorted((s, i) for i, s in enumerate(scores) if removable[i])
        if len(candidates) < config.drop:
            raise ConfigError("drop", config.drop,
                              f"at most {len(candidates)} (removable blocks in {config.container})")
        chosen = sorted(i for _, i in candidates[:config.drop])
    drop_blocks(model, config.container, chosen)
    ctx.info["dropped"] = chosen
    recover(model, config, ctx, desc=f"truncate: {config.recover}")
    return model
