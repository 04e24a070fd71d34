"""One trial of the search: apply a plan step by step to a copy of the model, stop when the
quality budget is out of reach, otherwise save the result and measure quality, bytes, and
latency timed interleaved with the baseline and its noise probe (a ratio and a verdict).

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
from ..eval.cost import DEFAULT_ROUNDS, latency_interleaved
from ..eval.measure import measure as measure_model
from ..eval.quality import quality_drop

__all__ = ["Hopeless", "measure", "quality_drop", "run_plan_trial", "trains"]
# How a trial is timed, at one batch size, beside the baseline and its probe: the rounds that
# bound a false verdict at 5% (eval.cost.noise_band), 3 calls each (the fastest of them pairs;
# the median of all calls is the trial's latency), after one warm-up call.
ROUNDS, REPEATS, WARMUP = DEFAULT_ROUNDS, 3, 1

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
            plan: dict[str, Any] | None = None, *, reuse: bool = False,
            baseline: nn.Module | None = None, threads: int | None = None) -> dict[str, Any]:
    """Quality on the validation split and saved artifact bytes (slimkit.eval.measure), and
    latency at `batch` on `threads` (default: all available cores). With `reuse`, an artifact
    already at `path` with the same metrics is kept, not rewritten (workers sharing a directory
    write the baseline once). Latency (see `time_latency`) is timed against `baseline`, or
    of `model` as the baseline when there is none."""
    measured = measure_model(model, task, split="valid", save_to=path,
                             manifest={"plan": plan, "task": task}, reuse=reuse, params=False,
                             batch_sizes=(), memory=False)
    return {"metrics": measured["metrics"], "bytes": measured["bytes"],
            **time_latency(model, baseline, task.example_inputs(batch), batch, threads)}


def time_latency(model: nn.Module, baseline: nn.Module | None, inputs: tuple, batch: int,
                 threads: int | None) -> dict[str, Any]:
    """`model` timed in interleaved rounds with `baseline` and a copy of it (the noise probe):
    "latency_ms" (its median ms), "latency_ratio" (baseline / model, paired per round: >1 is
    faster), "latency_verdict" ("faster", "slower", "within noise"), "latency_band" (the
    probe's band for this comparison), "latency_timed_ms" ({"trial", "baseline"} medians).
    Without `baseline`: `model` and its probe, "latency_ms" and "latency_band" only."""
    models = {"baseline": model if baseline is None else baseline}
    if baseline is not None:
        models["trial"] = model
    timed = latency_interleaved(models, {batch: inputs}, threads=threads, rounds=ROUNDS,
                                repeats=REPEATS, warmup=WARMUP)
    b = str(batch)
    base_ms = timed["baseline"][b]["median"]
    if baseline is None:
        return {"latency_ms": base_ms, "latency_band": timed.noise["baseline"][b]}
    versus = timed.compare("trial", "baseline", b, probe="baseline")
    return {"latency_ms": timed["trial"][b]["median"], "latency_ratio": versus["ratio"],
            "latency_verdict": versus["verdict"], "latency_band": versus["band"],
            "latency_timed_ms": {"trial": timed["trial"][b]["median"], "baseline": base_ms}}


def run_plan_trial(model: nn.Module, teacher: nn.Module, task: Any, plan: Plan, *,
                   baseline: dict[str, float], max_drop: float, seed: int, path: Path,
                   batch: int, early_stop: bool = True,
                   report: Callable[[int, float], None] | None = None,
                   threads: int | None = None) -> dict[str, Any]:
    """Compress a copy of `model` with `plan`; raise Hopeless when it cannot fit the budget.

    `report(step, drop)` receives the quality drop after each step but the last. The result
    is `measure`'s, timed against `model` (the baseline, never modified), plus "drop".
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
    result = measure(candidate, task, path, batch, plan=plan.to_dict(), baseline=model,
                     threads=threads)
    result["drop"] = quality_drop(task, baseline, result["metrics"])
    return result
