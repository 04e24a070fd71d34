"""Narrow a search space by per-layer sensitivity before the search starts.

For each step that declares `sensitivity` settings, the step is applied with those settings to
one targeted layer at a time (on a copy of the model) and the quality drop is measured on the
validation split. A layer that alone costs more than the whole quality budget cannot be part of
any plan that fits, so it is excluded from that step's targets for every trial: TPE then spends
its trials on choices that can fit (the accuracy-aware fallback of post-training quantizers,
applied to any method with targets).

A layer whose probe failed is kept in the space (nothing says it is over the budget) and its row
carries the reason; layers the step does not apply to are listed too, so no layer goes missing.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

from torch import nn

from ..core.plan import Plan
from ..core.targets import Targets
from ..eval.sensitivity import WEIGHTED_TYPES, layer_sensitivity
from .space import SearchSpace, Slot

log = logging.getLogger(__name__)


def probe_config(slot: Slot) -> Any:
    """The step a sensitivity probe applies: fixed values, then each searched parameter at its
    first value (lower bound or first choice), then the slot's `sensitivity` settings."""
    values = dict(slot.fixed)
    values.update({name: next(iter(spec.values()))[0] for name, spec in slot.params.items()})
    values.update(slot.sensitivity or {})
    return Plan.from_dict({"version": 1, "steps": [{"method": slot.method, **values}]}).steps[0]


def _exact(name: str) -> str:
    return "re:" + re.escape(name)


def narrow(model: nn.Module, task: Any, space: SearchSpace, *, max_drop: float,
           seed: int = 0, baseline: float | None = None
           ) -> tuple[SearchSpace, list[dict[str, Any]]]:
    """The space with over-budget layers excluded, and one row per probed layer: `status`
    "measured" (with `drop`), or "failed" / "not applicable" / "unchanged" with a `reason`."""
    rows: list[dict[str, Any]] = []
    slots = []
    for slot in space.slots:
        if not slot.sensitivity:
            slots.append(slot)
            continue
        config = probe_config(slot)
        targets: Targets = config.targets
        scope = Targets(names=targets.names, types=targets.types or WEIGHTED_TYPES,
                        exclude=targets.exclude)
        layers = [n for n, _ in scope.select(model, WEIGHTED_TYPES)]

        def one_layer(name: str, config: Any = config, targets: Targets = targets) -> Any:
            return dataclasses.replace(
                config, targets=Targets(names=(_exact(name),), types=targets.types))

        found = layer_sensitivity(model, task, one_layer, layers=layers, seed=seed,
                                  baseline=baseline)
        setting = ", ".join(f"{k}={v}" for k, v in (slot.sensitivity or {}).items())
        excluded = [r["layer"] for r in found if r["drop"] > max_drop]
        for r in found:
            rows.append({"method": slot.method, "setting": setting, "layer": r["layer"],
                         "drop": r["drop"], "bytes_before": r["bytes_before"],
                         "bytes_after": r["bytes_after"], "kept": r["layer"] not in excluded,
                         "status": "measured", "reason": ""})
        for s in found.skipped:
            rows.append({"method": slot.method, "setting": setting, "layer": s["layer"],
                         "drop": None, "bytes_before": None, "bytes_after": None,
                         "kept": True, "status": s["status"], "reason": s["reason"]})
        if found.failures:
            log.warning("%s: the sensitivity probe failed on %d layer(s), kept in the space: %s",
                        slot.method, len(found.failures),
                        "; ".join(f"{f['layer']}: {f['reason']}" for f in found.failures))
        if excluded:
            log.info("%s: excluding %s (each alone over the budget)", slot.method, excluded)
        if found and len(excluded) == len(found) and not found.failures:
            log.info("%s: every layer is over the budget; step left out", slot.method)
            continue
        fixed_targets = dict(slot.fixed.get("targets") or {})
        fixed_targets["exclude"] = [*fixed_targets.get("exclude", []),
                                    *(_exact(n) for n in excluded)]
        slots.append(dataclasses.replace(slot, fixed={**slot.fixed, "targets": fixed_targets})
                     if excluded else slot)
    return SearchSpace(tuple(slots)), rows
