"""A search space: ordered plan slots, each a registered method that may be optional, with
parameters to search (`float: [lo, hi]`, `int: [lo, hi]`, `choice: [...]`) and fixed ones.

    steps:
    - method: prune.structured
      optional: true
      params: {ratio: {float: [0.2, 0.7]}, criterion: {choice: [l2, taylor]}}
      fixed: {targets: {names: [tower.*, head]}}
    - method: quantize.embedding
      optional: true
      params: {bits: {choice: [8, 4, 2]}}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..core.config import lookup
from ..core.errors import ConfigError
from ..core.plan import Plan

KINDS = ("float", "int", "choice", "log_float")


@dataclasses.dataclass(frozen=True)
class Slot:
    method: str
    optional: bool
    params: dict[str, dict[str, list[Any]]]
    fixed: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    slots: tuple[Slot, ...]

    @classmethod
    def from_dict(cls, data: Any) -> SearchSpace:
        if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
            raise ConfigError("steps", data, "a mapping with a list of steps")
        slots = []
        for i, step in enumerate(data["steps"]):
            field = f"steps[{i}]"
            if not isinstance(step, dict):
                raise ConfigError(field, step, "a mapping")
            method = step.get("method")
            lookup(method, f"{field}.method")  # names a registered method
            params = step.get("params", {}) or {}
            for name, spec in params.items():
                if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS):
                    raise ConfigError(f"{field}.params.{name}", spec,
                                      "one of {float|int|log_float: [lo, hi]} or {choice: [...]}")
                kind, values = next(iter(spec.items()))
                if not isinstance(values, list) or not values or \
                        (kind != "choice" and len(values) != 2):
                    raise ConfigError(f"{field}.params.{name}.{kind}", values,
                                      "[lo, hi]" if kind != "choice" else "a non-empty list")
            optional = step.get("optional", False)
            if not isinstance(optional, bool):
                raise ConfigError(f"{field}.optional", optional, "true or false")
            slots.append(Slot(str(method), optional, dict(params), dict(step.get("fixed", {}))))
        space = cls(tuple(slots))
        return space

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        import yaml

        return cls.from_dict(yaml.safe_load(Path(path).read_text()))


def suggest_plan(trial: Any, space: SearchSpace) -> Plan:
    """The plan an Optuna trial picks from `space` (parameter names are `i.method.param`)."""
    steps = []
    for i, slot in enumerate(space.slots):
        key = f"{i}.{slot.method}"
        if slot.optional and not trial.suggest_categorical(f"{key}.use", [True, False]):
            continue
        values = dict(slot.fixed)
        for name, spec in slot.params.items():
            kind, v = next(iter(spec.items()))
            if kind == "choice":
                values[name] = trial.suggest_categorical(f"{key}.{name}", v)
            elif kind == "int":
                values[name] = trial.suggest_int(f"{key}.{name}", int(v[0]), int(v[1]))
            else:
                values[name] = trial.suggest_float(f"{key}.{name}", float(v[0]), float(v[1]),
                                                   log=kind == "log_float")
        steps.append({"method": slot.method, **values})
    return Plan.from_dict({"version": 1, "steps": steps})
