"""The task protocol: how methods, the pipeline, the search and the CLI reach data, loss and
metrics without knowing the task. A user's own task is any object with these members."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

Batch = dict[str, torch.Tensor]

REQUIRED = ("name", "primary_metric", "higher_is_better", "train_batches", "num_train_batches",
            "calibration_batches", "inputs", "loss", "evaluate", "example_inputs")


@runtime_checkable
class Task(Protocol):
    """What every task provides. Batches are dicts of tensors; `inputs` picks the model's
    positional arguments from a batch.

    Optional members, used when present (see `tasks.defaults` for what stands in otherwise):
      - `build_model(kind: str, **kwargs) -> nn.Module` and `model_kinds: tuple[str, ...]` (the
        first is the default): the architectures the CLI's `--arch` can train as a teacher;
      - `teacher_recipe(kind) -> TeacherRecipe | None`: how a teacher is trained (None: the
        built model is pretrained and used as built);
      - `default_plan() -> str` and `search_space() -> str`: YAML of the plan `slimkit run` uses
        without a plan file and of the space `slimkit auto` searches without `--space`;
      - `describe() -> dict`: what a run directory records about the data;
      - `latency_batches: tuple[int, ...]`: the batch sizes latency and run-time memory are
        measured at (default 1 and 512);
      - `spec`: set by `slimkit.make_task`, so `slimkit eval` can rebuild the same task.
    """

    name: str
    primary_metric: str
    higher_is_better: bool

    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[Batch]:
        """One epoch of shuffled training batches."""
        ...

    def num_train_batches(self, batch_size: int) -> int: ...

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[Batch]:
        """A few fixed batches from the training split for statistics and scoring."""
        ...

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]: ...

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        """Quality metrics on "test" or "valid"; must include `primary_metric`."""
        ...

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Real inputs of a given batch size, for latency measurement and export."""
        ...


def missing_members(task: Any) -> list[str]:
    """The required members `task` lacks (empty for a complete task)."""
    return [m for m in REQUIRED if not hasattr(task, m)]


def describe(task: Any) -> dict[str, Any]:
    """The task's own description, or its name and metric when it has none."""
    if hasattr(task, "describe"):
        return dict(task.describe())
    return {"name": task.name, "primary_metric": task.primary_metric}


def batches_used(task: Task, batches: list[Batch], asked: int) -> dict[str, int]:
    """What a step calibrated on, for its record (no silent caps): batches asked for and got,
    rows (the first model input's first dimension) and elements of that input (tokens for
    token ids)."""
    first = [task.inputs(b)[0] for b in batches]
    return {"asked": asked, "batches": len(batches),
            "rows": sum(int(x.shape[0]) if x.dim() else 1 for x in first),
            "elements": sum(int(x.numel()) for x in first)}


def forward(model: nn.Module, task: Task, batches: Iterable[Batch]) -> Iterator[torch.Tensor]:
    for batch in batches:
        yield model(*task.inputs(batch))
