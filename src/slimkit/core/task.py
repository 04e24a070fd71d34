"""The task adapter protocol: how methods reach data, loss and metrics without knowing the task."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


class Task(Protocol):
    """What a task provides. Batches are dicts of tensors; `inputs` picks the model's arguments."""

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

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]: ...

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Real inputs of a given batch size, for latency measurement and export."""
        ...

    def build_model(self, kind: str, **kwargs: Any) -> nn.Module: ...

    def describe(self) -> dict[str, Any]:
        """What a run directory records about the data (sizes, split)."""
        ...


def forward(model: nn.Module, task: Task, batches: Iterable[Batch]) -> Iterator[torch.Tensor]:
    for batch in batches:
        yield model(*task.inputs(batch))
