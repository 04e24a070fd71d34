"""`slimkit auto`: search for the best plan within a quality budget, print the trials as they
finish, the Pareto front, and the answer measured again on the test split."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from .. import Context, SlimkitError
from ..export import reload
from ..report.speed import claim_text
from ..report.units import UNIT_NOTE, format_bytes
from ..rundir import check_out, open_run_dir, write_errors
from ..tasks.defaults import search_space
from .inputs import (
    InputModel,
    add_model_args,
    add_task_args,
    add_threads_arg,
    task_from_args,
    threads_from,
)
from .progress import console, emit_json, results


def add_parser(add: Any) -> Any:
    about = ("search plans until the model meets its target: the smallest (or fastest) plan "
             "within a quality budget, plus the Pareto front; resumable, several workers may "
             "share one study")
    auto = add("auto", help=about, description=about[0].upper() + about[1:] + ".")
    add_task_args(auto)
    add_model_args(auto, "default: OUT/baseline if there, else train the task's teacher")
    auto.add_argument("--max-drop", type=float, required=True,
                      help="quality budget: largest allowed drop of the task's primary metric, "
                      "in its own units (e.g. 0.002 for AUC, 0.5 for accuracy in %%)")
    auto.add_argument("--objective", default="size", choices=["size", "latency"],
                      help="what the best plan minimises within the budget (default: size)")
    auto.add_argument("--trials", type=int, default=30, help="finished trials the study should "
                      "hold (counted across runs and workers; default 30)")
    auto.add_argument("--storage", help="Optuna RDB URL (default: sqlite:///OUT/study.db); "
                      "e.g. postgresql://user@host/db for workers on several machines")
    auto.add_argument("--study", default="slimkit", help="study name in the storage")
    auto.add_argument("--space", help="search space YAML (default: the task's own; for the CTR "
                      "tasks, recipes/search-ctr.yaml's content)")
    auto.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2"],
                      help="tpe: best plan under the budget; nsga2: the whole Pareto front")
    auto.add_argument("--out", default="runs/auto", help="directory for artifacts, search.json "
                      "and report.html (default: runs/auto)")
    auto.add_argument("--seed", type=int, default=0, help="seed of the teacher, the sampler and "
                      "every trial")
    add_threads_arg(auto)
    auto.add_argument("--latency-batch", type=int, default=512,
                      help="batch size the latency objective is timed at (default: 512)")
    auto.add_argument("--no-sensitivity", action="store_true",
                      help="do not narrow the space by per-layer sensitivity")
    auto.add_argument("--no-early-stop", action="store_true",
                      help="run every trial to the end, even when it cannot fit the budget")
    auto.add_argument("--keep", default="all", choices=["all", "pareto"],
                      help="trial artifacts to keep at the end (default: all)")
    auto.set_defaults(func=run_auto)
    return auto


def _space(args: argparse.Namespace, task: Any) -> Any:
    from ..search import SearchSpace

    if args.space:
        if not Path(args.space).is_file():
            raise SlimkitError(f"--space: no such file {args.space!r}")
        return SearchSpace.load(args.space)
    return SearchSpace.from_dict(search_space(task))


def _model(args: argparse.Namespace, source: InputModel, task: Any) -> torch.nn.Module:
    saved = Path(args.out) / "baseline"
    if (saved / "manifest.json").is_file():  # a resumed run or a second worker: same teacher
        console.print(f"model: {saved} (the teacher of this search)")
        return reload(saved, source.reload_factory(saved)).model
    console.print(f"training a teacher on {task.name} ...")
    return source.teacher(Context(task=task, seed=args.seed))[0]


def _trial_line(row: dict[str, Any], base: dict[str, Any], metric: str) -> None:
    if row["bytes"] is None:
        console.print(f"trial {row['number']:>3} {row['state']:<9} {row['note']}")
        return
    mark = "[green]fits[/]" if row["feasible"] else "[red]over[/]"
    console.print(f"trial {row['number']:>3} {mark} {metric} drop {row['drop']:+.4f}  "
                  f"{format_bytes(row['bytes']):>10} ({base['bytes'] / row['bytes']:5.1f}x)  "
                  f"{row['latency_ms']:6.3f} ms  {row['steps']}")


def _front_table(result: Any, metric: str) -> Table:
    base = result.baseline
    table = Table(title="Pareto front (quality drop, bytes, latency) of the finished trials")
    for col in ("trial", f"{metric} drop", "size", "x smaller", "ms", "speed", "fits", "plan"):
        table.add_column(col, justify="left" if col == "plan" else "right")
    repeats: dict[str, list[int]] = {}
    for r in sorted(result.pareto, key=lambda r: (r["bytes"], not r["best"], r["number"])):
        repeats.setdefault(r["steps"], []).append(r["number"])
        if len(repeats[r["steps"]]) > 1:  # the same plan proposed again: shown once
            continue
        table.add_row(f"{r['number']}{' *' if r['best'] else ''}", f"{r['drop']:+.4f}",
                      format_bytes(r["bytes"]), f"{base['bytes'] / r['bytes']:.1f}",
                      f"{r['latency_ms']:.3f}", _speed_cell(r),
                      "yes" if r["feasible"] else "no", r["steps"])
    again = {plan: n[1:] for plan, n in repeats.items() if len(n) > 1}
    notes = ["* best", "speed: the verdict of the trial's timing interleaved with the baseline "
             "and its noise probe (\"-\": not measured so)", UNIT_NOTE]
    if again:
        notes.append("same plan again in trials " + "; ".join(
            f"{n[0]}: {', '.join(map(str, more))}" for n, more in
            ((repeats[p], m) for p, m in again.items())))
    table.caption = ". ".join(notes)
    return table


def run_auto(args: argparse.Namespace) -> int:
    from ..report.search_html import write_search_report
    from ..search import auto

    space = _space(args, None) if args.space else None  # a bad file, before any data is read
    threads = threads_from(args)
    if not args.max_drop >= 0:
        raise SlimkitError(f"--max-drop: expected a number >= 0, got {args.max_drop}")
    if args.trials < 1:
        raise SlimkitError(f"--trials: expected an integer >= 1, got {args.trials}")
    task = task_from_args(args)
    space = space or _space(args, task)  # before any model is touched
    source = InputModel(args, task)
    out = Path(args.out)
    check_out(out, "auto")
    given = source.given()  # a bad --model is refused before --out is created or marked
    if source.path is not None and source.path.is_dir():
        source.factory = source.reload_factory(source.path)
    with open_run_dir(out, "auto"), write_errors(out):  # locked before the teacher trains
        model = given if given is not None else _model(args, source, task)
        metric = task.primary_metric
        result = auto(model, task, space, max_drop=args.max_drop, objective=args.objective,
                      trials=args.trials, out=out, storage=args.storage,
                      study_name=args.study, seed=args.seed, latency_batch=args.latency_batch,
                      sampler=args.sampler, sensitivity=not args.no_sensitivity,
                      early_stop=not args.no_early_stop, keep=args.keep,
                      on_trial=lambda row, data: _trial_line(row, data["baseline"], metric),
                      write_page=write_search_report, threads=threads)
        return _summary(result, task, out, metric, model, source.factory, args.json)


def _summary(result: Any, task: Any, out: Path, metric: str, model: torch.nn.Module,
             factory: Any, as_json: bool = False) -> int:
    from ..eval.quality import quality_drop

    counts: dict[str, int] = {}
    for r in result.trials:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    results.print("trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    if result.pareto:
        results.print(_front_table(result, metric))
    best, base = result.best, result.baseline
    answer: dict[str, Any] = {"out": str(out), "search_file": str(out / "search.json"),
                              "primary_metric": metric, "split": "valid", "trials": counts,
                              "max_drop": result.data["max_drop"], "best": best,
                              "pareto": result.pareto, "baseline": base}
    if best is None:
        results.print(f"no trial fits the budget ({metric} drop <= "
                      f"{result.data['max_drop']}); see {out / 'report.html'}")
        if as_json:
            emit_json(answer)
        return 1
    where = result.data["best_position"]
    artifact = out / best["artifact"]
    local = (artifact / "manifest.json").is_file()  # else another worker ran it
    test = ""
    if local:
        drop = quality_drop(task, task.evaluate(model, "test"),
                            task.evaluate(reload(artifact, factory).model, "test"))
        test = f" ({drop:+.4f} on test)"
        answer["test_drop"] = drop
    results.print(
        f"best within the budget: trial {best['number']}, {base['bytes'] / best['bytes']:.1f}x "
        f"smaller ({format_bytes(best['bytes'])}), {_speed(best)} at batch "
        f"{result.data['latency_batch']}, {metric} drop {best['drop']:+.4f} on "
        f"valid{test}; rank {best['rank']} (1 = on the Pareto front), position "
        f"{where['position']} of {where['front_size']} front points by "
        f"{'size' if where['by'] == 'bytes' else 'latency'}")
    results.print(f"plan: {best['steps']}")
    where_art = artifact if local else f"{best['artifact']} in the --out of worker {best['worker']}"
    results.print(f"artifact: {where_art}   report: {out / 'report.html'}   "
                  f"trials: {out / 'search.json'}")
    if as_json:
        emit_json(answer)
    return 0


def _claim(row: dict[str, Any]) -> dict[str, Any] | None:
    verdict, ratio = row.get("latency_verdict"), row.get("latency_ratio")
    return None if verdict is None else {"verdict": verdict, "ratio": ratio}


def _speed_cell(row: dict[str, Any]) -> str:
    """The speed only where an interleaved re-measurement against the baseline supports it."""
    return claim_text(_claim(row)) or "-"


def _speed(row: dict[str, Any]) -> str:
    """The trial's speed against the baseline, as its interleaved measurement judged it."""
    text = claim_text(_claim(row))
    return text or "speed not measured against the baseline"
