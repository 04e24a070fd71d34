"""What a method may use besides the model: the task (data), seed, device, teacher, progress."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from torch import nn

from .errors import SlimkitError
from .task import Task

T = TypeVar("T")


def _no_progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    return items


@dataclasses.dataclass
class Context:
    """Passed explicitly to every method: no global state, no hidden random seeds.

    `teacher` defaults to a frozen copy of the model as it was before the plan (set by compress_).
    `progress` wraps iterables for display; the CLI supplies a progress bar, libraries keep quiet.
    `info` collects numbers the current step reports (achieved sparsity, chosen layers).
    """

    task: Task | None = None
    seed: int = 0
    device: str = "cpu"
    teacher: nn.Module | None = None
    progress: Callable[..., Iterable[Any]] = _no_progress
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def require_task(self, method: str) -> Task:
        if self.task is None:
            raise SlimkitError(f"{method}: needs a task with data (Context.task is None)")
        return self.task
