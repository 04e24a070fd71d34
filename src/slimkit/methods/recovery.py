"""Recovery training after a structural cut (blocks dropped, channels removed): fine-tune on the
task or distill from the teacher. The fields and the step are shared by the methods that cut."""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch import nn

from ..core import Context, MethodConfig, check_range, check_training
from ..train import fit
from .distill.logits import distill


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recovery(MethodConfig):
    """Base of configs that recover after cutting: `recover` for `epochs` (0 = no training)."""

    recover: Literal["none", "finetune", "distill"] = "finetune"
    epochs: float = 1.0
    lr: float = 1e-3
    batch_size: int = 512
    temperature: float = 2.0
    alpha: float = 0.5

    def check_recovery(self) -> None:
        check_training(self, allow_zero_epochs=True)
        check_range("temperature", self.temperature, 0.0, 100.0, lo_open=True)
        check_range("alpha", self.alpha, 0.0, 1.0)


def recover(model: nn.Module, config: Recovery, ctx: Context, desc: str) -> None:
    if config.recover == "none" or config.epochs <= 0:
        return
    if config.recover == "finetune":
        fit(model, ctx.require_task(config.method), ctx, epochs=config.epochs, lr=config.lr,
            batch_size=config.batch_size, desc=desc)
    else:
        distill(model, ctx, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                temperature=config.temperature, alpha=config.alpha, desc=desc)
