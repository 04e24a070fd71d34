"""The commands behind `slimkit demo|run|eval|gguf|report`, each calling the public API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from .. import Context, Plan, SlimkitError, load, make_task, run_plan
from ..core import check_plan
from ..core.refs import import_ref
from ..export.artifact import read_manifest
from ..report.speed import claim_of, claim_text, latency_of, regression_text, regressions_of
from ..report.units import UNIT_NOTE, format_bytes
from ..rundir import check_out, open_run_dir, write_errors
from ..tasks.defaults import default_plan, task_model_for
from ..tasks.registry import task_from_spec
from .inputs import InputModel, task_from_args, threads_from
from .progress import console, emit_json, results, rich_progress


def _stage_line(stage: dict[str, Any]) -> None:
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in stage["metrics"].items())
    console.print(f"[bold]{stage['name']:<24}[/] {metrics}  {format_bytes(stage['bytes']):>10}")


def _summary_table(metrics: dict[str, Any]) -> Table:
    """One row a stage: quality on test, size, latency per runtime at the smallest and largest
    batch with the noise probe's verdict against the baseline, memory, and a mark where the stage
    regressed (the reasons follow the table)."""
    stages = metrics["stages"]
    base = stages[0]
    primary = metrics["primary_metric"]
    batches = sorted(base["latency_ms"], key=int)
    small, large = batches[0], batches[-1]
    table = Table(title=metrics["title"], caption=UNIT_NOTE + " Speed: the noise probe's "
                  f"verdict at batch {large} against the first stage.")
    columns = ["stage", f"test {primary}", "Δ", "size", "x smaller"]
    for runtime in ("torch", "ORT"):
        columns += [f"{runtime} ms @{small} / @{large}", f"{runtime} speed"]
    columns += ["MiB model / process", "!"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("stage", "!") else "right",
                         no_wrap=col == "stage")
    for s in stages:
        memory = s.get("runtime_mb") or {}
        own, resident = memory.get("model"), memory.get("resident")
        cells = [s["name"], f"{s['metrics'][primary]:.4f}",
                 f"{s['metrics'][primary] - base['metrics'][primary]:+.4f}",
                 format_bytes(s["bytes"]), f"{base['bytes'] / s['bytes']:.1f}"]
        for runtime in ("torch", "onnxruntime"):
            lat = latency_of(s, runtime)
            cells += [f"{_ms(lat.get(small))} / {_ms(lat.get(large))}",
                      "" if s is base else claim_text(claim_of(s, runtime, large)) or "n/a"]
        cells += [f"{own:.2f} / {resident:.1f}" if own is not None and resident is not None
                  else "n/a", "!" if regressions_of(s) else ""]
        table.add_row(*cells)
    return table


def _ms(latency: dict[str, float | None] | None) -> str:
    median = (latency or {}).get("median")
    return f"{median:.3f}" if median is not None else "n/a"


def _headline(metrics: dict[str, Any]) -> str:
    base, final = metrics["stages"][0], metrics["stages"][-1]
    primary = metrics["primary_metric"]
    large = max(base["latency_ms"], key=int)
    speed = []
    for runtime, label in (("torch", "torch"), ("onnxruntime", "ONNX Runtime")):
        claim = claim_text(claim_of(final, runtime, large))
        if claim:
            speed.append(f"{label} {claim} at batch {large}")
    delta = final["metrics"][primary] - base["metrics"][primary]
    return (f"final vs {base['name']}: {base['bytes'] / final['bytes']:.1f}x smaller artifact, "
            + (", ".join(speed) or "no speed claim (no noise probe)")
            + f", test {primary} {delta:+.4f}; reloaded artifact reproduces its metrics: "
            f"{all(metrics['reload_check'].values())}")


def _finish(metrics: dict[str, Any], out: Path, as_json: bool = False) -> int:
    results.print(_summary_table(metrics))
    for stage in metrics["stages"]:
        for item in regressions_of(stage):
            results.print(f"! {stage['name']}: {regression_text(item)}")
    results.print(_headline(metrics))
    results.print(f"run directory: {out}  (report.html, report.md, metrics.json, "
                  f"{metrics['final_artifact']}/)")
    if as_json:
        emit_json(run_result(metrics, out))
    return 0


def run_result(metrics: dict[str, Any], out: Path) -> dict[str, Any]:
    """What `run --json` prints: the headline and where everything is (metrics.json has all)."""
    base, final = metrics["stages"][0], metrics["stages"][-1]
    primary = metrics["primary_metric"]

    def stage(s: dict[str, Any]) -> dict[str, Any]:
        return {k: s.get(k) for k in ("name", "metrics", "bytes", "latency_ms", "speed",
                                      "regressions", "runtime_mb")}

    return {"run_dir": str(out), "artifact": str(out / metrics["final_artifact"]),
            "metrics_file": str(out / "metrics.json"), "primary_metric": primary,
            "split": "test", "x_smaller": round(base["bytes"] / final["bytes"], 3),
            "metric_change": final["metrics"][primary] - base["metrics"][primary],
            "reload_check": all(metrics["reload_check"].values()),
            "baseline": stage(base), "final": stage(final),
            "stages": [s["name"] for s in metrics["stages"]]}


def demo(args: argparse.Namespace) -> int:
    threads = threads_from(args)
    task = make_task("movielens")
    plan = Plan.from_yaml(default_plan(task))
    source = InputModel(argparse.Namespace(model=None, arch=args.model, weights=None,
                                           no_train=False, seed=args.seed, task="movielens"),
                        task)
    ctx = Context(task=task, seed=args.seed, progress=rich_progress)
    out = Path(args.out)
    with open_run_dir(out, "demo"), write_errors(out):  # locked before the teacher trains
        model, seconds = (None, 0.0) if args.resume and (out / "progress.json").is_file() \
            else source.teacher(ctx)
        metrics = run_plan(model, task, plan, out, ctx=ctx, resume=args.resume,
                           baseline_seconds=seconds, on_stage=_stage_line,
                           title=f"slimkit demo: {args.model} on MovieLens-100k CTR",
                           threads=threads)
    return _finish(metrics, out, args.json)


def run(args: argparse.Namespace) -> int:
    threads = threads_from(args)
    plan = Plan.load(args.plan) if args.plan else None  # checked before any data is read
    if plan is not None and not plan.steps:
        check_plan(torch.nn.Module(), plan)  # "plan: no steps", before any data is read
    out = Path(args.out)
    if args.model and Path(args.model).exists():
        resolved, out_dir = Path(args.model).resolve(), out.resolve()
        if resolved == out_dir or out_dir in resolved.parents:
            # The run rewrites --out; an input inside it would be overwritten or deleted.
            raise SlimkitError(f"--model: {args.model!r} lies inside --out {args.out!r}; "
                               "choose another --out")
    task = task_from_args(args)
    if plan is None:
        plan = Plan.from_yaml(default_plan(task))
    source = InputModel(args, task)
    check_out(out, "run")
    ctx = Context(task=task, seed=args.seed, progress=rich_progress)
    resuming = args.resume and (out / "progress.json").is_file()
    model = None if resuming else source.given()
    if not resuming:  # the whole plan, before a teacher trains: an untrained one has its modules
        check_plan(model if model is not None else source.untrained(), plan,
                   field="--model" if args.model else "model")
    factory = _reload_factory(source, out, resuming)
    with open_run_dir(out, "run"), write_errors(out):
        seconds = 0.0
        if model is None and not resuming:
            model, seconds = source.teacher(ctx)
        name = Path(args.plan).name if args.plan else "the task's default plan"
        metrics = run_plan(model, task, plan, out, ctx=ctx, resume=args.resume,
                           baseline_name="input" if source.path or not source.trains
                           else "teacher", baseline_seconds=seconds, on_stage=_stage_line,
                           title=f"slimkit run: {name} on {task.name}",
                           model_factory=factory, threads=threads)
    return _finish(metrics, out, args.json)


def _reload_factory(source: InputModel, out: Path, resuming: bool) -> Any:
    """What the run's stages reload into (see InputModel.reload_factory): the input artifact's
    model, or when resuming, the model of the run's first stage."""
    if source.path is not None and source.path.is_dir():
        return source.reload_factory(source.path)
    if resuming and source.factory is None:
        first = json.loads((out / "progress.json").read_text())["stages"][0]["artifact"]
        return source.reload_factory(out / first)
    return source.factory


