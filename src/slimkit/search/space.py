"""A search space: ordered plan slots, each a registered method that may be optional, with
parameters to search (`float: [lo, hi]`, `int: [lo, hi]`, `choice: [...]`) and fixed ones.

    steps:
    - method: prune.structured
      optional: true
      params: {ratio: {float: [0.2, 0.7]}, criterion: {choice: [l2, taylor]}}
      fixed: {targets: {names: [tower.*, head]}}
    - method: quantize.embedding
      params: {bits: {choice: [8, 4, 2]}}
      sensitivity: {bits: 2}

`sensitivity` (optional) narrows the space before the search: the step is applied with these
settings to one targeted layer at a time, and a layer that alone costs more than the quality
budget is excluded from the step's targets for the whole search (see search/narrow.py).

The empty plan is no candidate (it is the baseline, measured already): when every slot is
optional, the last one is used without asking whenever no slot before it was (`forced`).
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
    sensitivity: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"method": self.method, "optional": self.optional,
                                "params": self.params, "fixed": self.fixed}
        if self.sensitivity is not None:
            data["sensitivity"] = self.sensitivity
        return data


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    slots: tuple[Slot, ...]

    @classmethod
    def from_dict(cls, data: Any) -> SearchSpace:
        if not isinstance(data, dict) or not isinstance(data.get("steps"), list) \
                or not data["steps"]:
            raise ConfigError("steps", data, "a mapping with a non-empty list of steps")
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
            fixed = step.get("fixed", {}) or {}
            sensitivity = step.get("sensitivity")
            for key, value in (("fixed", fixed), ("sensitivity", sensitivity)):
                if value is not None and not isinstance(value, dict):
                    raise ConfigError(f"{field}.{key}", value, "a mapping of parameter values")
            unknown = set(step) - {"method", "optional", "params", "fixed", "sensitivity"}
            if unknown:
                raise ConfigError(f"{field}.{sorted(unknown)[0]}", step[sorted(unknown)[0]],
                                  "one of method, optional, params, fixed, sensitivity")
            config_cls, _ = lookup(method)
            if sensitivity and "targets" not in {f.name for f in dataclasses.fields(config_cls)}:
                raise ConfigError(f"{field}.sensitivity", sensitivity,
                                  "nothing: only methods with a targets field are probed per layer")
            slot = Slot(str(method), optional, dict(params), dict(fixed),
                        None if sensitivity is None else dict(sensitivity))
            _check_buildable(slot, field)
            slots.append(slot)
        return cls(tuple(slots))

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [slot.to_dict() for slot in self.slots]}

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        import yaml

        return cls.from_dict(yaml.safe_load(Path(path).read_text()))


def _check_buildable(slot: Slot, field: str) -> None:
    """Fail before any trial runs: both ends of every range and every choice must build a valid
    step (with the other parameters at their lowest value)."""
    lowest = {name: next(iter(spec.values()))[0] for name, spec in slot.params.items()}
    variants = [{}] + [{name: v} for name, spec in slot.params.items()
                       for v in next(iter(spec.values()))]
    if slot.sensitivity:
        variants.append(dict(slot.sensitivity))
    for variant in variants:
        values = {**slot.fixed, **lowest, **variant}
        try:
            Plan.from_dict({"version": 1, "steps": [{"method": slot.method, **values}]})
        except ConfigError as exc:
            raise ConfigError(f"{field}.{exc.field.split('.', 1)[-1]}", exc.value,
                              exc.expected, unknown=exc.unknown) from None


def forced(space: SearchSpace, index: int, chosen: int) -> bool:
    """Whether optional slot `index` is used without asking, `chosen` steps being picked before
    it: the last slot, when every slot is optional and none before it was picked. So the empty
    plan is never proposed, no trial (and no budget) is spent or pruned for it, and the sampler
    sees a conditional parameter (Optuna's samplers take a parameter a trial may not have).
    The price: with n optional slots, that slot alone is drawn with chance 2**-(n-1) at random,
    not 1 / (2**n - 1); the other non-empty plans keep equal chances among themselves."""
    return chosen == 0 and index == len(space.slots) - 1 and \
        all(slot.optional for slot in space.slots)


def _used(params: dict[str, Any], space: SearchSpace, index: int, chosen: int,
          ask: Any = None) -> bool:
    slot = space.slots[index]
    key = f"{index}.{slot.method}.use"
    if not slot.optional:
        return True
    if ask is None and key in params:  # as asked (a study begun before slots were forced)
        return bool(params[key])
    if forced(space, index, chosen):
        return True
    return bool(ask(key, [True, False])) if ask is not None else False


def suggest_plan(trial: Any, space: SearchSpace) -> Plan:
    """The plan an Optuna trial picks from `space` (parameter names are `i.method.param`); it
    has at least one step (see `forced`)."""
    steps: list[dict[str, Any]] = []
    for i, slot in enumerate(space.slots):
        key = f"{i}.{slot.method}"
        if not _used({}, space, i, len(steps), trial.suggest_categorical):
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


def describe(params: dict[str, Any], space: SearchSpace) -> str:
    """`prune.magnitude(sparsity=0.62) > quantize.embedding(bits=4)`: the steps a trial's
    parameters choose, with the searched values only (fixed ones are in the plan)."""
    parts: list[str] = []
    for i, slot in enumerate(space.slots):
        key = f"{i}.{slot.method}"
        if not _used(params, space, i, len(parts)):
            continue
        args = ", ".join(f"{name}={_short(params[f'{key}.{name}'])}" for name in slot.params
                         if f"{key}.{name}" in params)
        parts.append(f"{slot.method}({args})" if args else slot.method)
    return " > ".join(parts) or "(no compression)"


def _short(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value
