"""evaluate(): quality on a task plus cost, measured the same way for every model and stage."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from ..core.task import Task
from ..export import artifact_bytes, save
from .cost import count_params, latency_interleaved
from .runtime_memory import runtime_memory

BATCH_SIZES = (1, 512)


def evaluate(model: nn.Module, task: Task, *, split: str = "test",
             batch_sizes: tuple[int, ...] = BATCH_SIZES, artifact: Path | None = None,
             memory: bool = True) -> dict[str, Any]:
    """Quality metrics, logical params, non-zeros, artifact bytes, latency (median/p90), and
    run-time memory of a fresh process (MiB above its baseline: resident and peak).

    Without `artifact`, the model is saved to a temporary artifact to measure its bytes.
    """
    result: dict[str, Any] = {"metrics": task.evaluate(model, split), **count_params(model)}
    inputs = {b: task.example_inputs(b) for b in batch_sizes}
    lat = latency_interleaved({"model": model}, inputs)["model"]
    result["latency_ms"] = {b: {"median": v["median"], "p90": v["p90"]} for b, v in lat.items()}
    result["throughput"] = {b: v["throughput"] for b, v in lat.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = artifact or save(model, Path(tmp) / "artifact")
        result["bytes"] = artifact_bytes(path)
        measured = runtime_memory(path, inputs[max(batch_sizes)]) if memory else None
        if measured is not None:
            result["runtime_mb"] = {k: measured[k] for k in ("resident", "peak", "loaded",
                                                             "load_peak")}
            result["peak_memory_mb"] = measured["peak_absolute"]
    return result
