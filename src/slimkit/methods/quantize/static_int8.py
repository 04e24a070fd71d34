"""Static INT8 (W8A8) post-training quantization: calibrate activation ranges on the task's data,
then swap Linear / Conv2d layers for INT8 kernels with fixed activation scales (Jacob et al. 2018;
KL calibration after Migacz 2017, NVIDIA TensorRT)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from ...core import Context, MethodConfig, Targets, check_range, register
from ...core.config import DATA
from ...core.errors import SlimkitError
from ...core.task import batches_used
from ...graph import get_submodule, swap_module
from ...nn.int8_linear import INT8_RANGES
from ...nn.static_modules import StaticInt8Conv2d, StaticInt8Linear
from .dynamic_int8 import _next_relu
from .observers import Histogram, activation_qparams

_PASSTHROUGH = (nn.Identity, nn.Dropout)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StaticInt8(MethodConfig):
    """Quantize weights (INT8 per output channel) and activations (UINT8 per tensor, ranges from
    `observer` on `calibration_batches` batches). `backend`: "torch" runs fbgemm's int8 kernels
    eagerly; "onnxruntime" emulates ORT's QDQ arithmetic in torch (slower in torch, but evaluation
    matches the deployed ORT graph); "auto" picks torch on x86. Both export (slimkit.export.onnx)
    to the same QDQ graph, which ORT runs with its fused int8 kernels. `int8_range`
    "portable" (default) stores weights in [-64, 64] so no pair of u8 x s8 products overflows
    int16 in fbgemm's or ORT's kernels on x86 CPUs without VNNI, while activations keep 8 bits;
    "full" ([-127, 127]) is for fleets with AVX-512 VNNI or AMX only (re-packed at load on other
    CPUs). `reduce_range` calibrates activations to 7 bits instead (the older remedy: coarser,
    and ORT clamps to 8 bits anyway). `keep_quantized` passes quantized tensors between
    consecutive layers of an nn.Sequential (torch backend) instead of de-quantizing."""

    method = "quantize.static_int8"
    leaves_int8_kernels = True
    observer: Literal["minmax", "percentile", "mse", "kl"] = "percentile"
    percentile: float = 99.99
    calibration_batches: int = 16
    batch_size: int = 256
    backend: Literal["torch", "onnxruntime", "auto"] = "auto"
    int8_range: Literal["portable", "full"] = "portable"
    reduce_range: bool = False
    fuse_relu: bool = True
    keep_quantized: bool = True
    min_features: int = 16
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA

    def validate(self) -> None:
        check_range("percentile", self.percentile, 50.0, 100.0, lo_open=True)
        check_range("calibration_batches", self.calibration_batches, 1, 1 << 16)
        check_range("batch_size", self.batch_size, 1, 1 << 20)
        check_range("min_features", self.min_features, 1, 1 << 30)


def resolve_backend(backend: str) -> str:
    """Resolve "auto": fbgemm's kernels where torch has them (x86), else the ORT emulation. Export
    emits the same QDQ graph for both; the choice only decides how the model runs in torch."""
    if backend != "auto":
        return backend
    engines = torch.backends.quantized.supported_engines
    return "torch" if {"x86", "fbgemm"} & set(engines) else "onnxruntime"


def _supported(module: nn.Module, min_features: int) -> bool:
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features) >= min_features
    return (isinstance(module.padding, tuple) and module.padding_mode == "zeros"
            and len(module.kernel_size) == 2)


def _leaves(seq: nn.Sequential, prefix: str) -> Iterator[str]:
    for key, child in seq._modules.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, path)
        else:
            yield path


def _successors(model: nn.Module) -> dict[str, str]:
    """Leaf path -> the leaf that receives its output, through nested nn.Sequentials only (the
    one structure where data flow is certain without tracing)."""
    nested = {f"{n}.{k}" if n else k for n, m in model.named_modules()
              if isinstance(m, nn.Sequential) for k in m._modules}
    succ: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential) and name not in nested:
            leaves = list(_leaves(module, name))
            succ.update(zip(leaves[:-1], leaves[1:], strict=True))
    return succ


def _calibrate(model: nn.Module, points: dict[str, tuple[nn.Module, nn.Module]],
               config: StaticInt8, ctx: Context) -> dict[str, tuple[Histogram, Histogram]]:
    """Histograms of each target's input and (post-ReLU when fused) output."""
    task = ctx.require_task(StaticInt8.method)
    hists = {name: (Histogram(), Histogram()) for name in points}
    handles = []
    for name, (layer, out_module) in points.items():
        h_in, h_out = hists[name]
        handles.append(layer.register_forward_pre_hook(
            lambda _m, args, h=h_in: h.update(args[0])))
        handles.append(out_module.register_forward_hook(
            lambda _m, _args, out, h=h_out: h.update(out)))
    was_training = model.training
    model.eval()
    try:
        batches = task.calibration_batches(config.calibration_batches, config.batch_size)
        ctx.info["calibration"] = batches_used(task, batches, config.calibration_batches)
        with torch.inference_mode():
            for batch in ctx.progress(batches, total=len(batches), desc="calibrate"):
                model(*task.inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return hists


@register(StaticInt8)
def apply_static_int8(model: nn.Module, config: StaticInt8, ctx: Context) -> nn.Module:
    chosen = config.targets.select(model, ("Linear", "Conv2d"))
    if not chosen:
        raise SlimkitError("quantize.static_int8: targets match no Linear/Conv2d module")
    layers = {n: m for n, m in chosen if _supported(m, config.min_features)}
    relus = {n: _next_relu(model, n) if config.fuse_relu else None for n in layers}
    points = {n: (m, get_submodule(model, relus[n]) if relus[n] else m) for n, m in layers.items()}
    hists = _calibrate(model, points, config, ctx)
    backend = resolve_backend(config.backend)
    qmax = 127 if config.reduce_range else 255
    qparams: dict[str, Any] = {
        n: tuple(activation_qparams(h, config.observer, percentile=config.percentile, qmax=qmax)
                 for h in hists[n]) for n in layers}
    chained = _chain(model, layers, relus, qparams) if (
        config.keep_quantized and backend == "torch") else set()
    for name, layer in layers.items():
        new = _build(layer, relus[name] is not None, backend, name in chained,
                     INT8_RANGES[config.int8_range])
        new.set_weight(layer.weight, layer.bias)
        new.set_qparams(*qparams[name])
        swap_module(model, name, new, new.spec())
        if relus[name] is not None:
            swap_module(model, relus[name], nn.Identity(), {})
    ctx.info.update(quantized=list(layers), skipped=[n for n, _ in chosen if n not in layers],
                    fused_relu=sum(r is not None for r in relus.values()), chained=sorted(chained),
                    backend=backend, observer=config.observer, int8_range=config.int8_range)
    return model


def _chain(model: nn.Module, layers: dict[str, nn.Module], relus: dict[str, str | None],
           qparams: dict[str, Any]) -> set[str]:
    """Layers whose quantized output feeds the next quantized layer directly; that layer's input
    observer saw the very same tensor, so it takes the producer's output qparams."""
    succ = _successors(model)
    chained = set()
    for name in layers:
        nxt = succ.get(relus[name] or name)
        while nxt is not None and nxt not in layers and isinstance(
                get_submodule(model, nxt), _PASSTHROUGH):
            nxt = succ.get(nxt)
        if nxt in layers and type(layers[nxt]) is type(layers[name]):
            chained.add(name)
            qparams[nxt] = (qparams[name][1], qparams[nxt][1])
    return chained


def _build(layer: nn.Module, relu: bool, backend: str, quantized_output: bool,
           weight_max: int) -> StaticInt8Linear | StaticInt8Conv2d:
    if isinstance(layer, nn.Linear):
        return StaticInt8Linear(layer.in_features, layer.out_features, layer.bias is not None,
                                relu, backend, quantized_output, weight_max)
    return StaticInt8Conv2d(layer.in_channels, layer.out_channels, list(layer.kernel_size),
                            list(layer.stride), list(layer.padding), list(layer.dilation),
                            layer.groups, layer.bias is not None, relu, backend,
                            quantized_output, weight_max)
