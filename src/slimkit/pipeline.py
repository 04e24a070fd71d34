"""Run a plan stage by stage on a task: compress, evaluate, save an artifact per stage, measure
deployed latency of every stage in one interleaved run, and write metrics.json plus the report.

Each finished stage is saved before the next starts and `progress.json` lists them, so an
interrupted run resumes from the last finished stage.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

from .core import Context, Plan, SlimkitError, Task, check_plan, compress_
from .core.cpu import cpu_features
from .core.module_types import needs_instance
from .core.refs import importable_ref
from .core.task import describe
from .eval.cost import latency_interleaved
from .eval.measure import (
    latency_fields,
    measure,
    memory_fields,
    speed_fields,
    task_batch_sizes,
)
from .eval.regressions import describe as describe_regression
from .eval.regressions import stage_regressions
from .export import copy_artifact, reload
from .export.artifact import model_spec
from .export.runtime import available_cores
from .rundir import clear_previous_run, open_run_dir, write_errors

log = logging.getLogger(__name__)
FINAL = "model"
PROGRESS = "progress.json"
ORT = "onnxruntime:"  # + a stage's name: its ONNX Runtime session's name in the timing


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write: a temp file in the same directory, then os.replace."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def stage_dir(out: Path, index: int, name: str) -> Path:
    return out / "stages" / f"{index:02d}-{name}"


def _evaluate_stage(model: nn.Module, task: Task, name: str, steps: list[str], seconds: float,
                    info: dict, out: Path, index: int, plan: Plan) -> dict[str, Any]:
    """Quality on test, logical params and the stage's artifact bytes (slimkit.eval.measure);
    latency and run-time memory are measured for all stages together in `finish`."""
    measured = measure(model, task, split="test", save_to=stage_dir(out, index, name),
                       manifest={"plan": plan.to_dict(), "task": task, "extra": {"stage": name}},
                       batch_sizes=(), memory=False, label=name)
    path = stage_dir(out, index, name)
    return {"name": name, "steps": steps, "metrics": measured["metrics"],
            "params": measured["params"], "nonzeros": measured["nonzeros"],
            "seconds": round(seconds, 2), "info": info, "bytes": measured["bytes"],
            "artifact": str(path.relative_to(out))}


def run_plan(model: nn.Module | None, task: Task, plan: Plan, out: str | Path, *, ctx: Context,
             title: str, baseline_name: str = "teacher", baseline_seconds: float = 0.0,
             resume: bool = False, measure_memory: bool = True, onnxruntime: bool | None = None,
             on_stage: Callable[[dict[str, Any]], None] | None = None,
             model_factory: Callable[[], nn.Module] | None = None,
             threads: int | None = None) -> dict[str, Any]:
    """Apply `plan` one step at a time to `model` (the baseline, stage 0); returns metrics.json.

    The plan is checked against `model` before anything is written; `out` must be new, empty or
    a slimkit run directory, and is locked for the run (see slimkit.rundir). Stages of a model
    of the caller's own class are reloaded into `model_factory()` (a fresh instance; default:
    a copy of `model` as given), since `load` cannot build such a class by name; a factory a
    fresh process can import (`module:function`) also serves the memory probe and `--resume`.
    `threads`: intra-op threads of torch and ONNX Runtime while timing (see `finish`)."""
    out = Path(out)
    if not plan.steps or (model is not None and not (resume and (out / PROGRESS).is_file())):
        check_plan(model if model is not None else nn.Module(), plan)
    with open_run_dir(out, "run_plan"), write_errors(out):
        return _run_plan(model, task, plan, out, ctx=ctx, title=title,
                         baseline_name=baseline_name, baseline_seconds=baseline_seconds,
                         resume=resume, measure_memory=measure_memory, onnxruntime=onnxruntime,
                         on_stage=on_stage, factory=_factory(model, model_factory),
                         threads=threads)


def _factory(model: nn.Module | None,
             given: Callable[[], nn.Module] | None) -> Callable[[], nn.Module] | None:
    if given is not None or model is None or not needs_instance(model_spec(model)):
        return given
    pristine = copy.deepcopy(model)  # the caller's class: stages reload into copies of it
    return lambda: copy.deepcopy(pristine)


def _run_plan(model: nn.Module | None, task: Task, plan: Plan, out: Path, *, ctx: Context,
              title: str, baseline_name: str, baseline_seconds: float, resume: bool,
              measure_memory: bool, onnxruntime: bool | None,
              on_stage: Callable[[dict[str, Any]], None] | None,
              factory: Callable[[], nn.Module] | None, threads: int | None) -> dict[str, Any]:
    progress_file = out / PROGRESS
    key = {"plan": plan.to_dict(), "seed": ctx.seed, "task": getattr(task, "spec", task.name),
           "baseline": baseline_name, "title": title,
           "model_factory": importable_ref(factory) if factory is not None else None}
    done: list[dict[str, Any]] = []
    if resume and progress_file.is_file():
        try:
            saved = json.loads(progress_file.read_text())
            done, saved_key = saved["stages"], saved["key"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SlimkitError(f"--resume: {str(progress_file)!r} is unreadable") from None
        if saved_key != key:
            raise SlimkitError(f"--resume: {str(out)!r} holds a different run (plan, seed, task "
                               "or model differ); use another --out or drop --resume")
    if not done and model is None:
        raise SlimkitError(f"--resume: nothing to resume in {str(out)!r}")
    if done:
        ctx.teacher = reload(out / done[0]["artifact"], factory).model
        model = reload(out / done[-1]["artifact"], factory).model
        log.info("resuming after stage %s", done[-1]["name"])
    else:
        clear_previous_run(out)  # only what an earlier run here wrote itself
        stage = _evaluate_stage(model, task, baseline_name, [], baseline_seconds, {}, out, 0,
                                plan)
        done = [stage]
        write_json(progress_file, {"key": key, "stages": done})
        if on_stage:
            on_stage(stage)
    assert model is not None
    if ctx.teacher is None:
        ctx.teacher = copy.deepcopy(model).eval()
    for index in range(len(done), len(plan.steps) + 1):
        step = plan.steps[index - 1]
        start = time.perf_counter()
        record = compress_(model, Plan(steps=(step,)), ctx, first_step=index - 1)[0]
        used = {s["name"] for s in done}
        name = step.method if step.method not in used else f"{step.method}-{index}"
        stage = _evaluate_stage(model, task, name, [step.summary()], time.perf_counter() - start,
                                record.info, out, index, plan)
        done.append(stage)
        write_json(progress_file, {"key": key, "stages": done})
        if on_stage:
            on_stage(stage)
    return finish(out, task, plan, done, title=title, ctx=ctx, measure_memory=measure_memory,
                  onnxruntime=onnxruntime, model_factory=factory, threads=threads)


def _onnx_sessions(out: Path, models: dict[str, nn.Module], task: Task,
                   stages: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """Export every stage to ONNX and open an ONNX Runtime session on it (the deployed runtime).

    A stage that does not export is reported, not fatal: its torch numbers still stand.
    """
    from .export.onnx import check_parity, export_onnx
    from .export.runtime import OrtSession

    sessions: dict[str, Any] = {}
    example = task.example_inputs(min(64, max(task_batch_sizes(task))))
    for stage in stages:
        name = stage["name"]
        path = out / "onnx" / f"{Path(stage['artifact']).name}.onnx"
        try:
            export_onnx(models[name], task.example_inputs(8), path)
            parity = check_parity(models[name], path, example, min_cosine=0.999, atol=0.05)
        except Exception as exc:  # noqa: BLE001 - any exporter failure is reported per stage
            log.warning("stage %s does not export to ONNX: %s", name, exc)
            stage["onnxruntime"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        stage["onnxruntime"] = {"bytes": path.stat().st_size, "parity_cosine": parity.cosine,
                                "parity_max_abs_diff": parity.max_abs_diff}
        # Timed beside the other stages' sessions: no spinning (see OrtSession).
        sessions[ORT + name] = OrtSession(path, threads=threads, spin=False)
    return sessions


def _measure_memory(stage: dict[str, Any], out: Path, inputs: tuple,
                    factory: Callable[[], nn.Module] | None) -> None:
    """Run-time memory of the stage's artifact in a fresh process, beside its bytes on disk:
    `runtime_mb` is MiB above that process's baseline; `peak_memory_mb` its whole VmHWM."""
    ref = importable_ref(factory) if factory is not None else None
    if factory is not None and ref is None:
        log.warning("stage %s: run-time memory not measured: a fresh process cannot build the "
                    "model's class (pass a model_factory it can import, module:function)",
                    stage["name"])
        return
    memory = memory_fields(out / stage["artifact"], inputs, model_factory=ref)
    if memory is None:
        log.warning("stage %s: run-time memory could not be measured", stage["name"])
        return
    stage.update(memory)


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def finish(out: Path, task: Task, plan: Plan, stages: list[dict[str, Any]], *, title: str,
           ctx: Context, measure_memory: bool = True, onnxruntime: bool | None = None,
           model_factory: Callable[[], nn.Module] | None = None,
           threads: int | None = None) -> dict[str, Any]:
    """Reload every stage from its artifact, time them interleaved (torch, and ONNX Runtime when
    installed) beside a noise probe of the baseline per runtime on `threads` threads (default:
    available_cores()), check the final reload, write metrics.json and the report.

    What metrics.json adds to each stage's quality, params, bytes and memory:
    - metrics["threads"]: int, the intra-op threads of torch and ONNX Runtime while timing;
    - metrics["noise"]: {"torch": {batch: band}, "onnxruntime": {batch: band}} (a runtime
      that was not timed is absent), band = the relative half-width b of the noise probe
      (eval.cost.noise_band): ratios within [1/(1+b), 1+b] are noise (about 1 +- b);
    - stage["latency_ms"][batch] = {"median", "p90", "spread"} (ms, ms, relative: half the
      width of the middle 80% of calls over the median), the same inside
      stage["onnxruntime"]["latency_ms"] when that stage was timed in ONNX Runtime;
    - stage["speed"] = {"torch": {batch: {"vs_baseline": cmp, "vs_previous": cmp}},
      "onnxruntime": {...the same, when timed}} with cmp = {"ratio": float, "verdict":
      "faster" | "slower" | "within noise", "band": float}: ratio = reference / this stage,
      the median over rounds of the ratio of each round's fastest calls (>1: this stage is
      faster); band = the probe's band widened for calls shorter than the baseline's
      (eval.cost.pair_band); the baseline is 1.0 "within noise" against itself, and
      vs_previous is None when the previous stage was not timed in that runtime;
    - stage["regressions"] = [{"what": "bytes" | "latency", "runtime": "torch" |
      "onnxruntime" | None, "batch": str | None, "change": float, "reason": str | None}]
      against the previous stage (eval.regressions): "bytes" when the artifact grew at all
      (change = new / old bytes), "latency" per runtime and batch whose vs_previous verdict
      is "slower" (change = old ms / new ms, the vs_previous ratio); [] for the baseline.
    """
    models = {s["name"]: reload(out / s["artifact"], model_factory).model for s in stages}
    inputs = {b: task.example_inputs(b) for b in task_batch_sizes(task)}
    threads = available_cores() if threads is None else threads
    timed_models: dict[str, Any] = dict(models)
    if onnxruntime if onnxruntime is not None else _has_onnxruntime():
        timed_models.update(_onnx_sessions(out, models, task, stages, threads))
    base = stages[0]["name"]
    probes = {"torch": base, "onnxruntime": ORT + base}
    probes = {runtime: p for runtime, p in probes.items() if p in timed_models}
    timed = latency_interleaved(timed_models, inputs, probes=list(probes.values()),
                                threads=threads, progress=ctx.progress)
    for index, stage in enumerate(stages):
        name, previous = stage["name"], stages[max(index - 1, 0)]
        stage.update(latency_fields(timed, name))
        if ORT + name in timed.summary:
            stage["onnxruntime"]["latency_ms"] = latency_fields(timed, ORT + name)["latency_ms"]
        stage["speed"] = {}
        for runtime, probe in probes.items():
            prefix = ORT if runtime == "onnxruntime" else ""
            if prefix + name not in timed.summary:
                continue
            before = prefix + previous["name"]
            stage["speed"][runtime] = speed_fields(
                timed, prefix + name, baseline=probe, probe=probe,
                previous=before if before in timed.summary else None)
        method = plan.steps[index - 1].method if index else None
        stage["regressions"] = stage_regressions(
            previous, stage, method, before=out / previous["artifact"],
            after=out / stage["artifact"], model=models[name]) if index else []
        for regression in stage["regressions"]:
            log.warning("stage %s: %s", name, describe_regression(regression))
        if measure_memory:
            _measure_memory(stage, out, inputs[max(inputs)], model_factory)
    final = stages[-1]
    reloaded = task.evaluate(models[final["name"]], "test")
    copy_artifact(out / final["artifact"], out / FINAL)
    metrics = {
        "title": title, "task": describe(task), "primary_metric": task.primary_metric,
        "split": "test",  # every stage's quality; the search measures on "valid"
        "higher_is_better": task.higher_is_better, "baseline": base,
        "plan": plan.to_dict(), "stages": stages, "final_artifact": FINAL,
        "reload_check": {k: reloaded[k] == final["metrics"][k] for k in reloaded},
        "threads": timed.threads,
        "noise": {runtime: timed.noise[probe] for runtime, probe in probes.items()},
        # Latency, memory and int8 numerics depend on the CPU that measured them.
        "machine": cpu_features().describe(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out / "metrics.json", metrics)
    from .report import write_report  # matplotlib is imported only when a report is written

    write_report(out, metrics)
    return metrics
