"""Quantization-aware training with learned step sizes (LSQ, Esser et al. 2019).

Linear layers are wrapped in fake-quantizing `LsqLinear` modules (weights per output channel,
optionally input activations per tensor), fine-tuned with the task loss, then converted into
the same deployable integer modules post-training quantization produces.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...core import Context, MethodConfig, Targets, check_range, check_training, register
from ...core.config import DATA
from ...core.cpu import PORTABLE_WEIGHT_MAX
from ...core.errors import SlimkitError
from ...core.module_types import register_module_type
from ...graph import set_submodule, swap_module
from ...nn.int8_linear import INT8_RANGES, DynamicInt8Linear
from ...train import fit
from .dynamic_int8 import _next_relu
from .lsq import init_step, integer_codes, lsq, qrange


@register_module_type
class LsqLinear(nn.Module):
    """Training-time wrapper: F.linear on LSQ fake-quantized weight (and input)."""

    def __init__(self, linear: nn.Linear, weight_bits: int, activation_bits: int,
                 weight_max: int = PORTABLE_WEIGHT_MAX) -> None:
        super().__init__()
        self.linear = linear
        # Trained within the range the deployed kernel will hold (portable: [-64, 64]).
        self.weight_max = min(qrange(weight_bits, signed=True)[1], weight_max)
        self.wq = (self.weight_max, self.weight_max)
        self.weight_step = nn.Parameter(init_step(linear.weight, self.wq[1], dim=1))
        self.activation_bits = activation_bits
        self.aq = qrange(activation_bits, signed=True) if activation_bits else (0, 0)
        self.input_step = nn.Parameter(torch.ones(())) if activation_bits else None
        self._initialised = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_step is not None:
            if not self._initialised:  # the paper initialises the step from the first batch
                with torch.no_grad():
                    self.input_step.copy_(init_step(x, self.aq[1]))
                self._initialised = True
            x = lsq(x, self.input_step, *self.aq)
        weight = lsq(self.linear.weight, self.weight_step, *self.wq)
        return F.linear(x, weight, self.linear.bias)

    def to_dynamic_int8(self, relu: bool) -> DynamicInt8Linear:
        """INT8 weights with the learned per-channel steps as scales (activations dynamic)."""
        lin = self.linear
        new = DynamicInt8Linear(lin.in_features, lin.out_features, lin.bias is not None,
                                reduce_range=False, relu=relu, weight_max=self.weight_max)
        step = self.weight_step.detach().reshape(-1)
        with torch.no_grad():
            new.weight.copy_(integer_codes(lin.weight, step[:, None], *self.wq).to(torch.int8))
            new.weight_scale.copy_(step)
            if lin.bias is not None:
                new.bias.copy_(lin.bias)
        return new


@dataclasses.dataclass(frozen=True, kw_only=True)
class QAT(MethodConfig):
    """LSQ fine-tuning, then conversion to int8 modules (`activation_bits` 0: dynamic INT8).
    `int8_range` as in quantize.dynamic_int8: "portable" trains weights within [-64, 64]."""

    method = "quantize.qat"
    leaves_int8_kernels = True
    weight_bits: Literal[8] = 8
    activation_bits: Literal[0] = 0
    int8_range: Literal["portable", "full"] = "portable"
    epochs: float = 1.0
    lr: float = 1e-4
    batch_size: int = 512
    weight_decay: float = 0.0
    min_features: int = 16
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA

    def validate(self) -> None:
        check_training(self)
        check_range("min_features", self.min_features, 1, 1 << 30)


@register(QAT)
def apply_qat(model: nn.Module, config: QAT, ctx: Context) -> nn.Module:
    task = ctx.require_task(config.method)
    chosen = [(n, m) for n, m in config.targets.select(model, ("Linear",))
              if min(m.in_features, m.out_features) >= config.min_features]
    if not chosen:
        raise SlimkitError("quantize.qat: targets match no Linear module wide enough")
    wrappers = {}
    for name, linear in chosen:
        wrapper = LsqLinear(linear, config.weight_bits, config.activation_bits,
                            INT8_RANGES[config.int8_range])
        set_submodule(model, name, wrapper)  # temporary: replaced below, never saved
        wrappers[name] = wrapper
    losses = fit(model, task, ctx, epochs=config.epochs, lr=config.lr,
                 batch_size=config.batch_size, weight_decay=config.weight_decay, desc="qat")
    for name, wrapper in wrappers.items():
        relu = _next_relu(model, name)
        new = wrapper.to_dynamic_int8(relu is not None)
        set_submodule(model, name, wrapper.linear)  # so the logged swap replaces a Linear
        swap_module(model, name, new, new.spec())
        if relu is not None:
            swap_module(model, relu, nn.Identity(), {})
    ctx.info["quantized"] = list(wrappers)
    ctx.info["final_loss"] = round(sum(losses[-20:]) / max(1, len(losses[-20:])), 6)
    return model
