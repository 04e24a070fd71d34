"""`slimkit methods` (what each registered method takes, and its paper) and `slimkit check PLAN`
(a plan validated, and checked against a task's model, without running it)."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

from rich.table import Table

from .. import Plan, SlimkitError
from ..core import check_plan
from ..core.describe import describe_method, describe_methods
from .inputs import InputModel, add_model_args, add_task_args, task_from_args
from .progress import emit_json, results


def add_methods_parser(add: Any, name: str) -> Any:
    about = "list the registered methods, or one method's fields with types, defaults and ranges"
    parser = add(name, help=about, description=about[0].upper() + about[1:] + ".")
    parser.add_argument("method", nargs="?", help="a method name, e.g. prune.magnitude "
                        "(default: all methods, one line each)")
    parser.set_defaults(func=methods)
    return parser


def add_check_parser(add: Any, name: str) -> Any:
    about = ("validate a plan without running it: every field's type, choice and range; with "
             "--task (and --model), also against the task's model: targets that match no "
             "module, training after an int8 step")
    parser = add(name, help=about, description=about[0].upper() + about[1:] + ".")
    parser.add_argument("plan", help="plan file (.yaml or .json)")
    add_task_args(parser, default=" (default: none; the plan alone is checked)")
    add_model_args(parser, "default with --task: the task's own architecture; check builds it "
                   "and never trains it")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.set_defaults(func=check)
    return parser


def methods(args: argparse.Namespace) -> int:
    if args.method:
        info = describe_method(args.method)
        if args.json:
            emit_json(dataclasses.asdict(info))
        table = Table(title=f"{info.name} ({info.config}): {info.summary}", title_justify="left")
        for col in ("field", "type", "default", "allowed"):
            table.add_column(col)
        for f in info.fields:
            table.add_row(f.name, f.type, repr(f.default), f.allowed or "-")
        results.print(table)
        return 0
    infos = describe_methods()
    if args.json:
        emit_json([dataclasses.asdict(i) for i in infos])
    table = Table(title="methods (slimkit methods NAME for the fields)", title_justify="left")
    table.add_column("method")
    table.add_column("what it does")
    for info in infos:
        first = re.split(r"(?<=[a-z0-9)])\. ", info.summary, maxsplit=1)[0].rstrip(".")
        table.add_row(info.name, first + ".")
    results.print(table)
    return 0


def check(args: argparse.Namespace) -> int:
    if not Path(args.plan).is_file():
        raise SlimkitError(f"plan: no such file {args.plan!r}")
    plan = Plan.load(args.plan)  # types, choices and ranges of every field
    against = None
    if not (args.task or args.model) and (args.arch or args.weights or args.no_train):
        raise SlimkitError("--arch/--weights/--no-train: only with --task or --model (without "
                           "them, only the plan is checked)")
    if args.task or args.model:
        task = task_from_args(args)
        source = InputModel(args, task)
        model = source.given() or source.untrained()
        check_plan(model, plan, field="--model" if args.model else "model")
        against = f"{type(model).__name__} on {task.name}"
    else:
        check_plan(None, plan)
    steps = [step.summary() for step in plan.steps]
    if args.json:
        emit_json({"plan": args.plan, "ok": True, "steps": steps, "checked_against": against})
    results.print(f"plan OK: {len(steps)} step{'s' * (len(steps) != 1)}"
                  + (f", checked against {against}" if against else
                     " (pass --task to check it against a model too)"))
    for i, text in enumerate(steps):
        results.print(f"  steps[{i}] {text}")
    return 0
