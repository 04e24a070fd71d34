"""compress_: apply a plan's steps to a model in order, recording what each step changed
and cost."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any

import torch
from torch import nn

from .config import lookup
from .context import Context
from .plan import Plan

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Record:
    """What one step did: its config, wall time, structural edits and reported numbers."""

    index: int
    method: str
    config: dict[str, Any]
    seconds: float
    edits: list[dict[str, Any]]
    info: dict[str, Any]


def compress_(model: nn.Module, plan: Plan, ctx: Context, *, first_step: int = 0) -> list[Record]:
    """Apply `plan` to `model` in place (structure may change inside it); one Record per step.

    Step i runs with seed `ctx.seed + first_step + i` inside a forked RNG, so results depend only
    on the plan and seed (a runner applying steps one by one passes `first_step`), and the
    caller's random state is left alone. A teacher made here lives only for this call.
    """
    own_teacher = ctx.teacher is None and any(s.needs_teacher for s in plan.steps)
    if own_teacher:
        ctx.teacher = copy.deepcopy(model).eval()
        for p in ctx.teacher.parameters():
            p.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=[]):
            return _apply_steps(model, plan, ctx, first_step)
    finally:
        if own_teacher:
            ctx.teacher = None


def _apply_steps(model: nn.Module, plan: Plan, ctx: Context, first_step: int) -> list[Record]:
    records = []
    for i, config in enumerate(plan.steps):
        _, apply = lookup(config.method)
        torch.manual_seed(ctx.seed + first_step + i)
        ctx.info = {}
        edits_before = len(edit_log(model))
        start = time.perf_counter()
        log.info("step %d: %s", i, config.method)
        result = apply(model, config, ctx)
        if result is not model:
            raise TypeError(f"{config.method} must modify the model in place and return it")
        seconds = time.perf_counter() - start
        records.append(Record(first_step + i, config.method, config.to_dict(), seconds,
                              edit_log(model)[edits_before:], dict(ctx.info)))
    return records


def edit_log(model: nn.Module) -> list[dict[str, Any]]:
    """Structural edits applied to `model` so far, replayed by the artifact loader."""
    edits: list[dict[str, Any]] = model.__dict__.setdefault("slimkit_edits", [])
    return edits
