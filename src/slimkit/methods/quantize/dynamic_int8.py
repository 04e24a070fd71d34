"""Dynamic INT8 quantization of Linear layers: per-channel INT8 weights, activations quantized at
run time per batch, executed by fbgemm's int8 GEMM (Jacob et al. 2018; PyTorch dynamic quant)."""

from __future__ import annotations

import dataclasses

from torch import nn

from ...core import Context, MethodConfig, Targets, register
from ...core.errors import SlimkitError
from ...graph import swap_module
from .int8_linear import DynamicInt8Linear


@dataclasses.dataclass(frozen=True, kw_only=True)
class DynamicInt8(MethodConfig):
    """Replace Linear layers by DynamicInt8Linear. `reduce_range` keeps activations to 7 bits,
    which avoids int16 accumulation overflow in fbgemm's kernels on CPUs without VNNI."""

    method = "quantize.dynamic_int8"
    per_channel: bool = True
    reduce_range: bool = True
    targets: Targets = Targets()


@register(DynamicInt8)
def apply_dynamic_int8(model: nn.Module, config: DynamicInt8, ctx: Context) -> nn.Module:
    chosen = config.targets.select(model, ("Linear",))
    if not chosen:
        raise SlimkitError("quantize.dynamic_int8: targets match no Linear module")
    for name, linear in chosen:
        new = DynamicInt8Linear.from_linear(linear, per_channel=config.per_channel,
                                            reduce_range=config.reduce_range)
        swap_module(model, name, new, new.spec())
    ctx.info["quantized"] = [name for name, _ in chosen]
    return model
