"""Cost of a model as deployed: logical parameters, non-zeros, latency and run-time memory.

Latency is wall time of `model(*inputs)` under inference_mode on this process's threads; compare
variants with `latency_interleaved` so that machine noise hits all of them alike.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from .runtime_memory import runtime_memory

Inputs = tuple[torch.Tensor, ...]


def count_params(model: nn.Module) -> dict[str, int]:
    """Logical weights: the parameters of the equivalent float model (a packed 4-bit 768x3072
    weight counts 2.36M, its scales none), and how many of them are non-zero."""
    params = nonzeros = 0
    seen: set[int] = set()
    for module in model.modules():
        shape = _packed_weight_shape(module)
        if shape is not None:
            numel = math.prod(shape)
            bias = module._buffers.get("bias", module._parameters.get("bias"))
            params += numel + (bias.numel() if bias is not None else 0)
            nonzeros += _packed_nonzeros(module, numel) + (
                int((bias != 0).sum()) if bias is not None else 0)
            seen.update(id(t) for t in module.parameters(recurse=False))
            continue
        for param in module.parameters(recurse=False):
            if id(param) not in seen:  # tied weights count once
                seen.add(id(param))
                params += param.numel()
                nonzeros += int((param != 0).sum())
    return {"params": params, "nonzeros": nonzeros}


def _packed_weight_shape(module: nn.Module) -> list[int] | None:
    """The float weight shape a quantized/packed layer stands for; None for any other module."""
    weight = module._parameters.get("weight")
    own = [t for t in [*module._parameters.values(), *module._buffers.values()] if t is not None]
    if (weight is not None and weight.is_floating_point()) \
            or all(t.is_floating_point() for t in own):
        return None  # nothing packed here: its parameters count as they are
    if hasattr(module, "weight_shape"):
        return [int(d) for d in module.weight_shape]
    coded = module._buffers.get("weight")
    if coded is not None and not coded.is_floating_point():
        return list(coded.shape)  # int8 codes: one per weight
    for rows, cols in (("out_features", "in_features"), ("num_embeddings", "embedding_dim")):
        if isinstance(getattr(module, rows, None), int) and isinstance(getattr(module, cols, None),
                                                                       int):
            return [getattr(module, rows), getattr(module, cols)]
    return None


@torch.no_grad()
def _packed_nonzeros(module: nn.Module, numel: int) -> int:
    for method in ("dequantized_weight", "dense_weight"):
        dense = getattr(module, method, None)
        if callable(dense):
            return int((dense() != 0).sum())
    return numel


def _time_once(model: nn.Module, inputs: Inputs) -> float:
    start = time.perf_counter()
    model(*inputs)
    return (time.perf_counter() - start) * 1e3


def _summary(times: list[float], batch: int) -> dict[str, float]:
    times = sorted(times)
    median = statistics.median(times)
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return {"median": round(median, 5), "p90": round(p90, 5),
            "throughput": round(batch / (median / 1e3), 1)}


@torch.inference_mode()
def latency_interleaved(models: Mapping[str, nn.Module], inputs: Mapping[int, Inputs], *,
                        rounds: int = 7, repeats: int = 10, warmup: int = 3,
                        progress: Callable[..., Iterable] | None = None
                        ) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and batch size: median and p90 milliseconds, and rows per second.

    Rounds alternate between models so slow phases of a shared machine spread evenly.
    """
    for model in models.values():
        model.eval()
        for x in inputs.values():
            for _ in range(warmup):
                model(*x)
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in inputs} for n in models}
    rounds_iter: Iterable[int] = range(rounds)
    if progress is not None:
        rounds_iter = progress(rounds_iter, total=rounds, desc="latency")
    for _ in rounds_iter:
        for name, model in models.items():
            for batch, x in inputs.items():
                times[name][batch].extend(_time_once(model, x) for _ in range(repeats))
    return {name: {str(b): _summary(t, b) for b, t in per.items()} for name, per in times.items()}


def peak_memory_mb(artifact: Path, inputs: Inputs) -> tuple[float, float] | None:
    """(peak, added) MiB: peak resident memory (VmHWM) of a fresh process that loads the artifact
    and runs `inputs`, and how much of it came after its imports (`runtime_memory` gives more)."""
    measured = runtime_memory(artifact, inputs)
    if measured is None:
        return None
    return measured["peak_absolute"], measured["peak"]