def evaluate(args: argparse.Namespace) -> int:
    manifest = read_manifest(Path(args.artifact))
    if not args.task and (args.task_opt or args.task_config):
        raise SlimkitError("--task-opt/--task-config: only with --task (without it, the task "
                           "and options the artifact records are used)")
    spec = manifest.get("task_spec")
    task = task_from_args(args, spec if isinstance(spec, dict) else None) if args.task \
        else task_from_spec(spec)
    artifact = load_for_eval(Path(args.artifact), manifest, task, args.model)
    measured = task.evaluate(artifact.model, args.split)
    recorded = artifact.manifest.get("metrics", {}).get(args.split, {})
    table = Table(title=f"{args.artifact} on {task.name} ({args.split})")
    for col in ("metric", "measured", "recorded", "|diff|"):
        table.add_column(col, justify="right")
    worst = 0.0
    for key, value in measured.items():
        rec = recorded.get(key)
        diff = abs(value - rec) if rec is not None else None
        worst = max(worst, diff or 0.0)
        table.add_row(key, f"{value:.6f}", "n/a" if rec is None else f"{rec:.6f}",
                      "n/a" if diff is None else f"{diff:.1e}")
    results.print(table)
    complete = bool(recorded) and set(recorded) == set(measured)
    if args.json:
        emit_json({"artifact": args.artifact, "task": task.name, "split": args.split,
                   "measured": measured, "recorded": recorded, "max_abs_diff": worst,
                   "reproduced": complete and worst <= 1e-6})
    if not complete:
        results.print(f"no complete {args.split} metrics were recorded in this artifact")
        return 1
    return 0 if worst <= 1e-6 else 1


