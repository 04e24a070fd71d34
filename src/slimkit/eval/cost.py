"""Cost of a model as deployed: parameters, non-zeros, artifact bytes, latency and peak memory.

Latency is wall time of `model(*inputs)` under inference_mode on this process's threads; compare
variants with `latency_interleaved` so that machine noise hits all of them alike.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

Inputs = tuple[torch.Tensor, ...]


def count_params(model: nn.Module) -> dict[str, int]:
    """Stored numbers (parameters and persistent buffers, quantized codes included) and
    non-zeros."""
    tensors = list(model.state_dict().values())
    return {"params": sum(t.numel() for t in tensors),
            "nonzeros": sum(int((t != 0).sum()) for t in tensors)}


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
    """(peak, added) MB: peak resident memory (VmHWM) of a fresh process that loads the artifact
    and runs `inputs`, and how much of it came after the interpreter and torch were imported.

    Measured in a child process: the parent's own history would otherwise dominate the peak.
    """
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "inputs.safetensors"
        safetensors.torch.save_file({str(i): t.contiguous() for i, t in enumerate(inputs)},
                                    str(file))
        cmd = [sys.executable, "-m", "slimkit.eval.probe", str(artifact), str(file)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(result["peak_mb"]), round(float(result["peak_mb"] - result["base_mb"]), 2)
