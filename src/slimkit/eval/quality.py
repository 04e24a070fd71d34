"""Quality lost by a compressed model, in the units of the task's primary metric and signed so that
positive is worse whichever way the metric improves."""

from __future__ import annotations

from collections.abc import Mapping

from ..core.task import Task


def metric_drop(task: Task, baseline: float, value: float) -> float:
    """Positive = worse, whichever direction the metric improves in."""
    return baseline - value if task.higher_is_better else value - baseline


def quality_drop(task: Task, base: Mapping[str, float], metrics: Mapping[str, float]) -> float:
    """Quality lost relative to the baseline, positive = worse, in the primary metric's units."""
    key = task.primary_metric
    return metric_drop(task, base[key], metrics[key])
