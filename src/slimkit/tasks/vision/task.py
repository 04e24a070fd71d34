"""The image classification task adapter (Fashion-MNIST) and its teacher-training recipe."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...core.context import Context
from ...core.errors import SlimkitError
from ...core.task import Batch
from ...train.loop import fit
from .data import CLASSES, ROOT, ImageData, load_fashion_mnist, normalize
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

    def _split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.data.images:
            raise SlimkitError(f"split: expected one of {sorted(self.data.images)}, got {name!r}")
        return self.data.images[name], self.data.labels[name]

    def _batch(self, split: str, idx: torch.Tensor) -> Batch:
        images, labels = self._split(split)
        return {"image": normalize(images[idx]), "label": labels[idx]}

    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[Batch]:
        """One shuffled epoch; the last batch may be short."""
        n = len(self._split("train")[1])
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        for start in range(0, n, batch_size):
            yield self._batch("train", order[start:start + batch_size])

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil(len(self._split("train")[1]) / batch_size)

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[Batch]:
        """`n` fixed batches of training images (a fixed shuffle, wrapping round if needed)."""
        rows = len(self._split("train")[1])
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(0))
        idx = order[torch.arange(n * batch_size) % rows]
        return [self._batch("train", chunk) for chunk in idx.split(batch_size)]

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        return (batch["image"],)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(outputs, batch["label"])

    def predict(self, model: nn.Module, split: str = "test") -> torch.Tensor:
        """Logits [N, classes] for a split in eval mode; the model's own mode is restored."""
        images, _ = self._split(split)
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                chunks = [model(normalize(x).to(device)).float().cpu()
                          for x in images.split(EVAL_BATCH)]
        finally:
            model.train(was_training)
        return torch.cat(chunks)

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

    def build_model(self, kind: str = "cnn", **kwargs: Any) -> nn.Module:
        if kind not in MODELS:
            raise SlimkitError(f"kind: expected one of {sorted(MODELS)}, got {kind!r}")
        return MODELS[kind](**kwargs)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name,
                "rows": {k: len(v) for k, v in self.data.labels.items()},
                "image_shape": [1, 28, 28], "classes": list(CLASSES)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherRecipe:
    """Training knobs for `train_teacher`; the best epoch on the valid split is kept."""

    epochs: int = 6
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for name, value, ok in [("epochs", self.epochs, self.epochs >= 1),
                                ("lr", self.lr, self.lr > 0),
                                ("batch_size", self.batch_size, self.batch_size >= 1),
                                ("weight_decay", self.weight_decay, self.weight_decay >= 0)]:
            if not ok:
                raise ValueError(f"TeacherRecipe.{name}: out of range, got {value!r}")


def train_teacher(task: VisionTask, ctx: Context, kind: str = "cnn", *,
                  recipe: TeacherRecipe | None = None, **model_kwargs: Any) -> nn.Module:
    """Build `kind` and train it with Adam; returns the best-on-valid epoch's weights.

    Global RNG state is forked, so the result depends only on `ctx.seed`.
    """
    recipe = recipe or TeacherRecipe()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        model = task.build_model(kind, **model_kwargs)
        per_epoch = task.num_train_batches(recipe.batch_size)
        best: dict[str, Any] = {"accuracy": -math.inf, "state": None, "epoch": 0}

        def on_step(step: int, total: int) -> None:
            if step % per_epoch and step != total:
                return
            score = task.evaluate(model, "valid")["accuracy"]
            epoch = math.ceil(step / per_epoch)
            log.info("teacher %s epoch %d: valid accuracy %.2f", kind, epoch, score)
            if score > best["accuracy"]:
                best.update(accuracy=score, state=copy.deepcopy(model.state_dict()), epoch=epoch)

        fit(model, task, ctx, epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size,
            weight_decay=recipe.weight_decay, on_step=on_step, desc=f"teacher {kind}")
    model.load_state_dict(best["state"])
    model.eval()
    log.info("teacher %s: best epoch %d (valid accuracy %.2f) in %.1f s", kind, best["epoch"],
             best["accuracy"], time.perf_counter() - start)
    return model
