"""The search loop: an Optuna study whose trials are compression plans.

The study lives in a database (a SQLite file by default, any Optuna RDB URL otherwise), so a
search that is stopped resumes where it stopped and several processes, on one machine or many,
share one study: each asks the study for the next trial, so no trial is run twice or lost. The
first process records the baseline, the budget and the (narrowed) search space on the study;
the others check they compress the same model for the same target. TPE is told the budget as a
constraint (Optuna's constrained TPE) so it learns where the feasible plans are; NSGA-II
searches the (drop, bytes, latency) front directly.

No trial's latency is read alone: each is timed in interleaved rounds with the baseline and a
copy of it (the noise probe) before it can become the answer, and carries the paired ratio and
its verdict (faster / slower / within noise); its latency_ms is the baseline's, recorded once
for the study, over that ratio. The empty plan is never proposed (search/space.py, `forced`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from torch import nn

from ..core.errors import SlimkitError
from ..export.runtime import available_cores
from ..rundir import open_run_dir, write_atomic
from . import records
from .narrow import narrow
from .objective import TrialFunction, counted
from .space import SearchSpace
from .storage import fail_dead_local_trials, open_study, requeue
from .trial import measure

log = logging.getLogger(__name__)
Objective = Literal["size", "latency"]
OBJECTIVE_KEYS = {"size": "bytes", "latency": "latency_ms"}
# Called with (out, data) after each write of search.json: the caller's page of the search.
PageWriter = Callable[[Path, dict[str, Any]], object]


@dataclasses.dataclass
class SearchResult:
    trials: list[dict[str, Any]]  # every trial of the study, any state (see records.trial_row)
    best: dict[str, Any] | None  # best by the objective within the budget (None: none fits)
    pareto: list[dict[str, Any]]  # non-dominated measured trials on (drop, bytes, latency)
    baseline: dict[str, Any]
    sensitivity: list[dict[str, Any]]
    data: dict[str, Any]  # everything above as written to search.json

    @property
    def finished(self) -> list[dict[str, Any]]:
        return [t for t in self.trials if t["state"] in ("COMPLETE", "PRUNED")]


def _check_args(objective: str, sampler: str, trials: int, max_drop: float, keep: str) -> None:
    if objective not in OBJECTIVE_KEYS:
        raise SlimkitError(f"objective: expected 'size' or 'latency', got {objective!r}")
    if sampler not in ("tpe", "nsga2"):
        raise SlimkitError(f"sampler: expected 'tpe' or 'nsga2', got {sampler!r}")
    if not isinstance(trials, int) or trials < 1:
        raise SlimkitError(f"trials: expected an integer >= 1, got {trials!r}")
    if not max_drop >= 0:
        raise SlimkitError(f"max_drop: expected a number >= 0, got {max_drop!r}")
    if keep not in ("all", "pareto"):
        raise SlimkitError(f"keep: expected 'all' or 'pareto', got {keep!r}")


def _agree(study: Any, key: str, value: Any, field: str) -> Any:
    """Record `value` on a new study; on an existing one, insist it is the same."""
    stored = study.user_attrs.get(key)
    if stored is None:
        study.set_user_attr(key, value)
        return value
    if stored != value:
        raise SlimkitError(f"{field}: study {study.study_name!r} was started with {stored!r}, "
                           f"got {value!r} (use the same settings, or another study name)")
    return stored


def auto(model: nn.Module, task: Any, space: SearchSpace, *, max_drop: float,
         objective: Objective = "size", trials: int = 30, out: str | Path = "runs/auto",
         storage: str | None = None, study_name: str = "slimkit", seed: int = 0,
         latency_batch: int = 512, sampler: Literal["tpe", "nsga2"] = "tpe",
         sensitivity: bool = True, early_stop: bool = True, keep: str = "all",
         on_trial: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
         write_page: PageWriter | None = None, threads: int | None = None) -> SearchResult:
    """Run (or join, or resume) the search until the study holds `trials` finished trials.

    `model` is never modified. Artifacts: `out/baseline`, `out/trials/NNNN` (every measured
    trial; with keep="pareto" only the front and the best stay); `out/search.json` is rewritten
    after every trial, each time followed by `write_page(out, data)` when given (`slimkit auto`
    passes slimkit.report.search_html.write_search_report, which writes `out/report.html`);
    `on_trial(row, data)` sees each finished trial's row and the whole search.json content.
    `out` must be new, empty or an earlier search's, and is locked while this worker runs
    (workers need one `out` each). `threads`: torch's and ONNX Runtime's intra-op threads
    while timing (default: the cores this process may use), recorded in search.json.
    """
    _check_args(objective, sampler, trials, max_drop, keep)
    with open_run_dir(Path(out), "auto"):
        return _search(model, task, space, max_drop=max_drop, objective=objective,
                       trials=trials, out=Path(out), storage=storage, study_name=study_name,
                       seed=seed, latency_batch=latency_batch, sampler=sampler,
                       sensitivity=sensitivity, early_stop=early_stop, keep=keep,
                       on_trial=on_trial, write_page=write_page,
                       threads=available_cores() if threads is None else threads)


def _search(model: nn.Module, task: Any, space: SearchSpace, *, max_drop: float,
            objective: Objective, trials: int, out: Path, storage: str | None,
            study_name: str, seed: int, latency_batch: int, sampler: Literal["tpe", "nsga2"],
            sensitivity: bool, early_stop: bool, keep: str,
            on_trial: Callable[[dict[str, Any], dict[str, Any]], None] | None,
            write_page: PageWriter | None, threads: int) -> SearchResult:
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study = open_study(storage, study_name, sampler=sampler, seed=seed, trials=trials)
    key = OBJECTIVE_KEYS[objective]
    _agree(study, "max_drop", float(max_drop), "max_drop")
    _agree(study, "objective", objective, "objective")
    _agree(study, "space", space.to_dict(), "space")

    baseline = {**measure(model, task, out / "baseline", latency_batch, reuse=True,
                          threads=threads), "artifact": "baseline"}
    stored = study.user_attrs.get("baseline_metrics")
    if stored is None:
        study.set_user_attr("baseline_metrics", baseline["metrics"])
    elif any(abs(stored[k] - baseline["metrics"].get(k, float("nan"))) > 1e-6 for k in stored):
        raise SlimkitError(f"model: study {study_name!r} was started from a model with "
                           f"{stored}, this one has {baseline['metrics']} (pass the same "
                           "model, or another study name)")
    baseline["metrics"] = stored or baseline["metrics"]  # every worker judges drops alike
    # Trials' latency_ms is this over their ratio: one number for the study, so trials of every
    # worker and every resumed run are on one scale.
    scale = dict(study.user_attrs.get("baseline_latency_ms", {}))
    if str(latency_batch) not in scale:
        scale[str(latency_batch)] = baseline["latency_ms"]
        study.set_user_attr("baseline_latency_ms", scale)
    baseline["latency_ms"] = scale[str(latency_batch)]
    if sensitivity and "narrowed_space" not in study.user_attrs:
        narrowed, rows = narrow(model, task, space, max_drop=max_drop, seed=seed,
                                baseline=baseline["metrics"][task.primary_metric])
        study.set_user_attr("narrowed_space", narrowed.to_dict())
        study.set_user_attr("sensitivity", rows)
    narrowed_steps = study.user_attrs.get("narrowed_space", space.to_dict())
    if not narrowed_steps["steps"]:
        raise SlimkitError(f"max_drop: every step of the space costs more than {max_drop} on "
                           "each layer it targets (see the sensitivity rows); no plan can fit")
    narrowed = SearchSpace.from_dict(narrowed_steps)
    context = {"task": task.name, "primary_metric": task.primary_metric,
               "higher_is_better": task.higher_is_better, "split": "valid",
               "max_drop": float(max_drop),
               "objective": objective, "latency_batch": latency_batch, "threads": threads,
               "storage": storage, "study_name": study_name, "baseline": baseline}

    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    fail_dead_local_trials(study)
    run = TrialFunction(model, teacher, task, narrowed, baseline, out, worker,
                        max_drop=max_drop, key=key, seed=seed, batch=latency_batch,
                        early_stop=early_stop, multi=sampler == "nsga2", trials=trials,
                        threads=threads)
    failed_in_a_row = 0
    while counted(study.get_trials(deepcopy=False)) < trials:
        # One trial per call: optimize() keeps the heartbeat and fails stale trials for us.
        try:
            study.optimize(run, n_trials=1, catch=(SlimkitError,))
        except BaseException:  # Ctrl-C: optimize() recorded the trial FAIL; queue it again
            requeue(study, run.last_number)
            raise
        if run.over_budget:
            break
        data = write_outputs(study, out, context, write_page)
        row = next((r for r in data["trials"] if r["number"] == run.last_number), None)
        if on_trial is not None and row is not None:
            on_trial(row, data)
        # A failed trial frees its slot, so a space where every plan fails would loop forever.
        failed_in_a_row = failed_in_a_row + 1 if row and row["state"] == "FAIL" else 0
        if failed_in_a_row >= max(trials, 3):
            raise SlimkitError(f"trials: the last {failed_in_a_row} trials all failed (last: "
                               f"{row['note'] if row else ''}); see {str(out / 'search.json')!r}")
    # Read again at the end: other workers may have finished trials since the last write.
    data = write_outputs(study, out, context, write_page)
    if keep == "pareto":
        _drop_dominated_artifacts(data, out)
        write_data(data, out, write_page)
    rows = data["trials"]
    best = next((r for r in rows if r["best"]), None)
    return SearchResult(rows, best, [r for r in rows if r["pareto"]], baseline,
                        data.get("sensitivity", []), data)


def collect(study: Any, context: dict[str, Any]) -> dict[str, Any]:
    """search.json's content, read back from the study (so any worker writes the same)."""
    rows = [records.trial_row(t) for t in study.get_trials(deepcopy=False)]
    key = OBJECTIVE_KEYS[context["objective"]]
    best = records.annotate(rows, max_drop=context["max_drop"], key=key)
    data: dict[str, Any] = {"version": 1, "title": f"slimkit auto: {context['task']}",
                            **context, "trials": rows, "best": None, "best_position": None,
                            "pareto": [r["number"] for r in rows if r["pareto"]],
                            "sensitivity": study.user_attrs.get("sensitivity", [])}
    if best is not None:
        position, size = records.front_position(rows, best, key)
        data["best"] = best["number"]
        data["best_position"] = {"position": position, "front_size": size, "by": key}
    return data


def write_outputs(study: Any, out: Path, context: dict[str, Any],
                  write_page: PageWriter | None = None) -> dict[str, Any]:
    """Write search.json atomically (then the page, see write_data); returns the data."""
    return write_data(collect(study, context), out, write_page)


def write_data(data: dict[str, Any], out: Path,
               write_page: PageWriter | None = None) -> dict[str, Any]:
    """search.json, written atomically; then `write_page(out, data)` (e.g. report.html)."""
    write_atomic(out / "search.json", json.dumps(data, indent=1).encode())
    if write_page is not None:
        write_page(out, data)
    return data


def _drop_dominated_artifacts(data: dict[str, Any], out: Path) -> None:
    import shutil

    for row in data["trials"]:
        if row["artifact"] and not (row["pareto"] or row["best"]):
            shutil.rmtree(out / row["artifact"], ignore_errors=True)
            row["artifact"] = None
