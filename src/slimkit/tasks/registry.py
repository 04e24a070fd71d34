"""Tasks by name, so a run directory or artifact can say which data it was measured on and
`slimkit eval` can rebuild the same task later."""

from __future__ import annotations

from typing import Any

from ..core.errors import SlimkitError
from ..core.task import Task

TASK_NAMES = ("movielens", "synthetic", "fashion-mnist", "text-encoder")


def make_task(name: str, **kwargs: Any) -> Task:
    """Build a task by name; the result carries `spec` for `task_from_spec`."""
    from .ctr import CTRTask  # pandas is needed only when a task is built

    if name == "movielens":
        task: Any = CTRTask.movielens(**kwargs)
    elif name == "synthetic":
        task = CTRTask.synthetic(**kwargs)
    elif name == "fashion-mnist":
        from .vision import VisionTask

        task = VisionTask.fashion_mnist(**kwargs)
    elif name == "text-encoder":
        from .text import TextEncoderTask

        task = TextEncoderTask(**kwargs)
    else:
        raise SlimkitError(f"task: expected one of {', '.join(TASK_NAMES)}, got {name!r}")
    task.spec = {"name": name, "kwargs": kwargs}
    return task


def task_from_spec(spec: Any) -> Task:
    if not isinstance(spec, dict) or not isinstance(spec.get("kwargs", {}), dict):
        raise SlimkitError(f"task: manifest has no usable task spec, got {spec!r}")
    try:
        return make_task(str(spec.get("name")), **spec.get("kwargs", {}))
    except (TypeError, ValueError) as exc:
        raise SlimkitError(f"task: cannot rebuild the task from the manifest ({exc})") from None
