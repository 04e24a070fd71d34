"""Tasks by name: `register_task(name, factory)`, and `make_task` for a registered name or a
caller's own `package.module:factory`. A run directory or artifact records the name and options
(`spec`) so `slimkit eval` can rebuild the same task; a name read back from an artifact is only
looked up in the registry, never imported."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from typing import Any

from ..core.errors import SlimkitError, one_line
from ..core.refs import import_ref, is_ref
from ..core.task import Task, missing_members

TaskFactory = Callable[..., Task]
_TASKS: dict[str, TaskFactory | str] = {}


def register_task(name: str, factory: TaskFactory | str) -> None:
    """Make `factory(**options)` reachable as `make_task(name, **options)` and `--task name`.

    `factory` is a callable returning a task (see slimkit.Task), or its `package.module:name`
    reference, imported when the task is first built (so registering costs no import)."""
    if not isinstance(name, str) or not name or ":" in name or name != name.strip():
        raise SlimkitError(f"register_task: name must be a non-empty string without ':', "
                           f"got {name!r}")
    if not (callable(factory) or (isinstance(factory, str) and is_ref(factory))):
        raise SlimkitError(f"register_task: factory for {name!r} must be callable or "
                           f"'package.module:name', got {factory!r}")
    _TASKS[name] = factory


def task_names() -> list[str]:
    return sorted(_TASKS)


def make_task(name: str, **options: Any) -> Task:
    """Build a task by registered name or `package.module:factory`; the result carries `spec`
    (name and options) for `task_from_spec`. Unknown options are refused naming the valid
    ones."""
    factory = task_factory(name)
    _check_options(name, factory, options)
    options = _plain_options(options)
    try:
        task = factory(**options)
    except (TypeError, ValueError) as exc:  # a bad option value, as the factory words it
        raise SlimkitError(f"--task-opt: {name}: {one_line(exc)}") from None
    missing = missing_members(task)
    if missing:
        raise SlimkitError(f"--task: {name!r} built a {type(task).__name__} without "
                           f"{', '.join(missing)} (see slimkit.Task)")
    try:
        task.spec = {"name": name, "kwargs": options}  # type: ignore[attr-defined]
    except AttributeError:
        pass  # recorded: a task without `spec` is not rebuilt by `slimkit eval` without --task
    return task


def task_factory(name: str) -> Callable[..., Any]:
    """The callable behind a registered name or a `package.module:factory` reference."""
    if name in _TASKS or not is_ref(name):
        if name not in _TASKS:
            raise SlimkitError(f"--task: expected one of {', '.join(task_names())} or "
                               f"package.module:factory, got {name!r}")
        found = _TASKS[name]
        factory = import_ref(found, field="--task") if isinstance(found, str) else found
    else:
        factory = import_ref(name, field="--task")
    if not callable(factory):
        raise SlimkitError(f"--task: {name!r} is not callable")
    return factory  # type: ignore[no-any-return]


def task_options(factory: Callable[..., Any]) -> list[str] | None:
    """The keyword options `factory` takes, or None when it takes any (**kwargs)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _check_options(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    valid = task_options(factory)
    unknown = sorted(set(options) - set(valid)) if valid is not None else []
    if unknown:
        shown = ", ".join(valid) if valid else "none"
        raise SlimkitError(f"--task-opt: {name} has no option {unknown[0]!r}; valid options: "
                           f"{shown}")


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options as JSON data (paths as strings): a run directory and an artifact record them."""
    plain = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
    for key, value in plain.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise SlimkitError(f"--task-opt: {key}: expected a number, string, list or mapping, "
                               f"got {type(value).__name__} {value!r}") from None
    return plain


def task_from_spec(spec: Any) -> Task:
    """The task an artifact or run directory records, for a registered name only: a task from
    the caller's own code must be named again by the caller (`--task package.module:factory`)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("kwargs", {}), dict):
        raise SlimkitError(f"task: manifest has no usable task spec, got {spec!r}; pass --task")
    name = str(spec.get("name"))
    if is_ref(name):
        raise SlimkitError(f"task: the artifact was measured on {name!r}, your code; pass "
                           f"--task {name} (and its --task-opt) to allow importing it")
    return make_task(name, **spec.get("kwargs", {}))


# Built-in tasks by reference: their modules (pandas, transformers) load only when one is built.
for _name, _factory in (("movielens", "slimkit.tasks.ctr.task:CTRTask.movielens"),
                        ("synthetic", "slimkit.tasks.ctr.task:CTRTask.synthetic"),
                        ("tabular", "slimkit.tasks.ctr.task:CTRTask.from_table"),
                        ("image-folder", "slimkit.tasks.vision.task:VisionTask.image_folder"),
                        ("fashion-mnist", "slimkit.tasks.vision.task:VisionTask.fashion_mnist"),
                        ("text-encoder", "slimkit.tasks.text.task:TextEncoderTask"),
                        ("two-tower", "slimkit.tasks.retrieval.task:TwoTowerTask.movielens"),
                        ("causal-lm", "slimkit.tasks.lm.task:CausalLMTask")):
    register_task(_name, _factory)
