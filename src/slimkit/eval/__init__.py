"""Evaluation: pure metrics, quality drop, per-layer sensitivity, cost measurement (bytes,
latency, memory), the one `measure` every caller uses, and evaluate()."""

from .cost import count_params, latency_interleaved, peak_memory_mb
from .evaluate import evaluate
from .measure import measure
from .metrics import auc, logloss
from .quality import metric_drop, quality_drop
from .runtime_memory import runtime_memory
from .sensitivity import layer_sensitivity

__all__ = ["auc", "count_params", "evaluate", "latency_interleaved", "layer_sensitivity",
           "logloss", "measure", "metric_drop", "peak_memory_mb", "quality_drop",
           "runtime_memory"]
