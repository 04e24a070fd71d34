"""Dynamic INT8 quantization of Linear layers: per-channel INT8 weights, activations quantized at
run time per batch, executed by fbgemm's int8 GEMM (Jacob et al. 2018; PyTorch dynamic quant)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch import nn

from ...core import Context, MethodConfig, Targets, check_range, register
from ...core.errors import SlimkitError
from ...graph import get_submodule, swap_module
from ...nn.int8_linear import DynamicInt8Linear


@dataclasses.dataclass(frozen=True, kw_only=True)
class DynamicInt8(MethodConfig):
    """Replace Linear layers by DynamicInt8Linear.

    `int8_range`: "portable" (default) stores weights in [-64, 64], so no pair of u8 x s8 products
    overflows int16 in the x86 kernels of CPUs without VNNI (fbgemm, ONNX Runtime MLAS): the
    activations keep all 8 bits and results are the same on every x86 CPU. "full" uses
    [-127, 127], for fleets with AVX-512 VNNI or AMX only (on a CPU without them slimkit re-packs
    such weights at load, and ONNX Runtime sessions warn). `reduce_range` quantizes activations
    to 7 bits instead (fbgemm's own remedy; not what ONNX Runtime computes)."""
    method = "quantize.dynamic_int8"
    leaves_int8_kernels = True
    per_channel: bool = True
    int8_range: Literal["portable", "full"] = "portable"
    reduce_range: bool = False
    fuse_relu: bool = True
    min_features: int = 16
    targets: Targets = Targets()

    def validate(self) -> None:
        check_range("min_features", self.min_features, 1, 1 << 30)


def _next_relu(model: nn.Module, name: str) -> str | None:
    """Name of an nn.ReLU that directly follows `name` inside an nn.Sequential, if any."""
    parent_name, _, leaf = name.rpartition(".")
    parent = get_submodule(model, parent_name)
    if not isinstance(parent, nn.Sequential) or not leaf.isdigit():
        return None
    sibling = str(int(leaf) + 1)
    if isinstance(parent._modules.get(sibling), nn.ReLU):
        return f"{parent_name}.{sibling}" if parent_name else sibling
    return None


@register(DynamicInt8)
def apply_dynamic_int8(model: nn.Module, config: DynamicInt8, ctx: Context) -> nn.Module:
    chosen = config.targets.select(model, ("Linear",))
    if not chosen:
        raise SlimkitError("quantize.dynamic_int8: targets match no Linear module")
    done, skipped = [], []
    for name, linear in chosen:
        # Quantizing activations costs a pass over them; a layer this narrow (a 1-output head)
        # does too little arithmetic to repay it, so it stays fp32.
        if min(linear.in_features, linear.out_features) < config.min_features:
            skipped.append(name)
            continue
        relu = _next_relu(model, name) if config.fuse_relu else None
        new = DynamicInt8Linear.from_linear(linear, per_channel=config.per_channel,
                                            reduce_range=config.reduce_range, relu=relu is not None,
                                            int8_range=config.int8_range)
        swap_module(model, name, new, new.spec())
        if relu is not None:
            swap_module(model, relu, nn.Identity(), {})
        done.append(name)
    ctx.info["quantized"] = done
    ctx.info["skipped_small"] = skipped
    ctx.info["fused_relu"] = sum(1 for n in done if get_submodule(model, n).relu)
    ctx.info["int8_range"] = config.int8_range
    return model
