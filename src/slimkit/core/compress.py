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

from .config import MethodConfig, lookup
from .context import Context
from .errors import SlimkitError
from .plan import Plan
from .targets import Targets, _matches

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
    The plan is checked against the model first (`check_plan`), before any step runs.
    """
    check_plan(model, plan, first_step=first_step)
    needy = next((i for i, s in enumerate(plan.steps) if "data" in s.requires()), None)
    if needy is not None and ctx.task is None:  # refused before any step runs, not midway
        step = plan.steps[needy]
        raise SlimkitError(f"steps[{first_step + needy}] ({step.method}): needs data; pass "
                           "Context(task=...) with a task that provides batches")
    own_teacher = ctx.teacher is None and any("teacher" in s.requires() for s in plan.steps)
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


def check_plan(model: nn.Module | None, plan: Plan, *, first_step: int = 0,
               field: str = "model") -> None:
    """Refuse, before any work, a plan that cannot run on `model`; one line naming the step.

    Checked: an empty plan; NaN/Inf in the model (`check_finite`); a step that trains after a
    step that leaves int8 kernels without gradients (or on a model that already holds them);
    targets whose names match no module of the model. Names are checked against `model` for
    every step because slimkit's methods only keep, swap (same name) or remove modules, so a
    name absent now cannot appear later; explicit `types` only for the first step, since
    earlier steps swap types. Not checked: a later step's targets that an earlier step removes
    (truncate.layers), and the methods' default types (the method itself refuses those).
    Without a model (None), only what needs none: an empty plan and the order of the steps.
    """
    if not plan.steps:
        raise SlimkitError("plan: no steps")
    modules = list(model.named_modules()) if model is not None else []
    if model is not None:
        check_finite(model, field=field)
    names = [name for name, _ in modules if name]
    types = {name: type(module).__name__ for name, module in modules if name}
    frozen = next((f"the {field} holds {name!r}, an int8 kernel without gradients"
                   for name, m in modules
                   if getattr(m, "supports_autograd", True) is False), None)
    for i, step in enumerate(plan.steps):
        label = f"steps[{first_step + i}] ({step.method})"
        if frozen is not None and trains(step):
            raise SlimkitError(f"{label}: cannot train: {frozen}; put training steps "
                               "before quantize steps")
        for where, targets in _targets_of(step) if model is not None else ():
            chosen = [n for n in names if _matches(n, targets.names)
                      and not _matches(n, targets.exclude)
                      and (i > 0 or not targets.types or types[n] in targets.types)]
            if not chosen:
                what = f"names {list(targets.names)}" + (
                    f" exclude {list(targets.exclude)}" if targets.exclude else "") + (
                    f" types {list(targets.types)}" if targets.types and i == 0 else "")
                raise SlimkitError(f"{label}: {where} match no module of the {field} ({what})")
        if frozen is None and type(step).leaves_int8_kernels:
            frozen = f"{label} leaves int8 kernels without gradients"


def trains(step: MethodConfig) -> bool:
    """Whether a step runs the training loop: it carries an optimizer (`lr`) and trains for
    `epochs` > 0, unless its recovery is "none" (the rule every training method follows)."""
    epochs = getattr(step, "epochs", 0.0)
    return (hasattr(step, "lr") and isinstance(epochs, (int, float)) and epochs > 0
            and getattr(step, "recover", "") != "none")


def _targets_of(step: MethodConfig) -> list[tuple[str, Targets]]:
    return [(f.name, value) for f in dataclasses.fields(step)
            if isinstance(value := getattr(step, f.name), Targets)]


@torch.no_grad()
def check_finite(model: nn.Module, *, field: str = "model") -> None:
    """Refuse a model with NaN or Inf in a floating-point parameter or buffer (a broken export
    or a diverged training run): nothing sensible can be measured or compressed from it."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in tensors:
        if not tensor.is_floating_point():  # integer codes and packed weights cannot be NaN
            continue
        if not _all_finite(tensor):
            count = int((~torch.isfinite(tensor)).sum())
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
            what = "parameter" if isinstance(tensor, nn.Parameter) else "buffer"
            raise SlimkitError(f"{field}: {what} {name!r} holds {kind} ({count} of "
                               f"{tensor.numel()} values); the model is broken, re-export or "
                               "retrain it")


def _all_finite(tensor: torch.Tensor, chunk: int = 1 << 20) -> bool:
    """isfinite(tensor).all() a million values at a time: isfinite makes a float temporary of
    the whole tensor (|x|) besides its mask, and counting sums the mask in int64, which for
    SmolLM2's 28M-value table came to 150-230 MB over the loaded model."""
    flat = tensor.detach().reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + chunk]).all())
               for i in range(0, flat.numel(), chunk))
