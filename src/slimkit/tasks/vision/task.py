"""The image classification task adapter (Fashion-MNIST) and its teacher-training recipe."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...core.context import Context
from ...core.errors import SlimkitError
from ...core.task import Batch
from ...train.teacher import TeacherRecipe, train_best_on_valid
from ..batching import calibration_order, epoch_order, run_eval
from .data import CLASSES, ROOT, ImageData, load_fashion_mnist, normalize
from .defaults import CNN_PLAN_YAML, CNN_SPACE_YAML
from .models import SmallCNN

log = logging.getLogger(__name__)

MODELS: dict[str, type[nn.Module]] = {"cnn": SmallCNN}
EVAL_BATCH = 1000


class VisionTask:
    """10-class image classification; batches are {"image", "label"}, the metric is accuracy (%)."""

    primary_metric = "accuracy"
    higher_is_better = True

    def __init__(self, data: ImageData, *, name: str) -> None:
        self.name = name
        self.data = data

    @classmethod
    def fashion_mnist(cls, root: str = str(ROOT), limit: int | None = None) -> VisionTask:
        """Fashion-MNIST; valid = the last 5,000 training images. `limit` caps every split."""
        data = load_fashion_mnist(Path(root), limit=limit)
        return cls(data, name="fashion-mnist" if limit is None else f"fashion-mnist-{limit}")

    @classmethod
    def image_folder(cls, root: str, *, size: int = 28, grayscale: bool = True,
                     split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                     limit: int | None = None) -> VisionTask:
        """Images by class: root/<class>/<images> (each class cut train/valid/test by `split`
        with `seed`), or root/train/<class>/... + root/test/<class>/... (kept as given; valid
        is root/valid or root/val if present, else split[1]'s share of train). Images (any
        depth under a class folder) are resized to `size` x `size`, grayscale or RGB; `limit`
        caps the images read per class folder. Normalised with the train split's statistics.
        """
        from .folder_task import load_folder_task  # it subclasses VisionTask: imported on use

        return load_folder_task(root, size=size, grayscale=grayscale, split=split, seed=seed,
                                limit=limit)

    def _split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.data.images:
            raise SlimkitError(f"split: expected one of {sorted(self.data.images)}, got {name!r}")
        return self.data.images[name], self.data.labels[name]

    def _batch(self, split: str, idx: torch.Tensor) -> Batch:
        images, labels = self._split(split)
        return {"image": normalize(images[idx]), "label": labels[idx]}

    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[Batch]:
        """One shuffled epoch; the last batch may be short."""
        for idx in epoch_order(len(self._split("train")[1]), batch_size, seed):
            yield self._batch("train", idx)

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil(len(self._split("train")[1]) / batch_size)

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[Batch]:
        """`n` fixed batches of training images (a fixed shuffle, wrapping round if needed)."""
        rows = len(self._split("train")[1])
        return [self._batch("train", chunk) for chunk in calibration_order(rows, n, batch_size)]

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        return (batch["image"],)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(outputs, batch["label"])

    def predict(self, model: nn.Module, split: str = "test") -> torch.Tensor:
        """Logits [N, classes] for a split in eval mode; the model's own mode is restored."""
        images, _ = self._split(split)
        return run_eval(model, ((normalize(x),) for x in images.split(EVAL_BATCH)),
                        lambda out: out)

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        """Top-1 accuracy in percent and mean cross-entropy (float64) over the whole split."""
        logits = self.predict(model, split).double()
        labels = self._split(split)[1]
        correct = int((logits.argmax(dim=1) == labels).sum())
        return {"accuracy": 100.0 * correct / len(labels),
                "logloss": float(F.cross_entropy(logits, labels))}

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The first `batch_size` test images, tiled when the split is smaller."""
        n = len(self._split("test")[1])
        return (self._batch("test", torch.arange(batch_size) % n)["image"],)

    model_kinds = tuple(MODELS)

    def teacher_recipe(self, kind: str | None) -> TeacherRecipe:
        del kind
        return CNN_RECIPE

    def default_plan(self) -> str:
        return CNN_PLAN_YAML

    def search_space(self) -> str:
        return CNN_SPACE_YAML

    def build_model(self, kind: str = "cnn", **kwargs: Any) -> nn.Module:
        if kind not in MODELS:
            raise SlimkitError(f"kind: expected one of {sorted(MODELS)}, got {kind!r}")
        return MODELS[kind](**kwargs)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name,
                "rows": {k: len(v) for k, v in self.data.labels.items()},
                "image_shape": [1, 28, 28], "classes": list(CLASSES)}


# Batches of 128 suit the CNN better than the CTR default of 512; no weight decay.
CNN_RECIPE = TeacherRecipe(batch_size=128, weight_decay=0.0)


def train_teacher(task: VisionTask, ctx: Context, kind: str = "cnn", *,
                  recipe: TeacherRecipe | None = None, **model_kwargs: Any) -> nn.Module:
    """Build `kind` and train it with Adam; returns the best-on-valid epoch's weights.

    Global RNG state is forked, so the result depends only on `ctx.seed`.
    """
    return train_best_on_valid(task, ctx, kind, recipe or CNN_RECIPE, **model_kwargs)
