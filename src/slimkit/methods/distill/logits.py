"""Logit distillation (Hinton et al. 2015): train the model to match a teacher's softened outputs,
mixed with the task loss on the true labels. The teacher defaults to the model before the plan."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from ...core import Batch, Context, MethodConfig, Task, check_range, check_training, register
from ...core.config import DATA_AND_TEACHER
from ...core.errors import SlimkitError
from ...graph.trace import tensors_of
from ...train import fit
from .losses import is_binary, kd_loss


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogitsKD(MethodConfig):
    """loss = alpha * T^2 KL(teacher_T || student_T) + (1 - alpha) * task loss."""

    method = "distill.logits"
    temperature: float = 2.0
    alpha: float = 0.5
    kind: Literal["auto", "binary", "softmax"] = "auto"
    epochs: float = 1.0
    lr: float = 1e-3
    batch_size: int = 512
    weight_decay: float = 0.0

    def requires(self) -> frozenset[str]:
        return DATA_AND_TEACHER

    def validate(self) -> None:
        check_range("temperature", self.temperature, 0.0, 100.0, lo_open=True)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_training(self)


def distill_loss_fn(teacher: nn.Module, task: Task, *, temperature: float, alpha: float,
                    kind: str = "auto"):
    """A `fit` loss function mixing KD against `teacher` with the task loss."""

    def loss_fn(student: nn.Module, batch: Batch) -> torch.Tensor:
        inputs = task.inputs(batch)
        out = student(*inputs)
        with torch.no_grad():
            target = teacher(*inputs)
        # A transformers model returns a ModelOutput; its first tensor is the logits.
        logits, target_logits = tensors_of(out)[0], tensors_of(target)[0]
        binary = is_binary(logits) if kind == "auto" else kind == "binary"
        kd = kd_loss(logits, target_logits, temperature, binary)
        if alpha >= 1.0:
            return kd
        return alpha * kd + (1 - alpha) * task.loss(out, batch)

    return loss_fn


def distill(model: nn.Module, ctx: Context, *, epochs: float, lr: float, batch_size: int,
            temperature: float, alpha: float, kind: str = "auto", weight_decay: float = 0.0,
            desc: str = "distill") -> None:
    """Train `model` against ctx.teacher; shared by distill.logits and truncation recovery."""
    task = ctx.require_task("distill")
    if ctx.teacher is None:
        raise SlimkitError("distill: no teacher (Context.teacher is None)")
    ctx.teacher.eval()
    fn = distill_loss_fn(ctx.teacher, task, temperature=temperature, alpha=alpha, kind=kind)
    losses = fit(model, task, ctx, epochs=epochs, lr=lr, batch_size=batch_size,
                 weight_decay=weight_decay, loss_fn=fn, desc=desc)
    ctx.info["final_loss"] = round(sum(losses[-20:]) / max(1, len(losses[-20:])), 6)


@register(LogitsKD)
def apply_logits_kd(model: nn.Module, config: LogitsKD, ctx: Context) -> nn.Module:
    distill(model, ctx, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
            temperature=config.temperature, alpha=config.alpha, kind=config.kind,
            weight_decay=config.weight_decay, desc="distill")
    return model