def load_for_eval(path: Path, manifest: dict[str, Any], task: Any, model_ref: str | None) -> Any:
    """The artifact's model: into `--model package.module:factory`'s instance when given, into
    the task's own model when the artifact names the class the task builds, else by name."""
    if model_ref:
        factory = import_ref(model_ref, field="--model")
        return load(path, model=factory())
    skeleton = task_model_for(task, manifest["model"])
    return load(path, model=skeleton) if skeleton is not None else load(path)


def gguf(args: argparse.Namespace) -> int:
    """Write a causal-LM artifact as GGUF (export/lm_gguf.py) for llama.cpp."""
    from ..export.lm_gguf import export_gguf
    from ..models.causal_lm import smollm2_gguf

    manifest = read_manifest(Path(args.artifact))
    spec = manifest.get("task_spec")
    task = task_from_spec(spec)
    source = args.source
    if source is None:
        model_path = getattr(task, "model_path", None)
        if model_path is None and task.name == "causal-lm":
            source = str(smollm2_gguf())
        elif model_path is not None and str(model_path).endswith(".gguf"):
            source = str(model_path)
        else:
            raise SlimkitError(f"--source: the artifact's model ({model_path}) did not come "
                               "from a .gguf file; give one whose tokenizer it shares")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SlimkitError(f"out: {str(out)!r} exists (--force to replace it)")
    artifact = load_for_eval(Path(args.artifact), manifest, task, None)
    result = export_gguf(artifact.model, out, source=source)
    counts: dict[str, int] = {}
    for kind in result.types.values():
        counts[kind] = counts.get(kind, 0) + 1
    if args.json:
        emit_json({"gguf": str(out), "bytes": out.stat().st_size, "types": counts,
                   "fallbacks": result.fallbacks})
    results.print(f"{out}: {format_bytes(out.stat().st_size)}, tensors {counts}"
                  + (f", as F32: {', '.join(result.fallbacks)}" if result.fallbacks else ""))
    return 0


def report(args: argparse.Namespace) -> int:
    from ..report import write_report

    run_dir = Path(args.run_dir)
    file = run_dir / "metrics.json"
    if not file.is_file() and (run_dir / "search.json").is_file():  # a `slimkit auto` directory
        from ..report.search_html import write_search_report

        try:
            data = json.loads((run_dir / "search.json").read_text())
        except json.JSONDecodeError:
            raise SlimkitError(f"run_dir: {str(run_dir / 'search.json')!r} is not valid "
                               "JSON") from None
        results.print(f"wrote {write_search_report(run_dir, data)}")
        return 0
    if not file.is_file():
        raise SlimkitError(f"run_dir: no metrics.json in {str(run_dir)!r}")
    try:
        metrics = json.loads(file.read_text())
    except json.JSONDecodeError:
        raise SlimkitError(f"run_dir: {str(file)!r} is not valid JSON") from None
    paths = write_report(run_dir, metrics)
    results.print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
