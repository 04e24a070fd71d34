"""Teacher training shared by the tasks: train with `fit`, keep the best epoch on the valid split.

Selection uses the task's primary metric on "valid" only, never "test". Global RNG state is
forked, so the caller's random streams are untouched and the result depends only on `ctx.seed`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from typing import Any

import torch
from torch import nn

from ..core.context import Context
from ..core.task import Task
from .loop import fit

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherRecipe:
    """Training knobs for a teacher; the best epoch on the valid split is kept."""

    epochs: int = 6
    lr: float = 1e-3
    batch_size: int = 512
    weight_decay: float = 3e-5

    def __post_init__(self) -> None:
        for name, value, ok in [("epochs", self.epochs, self.epochs >= 1),
                                ("lr", self.lr, self.lr > 0),
                                ("batch_size", self.batch_size, self.batch_size >= 1),
                                ("weight_decay", self.weight_decay, self.weight_decay >= 0)]:
            if not ok:
                raise ValueError(f"TeacherRecipe.{name}: out of range, got {value!r}")


def train_best_on_valid(task: Task, ctx: Context, kind: str, recipe: TeacherRecipe,
                        **model_kwargs: Any) -> nn.Module:
    """Build `kind` through the task, train it, return the weights of the best valid epoch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        model = task.build_model(kind, **model_kwargs)  # type: ignore[attr-defined]
        return _best_on_valid(model, task, ctx, recipe, kind)


def fit_best_on_valid(model: nn.Module, task: Task, ctx: Context, recipe: TeacherRecipe, *,
                      name: str = "teacher") -> nn.Module:
    """Train a model built elsewhere (a caller's own class) in place, as `train_best_on_valid`
    does, and return it with the weights of its best valid epoch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        return _best_on_valid(model, task, ctx, recipe, name)


def _best_on_valid(model: nn.Module, task: Task, ctx: Context, recipe: TeacherRecipe,
                   kind: str) -> nn.Module:
    metric, sign = task.primary_metric, (1 if task.higher_is_better else -1)
    start = time.perf_counter()
    per_epoch = task.num_train_batches(recipe.batch_size)
    best: dict[str, Any] = {"score": -math.inf, "state": None, "epoch": 0}

    def on_step(step: int, total: int) -> None:
        if step % per_epoch and step != total:
            return
        score = task.evaluate(model, "valid")[metric]
        epoch = math.ceil(step / per_epoch)
        log.info("teacher %s epoch %d: valid %s %.4f", kind, epoch, metric, score)
        if sign * score > best["score"]:
            best.update(score=sign * score, state=copy.deepcopy(model.state_dict()),
                        epoch=epoch)

    fit(model, task, ctx, epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size,
        weight_decay=recipe.weight_decay, on_step=on_step, desc=f"teacher {kind}")
    model.load_state_dict(best["state"])
    model.eval()
    log.info("teacher %s: best epoch %d (valid %s %.4f) in %.1f s", kind, best["epoch"], metric,
             sign * best["score"], time.perf_counter() - start)
    return model
