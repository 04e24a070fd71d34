"""Per-layer sensitivity: apply a method to one layer alone on a copy of the model and measure the
drop of the task's primary metric and the layer's bytes before and after.

Works with any registered method whose config has a `targets` field; mixed precision and
embedding bit allocation build on it. The input model and the global RNG state are left untouched.
A layer the method fails on is never dropped quietly: it is listed in `SensitivityResult.skipped`
with its reason (only "targets match no module" counts as "not applicable").
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..core import Context, MethodConfig, Targets, compress_, edit_log
from ..core.errors import SlimkitError, one_line
from ..core.plan import Plan
from ..core.task import Task
from ..graph import get_submodule
from .quality import metric_drop

log = logging.getLogger(__name__)

ConfigFactory = Callable[[str], MethodConfig]
WEIGHTED_TYPES = ("Linear", "Conv1d", "Conv2d", "Embedding", "EmbeddingBag")
# The one message a method raises when it does not handle a layer's type at all.
NOT_APPLICABLE_MARK = ": targets match no "
FAILED, NOT_APPLICABLE, UNCHANGED = "failed", "not applicable", "unchanged"


class SensitivityResult(list):  # type: ignore[type-arg]
    """The measured rows (a list, most sensitive first) plus `skipped`: one entry per layer
    that has no row, with `status` (failed / not applicable / unchanged) and a one-line
    `reason` (exception type and message for a failure)."""

    def __init__(self, rows: Sequence[dict[str, Any]] = (),
                 skipped: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(rows)
        self.skipped: list[dict[str, Any]] = list(skipped)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [s for s in self.skipped if s["status"] == FAILED]


def module_bytes(module: nn.Module) -> int:
    """Bytes of the tensors the module stores (its state dict): what it adds to an artifact."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def for_layer(config: MethodConfig) -> ConfigFactory:
    """A factory giving `config` restricted to one layer through its `targets` field."""
    if not any(f.name == "targets" for f in dataclasses.fields(config)):
        raise SlimkitError(f"{config.method}: has no targets field; pass a factory instead")
    return lambda name: dataclasses.replace(config, targets=Targets(names=(name,)))


def _apply_one(model: nn.Module, name: str, config: MethodConfig, seed: int,
               task: Task) -> tuple[nn.Module, dict[str, Any]] | tuple[str, str]:
    """A copy of `model` with `config` applied to `name` alone, or (status, reason) when the
    method did not change that layer."""
    trial = copy.deepcopy(model)
    before = get_submodule(trial, name)
    state = {k: v.clone() for k, v in before.state_dict().items()}
    edits = len(edit_log(trial))
    try:
        records = compress_(trial, Plan(steps=(config,)), Context(task=task, seed=seed))
    except Exception as exc:  # a sweep over layers must outlive one failing layer
        if isinstance(exc, SlimkitError) and NOT_APPLICABLE_MARK in str(exc):
            log.debug("%s on %s: not applicable (%s)", config.method, name, exc)
            return NOT_APPLICABLE, str(exc)
        log.warning("%s on %s failed: %s", config.method, name, one_line(exc))
        return FAILED, one_line(exc)
    after = get_submodule(trial, name)
    unchanged = after is before and len(edit_log(trial)) == edits and all(
        torch.equal(v, state[k]) for k, v in after.state_dict().items())
    if unchanged:
        return UNCHANGED, f"{config.method} left {name} as it was"
    return trial, records[0].info


def layer_sensitivity(model: nn.Module, task: Task,
                      make_config: ConfigFactory | MethodConfig, *,
                      layers: Sequence[str] | None = None, split: str = "valid",
                      seed: int = 0, baseline: float | None = None) -> SensitivityResult:
    """One row per layer the method changed, most sensitive first.

    `make_config(layer_name)` returns the config to apply to that layer (or pass a config with a
    `targets` field). `layers` defaults to every Linear/Conv/Embedding module. Each row: layer,
    type, method, metric, baseline, value, drop (positive = worse), bytes_before, bytes_after,
    seconds, info. Layers without a row are in the result's `skipped` (layer, type, method,
    status, reason): the method failed on them (logged as a warning), does not apply to their
    type, or left them unchanged.
    """
    factory = for_layer(make_config) if isinstance(make_config, MethodConfig) else make_config
    if layers is None:
        layers = [n for n, m in model.named_modules()
                  if n and type(m).__name__ in WEIGHTED_TYPES]
    metric = task.primary_metric
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with torch.random.fork_rng(devices=[]):
        if baseline is None:
            baseline = task.evaluate(model, split)[metric]
        for name in layers:
            start = time.perf_counter()
            config = factory(name)
            result = _apply_one(model, name, config, seed, task)
            if isinstance(result[0], str):
                skipped.append({"layer": name, "type": type(get_submodule(model, name)).__name__,
                                "method": config.method, "status": result[0],
                                "reason": result[1]})
                continue
            trial, info = result
            value = task.evaluate(trial, split)[metric]
            rows.append({
                "layer": name, "type": type(get_submodule(model, name)).__name__,
                "method": config.method, "metric": metric, "baseline": baseline, "value": value,
                "drop": metric_drop(task, baseline, value),
                "bytes_before": module_bytes(get_submodule(model, name)),
                "bytes_after": module_bytes(get_submodule(trial, name)),
                "seconds": round(time.perf_counter() - start, 4), "info": info,
            })
    rows.sort(key=lambda r: -r["drop"])
    return SensitivityResult(rows, skipped)
