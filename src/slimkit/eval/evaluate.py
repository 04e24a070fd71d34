"""evaluate(): quality on a task plus cost, measured the same way for every model and stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..core.task import Task
from .measure import measure

# evaluate() reports the process's figures; run_plan's stages add the model's own share.
MEMORY_KEYS = ("resident", "peak", "loaded", "load_peak")


def evaluate(model: nn.Module, task: Task, *, split: str = "test",
             batch_sizes: tuple[int, ...] | None = None, artifact: Path | None = None,
             memory: bool = True, model_factory: str | None = None) -> dict[str, Any]:
    """Quality metrics, logical params, non-zeros, artifact bytes, latency (median/p90), and
    run-time memory of a fresh process (MiB above its baseline: resident and peak).

    Without `artifact`, the model is saved to a temporary artifact to measure its bytes. A
    model of the caller's own class is measured in that process when `model_factory`
    (`module:function`, importable there) builds an instance of it.
    """
    return measure(model, task, split=split, artifact=artifact, batch_sizes=batch_sizes,
                   memory=memory, memory_keys=MEMORY_KEYS, model_factory=model_factory)
