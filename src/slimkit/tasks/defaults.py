"""What the CLI asks of a task beyond the protocol, with what stands in when a task does not say:
the architectures it can train, how a teacher is trained, the default plan and search space."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..core.context import Context
from ..core.errors import SlimkitError
from ..core.module_types import needs_instance, type_name
from ..core.task import Task
from ..train.teacher import TeacherRecipe, fit_best_on_valid, train_best_on_valid


def model_kinds(task: Task) -> tuple[str, ...]:
    """The architectures `task.build_model` accepts; the first is the default."""
    return tuple(getattr(task, "model_kinds", ()))


def check_kind(task: Task, kind: str | None) -> str:
    """`kind`, or the task's first architecture when None; SlimkitError when the task builds
    no model or not that one."""
    kinds = model_kinds(task)
    if not hasattr(task, "build_model") or not kinds:
        raise SlimkitError(f"--model: task {task.name!r} builds no model of its own; pass "
                           "--model (an artifact, a checkpoint or package.module:factory)")
    if kind is not None and kind not in kinds:
        raise SlimkitError(f"--arch: expected one of {', '.join(kinds)} for {task.name}, got "
                           f"{kind!r}")
    return kind or kinds[0]


def teacher_recipe(task: Task, kind: str | None) -> TeacherRecipe | None:
    """The task's recipe for `kind` (None: pretrained, used as built); TeacherRecipe's defaults
    for a task that has no `teacher_recipe`."""
    if hasattr(task, "teacher_recipe"):
        recipe: TeacherRecipe | None = task.teacher_recipe(kind)
        return recipe
    return TeacherRecipe()


def train_baseline(task: Task, ctx: Context, *, kind: str | None = None,
                   model: nn.Module | None = None) -> nn.Module:
    """The model a run compresses when none is given: `model` (a caller's architecture) or the
    task's `kind`, trained with the task's teacher recipe and the best valid epoch kept; a
    pretrained kind (recipe None) as built."""
    if model is None:
        kind = check_kind(task, kind)
    recipe = teacher_recipe(task, kind)
    if recipe is None:
        return (model if model is not None else task.build_model(kind)).eval()  # type: ignore[attr-defined]
    if model is None:
        return train_best_on_valid(task, ctx, str(kind), recipe)
    return fit_best_on_valid(model, task, ctx, recipe, name=type(model).__name__)


def default_plan(task: Task) -> str:
    """YAML of the plan `slimkit run` applies when no plan file is given."""
    if not hasattr(task, "default_plan"):
        raise SlimkitError(f"plan: task {task.name!r} has no default plan; pass a plan file")
    return str(task.default_plan())


def search_space(task: Task) -> dict[str, Any]:
    """The space `slimkit auto` searches when no --space is given, as a dict."""
    import yaml

    if not hasattr(task, "search_space"):
        raise SlimkitError(f"--space: task {task.name!r} has no default search space; pass "
                           "--space FILE.yaml")
    return copy.deepcopy(yaml.safe_load(task.search_space()))


def task_model_for(task: Task, spec: dict[str, Any]) -> nn.Module | None:
    """A fresh instance of the class an artifact's model spec names, built by the task the
    caller named, when the artifact loads into an instance (core.module_types.needs_instance);
    None when it loads by name or the task builds another class. Loading into it needs no
    registration of the caller's class."""
    if not needs_instance(spec):
        return None
    for kind in model_kinds(task):
        model: nn.Module = task.build_model(kind)  # type: ignore[attr-defined]
        if type_name(type(model)) == spec.get("builder"):
            return model
    return None
