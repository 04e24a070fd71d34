"""Reference image classifiers for the vision task."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...core.module_types import register_module_type


@register_module_type
class SmallCNN(nn.Module):
    """Two 5x5 conv + max-pool stages and two fully connected layers (LeNet-5 style, as used by
    Han et al. 2016 for Deep Compression): 28x28 -> 24 -> 12 -> 8 -> 4, then 64*4*4 -> hidden."""

    def __init__(self, channels: tuple[int, int] | list[int] = (32, 64), hidden: int = 256,
                 num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        c1, c2 = int(channels[0]), int(channels[1])
        self.conv1 = nn.Conv2d(1, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.slimkit_spec = {"builder": "slimkit.tasks.vision.models:SmallCNN",
                             "kwargs": {"channels": [c1, c2], "hidden": hidden,
                                        "num_classes": num_classes, "dropout": dropout}}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(image)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)
