"""Binary and ternary Linear weights: BinaryConnect (Courbariaux et al. 2015), XNOR-Net weight
scaling (Rastegari et al. 2016) and Ternary Weight Networks (Li et al. 2016), with optional
recovery training through a straight-through estimator before conversion to packed layers."""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

from torch import nn

from ...core import Context, MethodConfig, Targets, check_range, check_training, register
from ...core.config import DATA, NOTHING
from ...core.errors import SlimkitError
from ...graph import set_submodule, swap_module
from ...nn.binary_linear import BinaryLinear, FakeSignLinear, TernaryLinear
from ...nn.runtime_memory import CACHED, PACKED
from ...train import fit

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BinaryWeights(MethodConfig):
    """Replace Linear layers by BinaryLinear (1 bit a weight) or TernaryLinear (2 bits).

    `kind`: "binaryconnect" = sign(W) with no scale (meant to be trained: set `epochs`),
    "xnor" = mean|W| * sign(W) per output channel, "ternary" = TWN with threshold
    `threshold` * mean|W| per channel. With `epochs` > 0 the model trains first with quantized
    forwards and straight-through gradients on latent fp32 weights clipped to [-clip, clip].
    Layers with fewer than `min_features` inputs or outputs (a 1-output head) stay fp32: they hold
    few bytes and all of the model's output passes through them. `cache` keeps each layer's
    de-quantized fp32 weight in memory (speed over memory; off: packed codes only).
    """

    method = "quantize.binary"
    kind: Literal["binaryconnect", "xnor", "ternary"] = "xnor"
    threshold: float = 0.7
    clip: float = 1.0
    epochs: float = 0.0
    lr: float = 1e-3
    batch_size: int = 512
    min_features: int = 16
    cache: bool = False
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA if self.epochs > 0 else NOTHING

    def validate(self) -> None:
        check_range("threshold", self.threshold, 0.0, 10.0, lo_open=True)
        check_range("clip", self.clip, 0.0, 1e6, lo_open=True)
        check_training(self, allow_zero_epochs=True)
        check_range("min_features", self.min_features, 1, 1 << 30)


def _recover(model: nn.Module, chosen: list[tuple[str, nn.Linear]], config: BinaryWeights,
             ctx: Context) -> None:
    """Train with fake-quantized forwards, then put the (updated) Linear modules back."""
    task = ctx.require_task(config.method)
    wrappers = []
    try:
        for name, linear in chosen:
            wrapper = FakeSignLinear(linear, config.kind, config.threshold, config.clip)
            wrapper.clip_latent()
            set_submodule(model, name, wrapper)
            wrappers.append((name, wrapper))

        def on_step(_step: int, _total: int) -> None:
            for _, w in wrappers:
                w.clip_latent()

        losses = fit(model, task, ctx, epochs=config.epochs, lr=config.lr,
                     batch_size=config.batch_size, on_step=on_step, desc="binary: STE train")
        ctx.info["final_loss"] = round(sum(losses[-20:]) / max(1, len(losses[-20:])), 6)
    finally:
        for name, wrapper in wrappers:
            set_submodule(model, name, wrapper.linear)


@register(BinaryWeights)
def apply_binary(model: nn.Module, config: BinaryWeights, ctx: Context) -> nn.Module:
    selected = config.targets.select(model, ("Linear",))
    if not selected:
        raise SlimkitError(f"{config.method}: targets match no Linear module")
    chosen, skipped = [], []
    for name, linear in selected:
        if min(linear.in_features, linear.out_features) < config.min_features:
            skipped.append(name)
        else:
            chosen.append((name, linear))
    if chosen and config.epochs > 0:
        _recover(model, chosen, config, ctx)
    cls = TernaryLinear if config.kind == "ternary" else BinaryLinear
    for name, linear in chosen:
        new = cls.from_linear(linear, config.kind, config.threshold, config.cache)
        swap_module(model, name, new, new.spec())
    if skipped:
        log.info("%s: kept fp32 (fewer than %d features): %s", config.method,
                 config.min_features, skipped)
    ctx.info["quantized"] = [name for name, _ in chosen]
    ctx.info["skipped_small"] = skipped
    ctx.info["bits"] = cls.bits
    ctx.info["memory_mode"] = CACHED if config.cache else PACKED
    return model
