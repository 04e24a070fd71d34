"""A task made of plain input batches, for models slimkit has no data adapter for (a Hugging Face
model and some token ids): enough for tracing, calibration statistics and, with a loss function,
gradient criteria and recovery training."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import SlimkitError
from ..core.task import Batch
from ..graph.trace import tensors_of

LossFn = Callable[[Any, Batch], torch.Tensor]


def next_token_loss(outputs: Any, batch: Batch) -> torch.Tensor:
    """Causal language-model loss: logits at position t predict token t + 1."""
    logits = tensors_of(outputs)[0]
    ids = batch["input_0"]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


class InputsTask:
    name = "inputs"
    primary_metric = "loss"
    higher_is_better = False

    def __init__(self, batches: Sequence[Sequence[torch.Tensor]],
                 loss_fn: LossFn | None = None) -> None:
        if not batches:
            raise SlimkitError("InputsTask: batches is empty")
        self.batches = [{f"input_{i}": t for i, t in enumerate(b)} for b in batches]
        self.loss_fn = loss_fn
        self.spec = None

    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[Batch]:
        order = torch.randperm(len(self.batches), generator=torch.Generator().manual_seed(seed))
        for i in order.tolist():
            yield self.batches[i]

    def num_train_batches(self, batch_size: int) -> int:
        return len(self.batches)

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[Batch]:
        return self.batches[:n]

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        return tuple(batch[f"input_{i}"] for i in range(len(batch)))

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The first batch resized to `batch_size` rows; inputs without that leading batch
        dimension (a shared mask, a scalar) are passed unchanged."""
        first = self.inputs(self.batches[0])
        rows = first[0].shape[0] if first[0].dim() else 1
        reps = -(-batch_size // rows)
        return tuple(t.repeat(reps, *[1] * (t.dim() - 1))[:batch_size]
                     if t.dim() and t.shape[0] == rows else t for t in first)

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        if self.loss_fn is None:
            raise SlimkitError("InputsTask: this step needs a loss (pass loss_fn)")
        return self.loss_fn(outputs, batch)

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        with torch.no_grad():
            losses = [float(self.loss(model(*self.inputs(b)), b)) for b in self.batches]
        return {"loss": sum(losses) / len(losses)}

    def build_model(self, kind: str, **kwargs: Any) -> nn.Module:
        raise SlimkitError("InputsTask: cannot build models; pass one")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "batches": len(self.batches)}
