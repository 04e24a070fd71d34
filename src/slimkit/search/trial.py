"""One trial of the search: apply a plan step by step to a copy of the model, stop when the
quality budget is out of reach, otherwise save the result and measure quality, bytes, latency.

Every trial uses the same seed, so two trials differ only by their plans, and a trial run again
(after an interruption) gives the same numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..core import Context
from ..core.compress import compress_
from ..core.plan import Plan
from ..eval.measure import measure as measure_model
from ..eval.quality import quality_drop

__all__ = ["Hopeless", "measure", "quality_drop", "run_plan_trial", "trains"]
# How a trial times its model: one round of 7 calls after one warm-up call, at one batch size.
TIMING = {"rounds": 1, "repeats": 7, "warmup": 1}

# A step may lose quality that a later training step (fine-tuning, distillation) wins back, so
# the bar is loose while training is still to come and tight once only compression is left.
HOPELESS_BEFORE_TRAINING = 10.0  # x the budget
HOPELESS_AFTER_TRAINING = 1.5  # x the budget: quantizing or pruning further rarely gains quality


class Hopeless(Exception):
    """Raised when a trial cannot end within the budget; carries where and how far off."""

    def __init__(self, step: int, method: str, drop: float, limit: float) -> None:
        super().__init__(f"stopped after step {step} ({method}): drop {drop:.4f} > {limit:.4f}")
        self.step, self.drop = step, drop


def trains(config: Any) -> bool:
    """Whether a step trains the model (and so may recover quality lost before it)."""
    return float(getattr(config, "epochs", 0.0) or 0.0) > 0 and \
        getattr(config, "recover", "") != "none"


def measure(model: nn.Module, task: Any, path: Path, batch: int,
            plan: dict[str, Any] | None = None, *, reuse: bool = False) -> dict[str, Any]:
    """Quality on the validation split, saved artifact bytes and the median latency (ms) at
    `batch` (slimkit.eval.measure). With `reuse`, an artifact already at `path` with the same
    metrics is kept, not rewritten (workers sharing a directory write the baseline once)."""
    measured = measure_model(model, task, split="valid", save_to=path,
                             manifest={"plan": plan, "task": task}, reuse=reuse, params=False,
                             batch_sizes=(batch,), timing=TIMING, memory=False)
    return {"metrics": measured["metrics"], "bytes": measured["bytes"],
            "latency_ms": measured["latency_ms"][str(batch)]["median"]}


def run_plan_trial(model: nn.Module, teacher: nn.Module, task: Any, plan: Plan, *,
                   baseline: dict[str, float], max_drop: float, seed: int, path: Path,
                   batch: int, early_stop: bool = True,
                   report: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Compress a copy of `model` with `plan`; raise Hopeless when it cannot fit the budget.

    `report(step, drop)` receives the quality drop after each step but the last.
    """
    candidate = copy.deepcopy(model)
    ctx = Context(task=task, seed=seed, teacher=teacher)
    steps = plan.steps
    for i, config in enumerate(steps):
        compress_(candidate, Plan(steps=(config,)), ctx, first_step=i)
        if i == len(steps) - 1 or not early_stop:
            continue
        drop = quality_drop(task, baseline, task.evaluate(candidate, "valid"))
        if report is not None:
            report(i, drop)
        later_training = any(trains(c) for c in steps[i + 1:])
        limit = max_drop * (HOPELESS_BEFORE_TRAINING if later_training
                            else HOPELESS_AFTER_TRAINING)
        if drop > limit:
            raise Hopeless(i, config.method, drop, limit)
    result = measure(candidate, task, path, batch, plan=plan.to_dict())
    result["drop"] = quality_drop(task, baseline, result["metrics"])
    return result
