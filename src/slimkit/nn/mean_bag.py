"""The padded-mean EmbeddingBag as Gather + masked mean: the form ONNX export takes (torch's
TorchScript exporter rejects `embedding_bag` with `padding_idx`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MeanBag(nn.Module):
    """The padded-mean bag as Gather + masked mean, for ONNX export.

    torch's TorchScript ONNX exporter rejects `embedding_bag` with `padding_idx`; swap each
    `nn.EmbeddingBag(mode="mean", padding_idx=0)` for this (sharing the weight) before exporting.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    @classmethod
    def from_embedding_bag(cls, bag: nn.EmbeddingBag) -> MeanBag:
        if bag.mode != "mean" or bag.padding_idx != 0:
            raise ValueError(f"bag: expected mode='mean', padding_idx=0, got {bag.mode!r}, "
                             f"{bag.padding_idx!r}")
        return cls(bag.weight)

    def forward(self, bag: torch.Tensor) -> torch.Tensor:
        mask = (bag != 0).unsqueeze(-1).to(self.weight.dtype)
        total = (F.embedding(bag, self.weight) * mask).sum(dim=1)
        # An all-padding row gives 0, as EmbeddingBag does.
        return total / mask.sum(dim=1).clamp(min=1.0)
