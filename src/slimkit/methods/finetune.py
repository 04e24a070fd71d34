"""Recovery fine-tuning with the task's own loss."""

from __future__ import annotations

import dataclasses

from torch import nn

from ..core import Context, MethodConfig, check_training, register
from ..core.config import DATA
from ..train import fit


@dataclasses.dataclass(frozen=True, kw_only=True)
class Finetune(MethodConfig):
    method = "finetune"
    epochs: float = 1.0
    lr: float = 1e-3
    batch_size: int = 512
    weight_decay: float = 0.0

    def requires(self) -> frozenset[str]:
        return DATA

    def validate(self) -> None:
        check_training(self)


@register(Finetune)
def apply_finetune(model: nn.Module, config: Finetune, ctx: Context) -> nn.Module:
    losses = fit(model, ctx.require_task(config.method), ctx, epochs=config.epochs, lr=config.lr,
                 batch_size=config.batch_size, weight_decay=config.weight_decay, desc="finetune")
    ctx.info["final_loss"] = round(sum(losses[-20:]) / max(1, len(losses[-20:])), 6)
    return model
