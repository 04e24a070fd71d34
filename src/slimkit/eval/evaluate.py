"""evaluate(): quality on a task plus cost, measured the same way for every model and stage."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from ..core.task import Task
from ..export import artifact_bytes, save
from .cost import count_params, latency_interleaved, peak_memory_mb

BATCH_SIZES = (1, 512)


def evaluate(model: nn.Module, task: Task, *, split: str = "test",
             batch_sizes: tuple[int, ...] = BATCH_SIZES, artifact: Path | None = None,
             memory: bool = True) -> dict[str, Any]:
    """Quality metrics, params, non-zeros, artifact bytes, latency (median/p90), peak memory.

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
        measured = peak_memory_mb(path, inputs[max(batch_sizes)]) if memory else None
        if measured is not None:
            result["peak_memory_mb"], result["model_memory_mb"] = measured
    return result
