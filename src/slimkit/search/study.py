"""The search loop: an Optuna study whose trials are plans. Each trial compresses a copy of the
model, measures quality on the validation split, the saved artifact's bytes and latency, and
records them on the trial; the answer is the best plan by the objective among the trials within
the quality budget, plus the Pareto front of (quality drop, bytes, latency).

The study lives in a database (SQLite file by default, any Optuna RDB URL otherwise), so a
search that is stopped resumes where it stopped and several processes can share one study.
TPE is told the budget as a constraint (Optuna's constrained TPE), so it learns where the
feasible plans are instead of discarding the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..core import Context
from ..core.compress import compress_
from ..core.errors import SlimkitError
from ..export.artifact import artifact_bytes, save
from .space import SearchSpace, suggest_plan

log = logging.getLogger(__name__)
Objective = Literal["size", "latency"]


@dataclasses.dataclass
class SearchResult:
    trials: list[dict[str, Any]]  # every finished trial: number, plan, metrics, bytes, ms, drop
    best: dict[str, Any] | None  # best by the objective within the budget (None: none fits)
    pareto: list[dict[str, Any]]  # non-dominated trials on (drop, bytes, latency)
    baseline: dict[str, Any]


def _latency_ms(model: nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int = 7) -> float:
    model.eval()
    times = []
    with torch.inference_mode():
        model(*inputs)
        for _ in range(repeats):
            start = time.perf_counter()
            model(*inputs)
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def _measure(model: nn.Module, task: Any, path: Path, batch: int) -> dict[str, Any]:
    metrics = task.evaluate(model, "valid")
    save(model, path, metrics={"valid": metrics}, task=task)
    return {"metrics": metrics, "bytes": artifact_bytes(path),
            "latency_ms": _latency_ms(model, tuple(task.example_inputs(batch)))}


def _drop(task: Any, base: dict[str, float], metrics: dict[str, float]) -> float:
    """Quality lost relative to the baseline, positive = worse, in the primary metric's units."""
    key = task.primary_metric
    sign = 1.0 if task.higher_is_better else -1.0
    return sign * (base[key] - metrics[key])


def auto(model: nn.Module, task: Any, space: SearchSpace, *, max_drop: float,
         objective: Objective = "size", trials: int = 30, out: str | Path = "runs/auto",
         storage: str | None = None, study_name: str = "slimkit", seed: int = 0,
         latency_batch: int = 512, sampler: Literal["tpe", "nsga2"] = "tpe") -> SearchResult:
    """Run (or resume) the search until the study holds `trials` finished trials."""
    try:
        import optuna
    except ImportError:
        raise SlimkitError("auto: needs optuna (pip install 'slimkit[search]')") from None
    if objective not in ("size", "latency"):
        raise SlimkitError(f"objective: expected 'size' or 'latency', got {objective!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    baseline = _measure(model, task, out / "baseline", latency_batch)
    key = "bytes" if objective == "size" else "latency_ms"

    def run_trial(trial: Any) -> float:
        plan = suggest_plan(trial, space)
        candidate = copy.deepcopy(model)
        ctx = Context(task=task, seed=seed + trial.number)
        compress_(candidate, plan, ctx)
        result = _measure(candidate, task, out / "trials" / f"{trial.number:04d}", latency_batch)
        drop = _drop(task, baseline["metrics"], result["metrics"])
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("metrics", result["metrics"])
        trial.set_user_attr("bytes", result["bytes"])
        trial.set_user_attr("latency_ms", result["latency_ms"])
        trial.set_user_attr("drop", drop)
        trial.set_constraint("quality_drop", drop - max_drop)  # feasible when <= 0
        return float(result[key])

    chosen: Any = optuna.samplers.TPESampler(seed=seed) if sampler == "tpe" \
        else optuna.samplers.NSGAIISampler(seed=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=chosen,
                                direction="minimize", load_if_exists=True)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # A trial killed mid-way stays RUNNING in the database; it is not counted and not redone.
    left = trials - len(done)
    if left > 0:
        study.optimize(run_trial, n_trials=left, catch=(SlimkitError,))
    finished = [_row(t) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    feasible = [r for r in finished if r["drop"] <= max_drop]
    best = min(feasible, key=lambda r: r[key]) if feasible else None
    return SearchResult(finished, best, pareto_front(finished), baseline)


def _row(trial: Any) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {"number": trial.number, "plan": attrs["plan"], "metrics": attrs["metrics"],
            "bytes": attrs["bytes"], "latency_ms": attrs["latency_ms"], "drop": attrs["drop"]}


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows no other row beats on all of drop, bytes and latency (and strictly on one)."""
    keys = ("drop", "bytes", "latency_ms")

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return all(a[k] <= b[k] for k in keys) and any(a[k] < b[k] for k in keys)

    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]
