"""Mean squared activations per feature over real tokens, collected by forward hooks: the
energy truncate.hidden ranks hidden dimensions, heads and FFN neurons by."""

from __future__ import annotations

import torch

from ...core.errors import SlimkitError


class ActivationEnergy:
    """Sums of squared activations over real tokens, per hooked module input or output."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, x: torch.Tensor) -> None:
        rows = x.detach().flatten(0, -2)
        if self.mask is not None and self.mask.shape == x.shape[:-1]:
            rows = rows[self.mask.reshape(-1).bool()]
        sq = rows.float().pow(2).sum(0)
        self.sums[key] = self.sums[key] + sq if key in self.sums else sq
        self.counts[key] = self.counts.get(key, 0) + int(rows.shape[0])

    def mean(self, key: str) -> torch.Tensor:
        if key not in self.sums:
            raise SlimkitError(f"truncate.hidden: {key} never ran on the calibration batches")
        return self.sums[key] / max(1, self.counts[key])
