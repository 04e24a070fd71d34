"""Evaluation: pure metrics, cost measurement (bytes, latency, memory) and evaluate()."""

from .cost import count_params, latency_interleaved, peak_memory_mb
from .evaluate import evaluate
from .metrics import auc, logloss
from .runtime_memory import runtime_memory

__all__ = ["auc", "count_params", "evaluate", "latency_interleaved", "logloss", "peak_memory_mb",
           "runtime_memory"]
