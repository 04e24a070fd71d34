"""The image-folder task: VisionTask over `FolderData` (any class count, 1 or 3 channels, any
square size), normalised with the folder's own train statistics, and a CNN sized to match."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...core.errors import SlimkitError
from ...core.module_types import register_module_type
from ..batching import run_eval
from .image_folder import FolderData, load_image_folder
from .models import SmallCNN
from .task import EVAL_BATCH, VisionTask


@register_module_type
class FolderCNN(nn.Module):
    """SmallCNN's layers and forward for C x S x S images: `conv1` takes `in_channels`, `fc1`
    the map left after the two conv + pool stages. At 1 x 28 x 28 the task builds SmallCNN
    itself; this class only exists because SmallCNN fixes its input shape."""

    def __init__(self, channels: tuple[int, int] | list[int] = (32, 64), hidden: int = 256,
                 num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3,
                 image_size: int = 32) -> None:
        super().__init__()
        c1, c2 = int(channels[0]), int(channels[1])
        side = ((image_size - 4) // 2 - 4) // 2  # 5x5 conv, 2x2 pool, twice
        if side < 1:
            raise ValueError(f"image_size: expected an int >= 16, got {image_size!r}")
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.slimkit_spec: dict[str, Any] = {
            "builder": "slimkit.tasks.vision.folder_task:FolderCNN",
            "kwargs": {"channels": [c1, c2], "hidden": hidden, "num_classes": num_classes,
                       "dropout": dropout, "in_channels": in_channels, "image_size": image_size}}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(image)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        logits: torch.Tensor = self.fc2(x)
        return logits


class ImageFolderTask(VisionTask):
    """Classification over a folder's classes; batches are {"image" [B, C, S, S], "label"}."""

    data: FolderData

    def __init__(self, data: FolderData, *, name: str) -> None:
        super().__init__(data, name=name)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, S, S] -> float, zero mean and unit variance per channel over train."""
        mean, std = self.data.mean.view(1, -1, 1, 1), self.data.std.view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std

    def _batch(self, split: str, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        images, labels = self._split(split)
        return {"image": self.normalize(images[idx]), "label": labels[idx]}

    def predict(self, model: nn.Module, split: str = "test") -> torch.Tensor:
        """Logits [N, classes] for a split in eval mode; the model's own mode is restored."""
        images, _ = self._split(split)
        return run_eval(model, ((self.normalize(x),) for x in torch.split(images, EVAL_BATCH)),
                        lambda out: out)

    def build_model(self, kind: str = "cnn", **kwargs: Any) -> nn.Module:
        """The reference CNN with one output per class and the images' channels and size."""
        if kind != "cnn":
            raise SlimkitError(f"kind: expected one of ['cnn'], got {kind!r}")
        n = len(self.data.classes)
        if kwargs.setdefault("num_classes", n) != n:
            raise SlimkitError(f"num_classes: the folder has {n} classes, got "
                               f"{kwargs['num_classes']!r}")
        channels, size = self.data.images["train"].shape[1:3]
        if (channels, size) == (1, 28):
            return SmallCNN(**kwargs)
        return FolderCNN(in_channels=int(channels), image_size=int(size), **kwargs)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "rows": {k: len(v) for k, v in self.data.labels.items()},
                "image_shape": list(self.data.images["train"].shape[1:]),
                "classes": list(self.data.classes), "root": self.data.root,
                "layout": self.data.layout,
                "mean": [round(float(m), 4) for m in self.data.mean],
                "std": [round(float(s), 4) for s in self.data.std]}


def load_folder_task(root: str | Path, *, size: int = 28, grayscale: bool = True,
                     split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                     limit: int | None = None) -> ImageFolderTask:
    """Read the folder (see `image_folder.load_image_folder`) and wrap it as a task."""
    data = load_image_folder(root, size=size, grayscale=grayscale, split=split, seed=seed,
                             limit=limit)
    return ImageFolderTask(data, name=f"image-folder-{Path(data.root).name}")
