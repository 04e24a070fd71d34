"""Plans: exact YAML/JSON round trips and one-line errors naming the field and the value."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit import ConfigError, Plan, SlimkitError, Targets

FULL = """\
version: 1
steps:
- method: prune.magnitude
  sparsity: 0.75
  scope: global
  targets: {names: ['tower.*'], exclude: ['re:.*head']}
- method: truncate.layers
  container: tower
  indices: [1]
  recover: none
- method: distill.logits
  temperature: 3.0
- method: quantize.dynamic_int8
- method: quantize.embedding
  bits: 8
- method: finetune
  epochs: 0.5
"""


def test_yaml_and_json_round_trip_exactly() -> None:
    plan = Plan.from_yaml(FULL)
    assert Plan.from_yaml(plan.to_yaml()) == plan
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.to_dict() == Plan.from_json(plan.to_json()).to_dict()
    assert plan.steps[0].targets.exclude == ("re:.*head",)


def test_every_registered_method_round_trips_with_defaults() -> None:
    for name in slimkit.method_names():
        config_cls, _ = slimkit.core.lookup(name)
        extra = {"truncate.layers": {"container": "tower", "drop": 1},
                 "truncate.hidden": {"width": 16}}.get(name, {})
        plan = Plan(steps=(config_cls(**extra),))
        assert Plan.from_yaml(plan.to_yaml()) == plan


@pytest.mark.parametrize(("text", "message"), [
    ("steps: [{method: prune.magic}]", "steps[0].method: expected a known method"),
    ("steps: [{method: prune.magnitude, sparsity: 1.5}]",
     "steps[0].sparsity: expected a value in [0.0, 1.0), got 1.5"),
    ("steps: [{method: prune.magnitude, sparsity: lots}]",
     "steps[0].sparsity: expected a number, got 'lots'"),
    ("steps: [{method: quantize.embedding, bits: 3}]", "steps[0].bits: expected one of 8, 4, 2"),
    ("steps: [{method: prune.magnitude, sparsity: 0.5, sparsty: 0.4}]",
     "steps[0].sparsty: unknown field"),
    ("steps: [{method: finetune, epochs: true}]", "steps[0].epochs: expected a number, got True"),
    ("steps: [{method: prune.magnitude, targets: {names: 3}}]",
     "steps[0].targets.names: expected a list, got 3"),
    ("steps: [{method: prune.magnitude, targets: {names: ['re:(']}}]",
     "steps[0].targets.names[0]: expected a valid regex"),
    ("version: 2\nsteps: []", "version: expected plan version 1, got 2"),
    ("steps: {method: finetune}", "steps: expected a list of steps"),
    ("steps: [{method: truncate.layers, container: tower}]", "steps[0].drop: expected > 0"),
    ("steps: [", "plan: not valid YAML"),
    ("steps: [{method: quantize.embedding, bits: 4.0}]", "steps[0].bits: expected one of"),
    ("version: true\nsteps: []", "version: expected plan version 1"),
    ("steps: [{method: truncate.layers, drop: 1}]", "steps[0].container: expected a value"),
    ("steps: [{method: truncate.layers, container: t, indices: [-1]}]", "steps[0].indices"),
])
def test_bad_plans_name_field_and_value(text: str, message: str) -> None:
    with pytest.raises(SlimkitError) as info:
        Plan.from_yaml(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_config_errors_are_value_errors_not_asserts() -> None:
    with pytest.raises(ValueError):
        slimkit.Magnitude(sparsity=-0.1)
    with pytest.raises(ConfigError):
        slimkit.LogitsKD(temperature=0.0)


def test_targets_select_by_glob_regex_type_and_exclude() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(),
                          nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)))
    names = lambda t: [n for n, _ in t.select(model, ("Linear",))]  # noqa: E731
    assert names(Targets()) == ["0", "2.0", "2.1"]
    assert names(Targets(names=("2.*",))) == ["2.0", "2.1"]
    assert names(Targets(names=("re:2\\.\\d",), exclude=("2.1",))) == ["2.0"]
    assert names(Targets(types=("ReLU",))) == ["1"]  # explicit types replace the default


def _configs_and_choice_fields():
    import typing

    from slimkit.core.config import lookup, method_names

    for name in method_names():
        cls, _ = lookup(name)
        for field, tp in typing.get_type_hints(cls).items():
            if typing.get_origin(tp) is typing.Literal:
                yield cls, field


REQUIRED = {"truncate.layers": {"container": "tower"}, "truncate.hidden": {"width": 16}}


@pytest.mark.parametrize(("cls", "field"), list(_configs_and_choice_fields()),
                         ids=lambda v: getattr(v, "method", v))
def test_python_configs_are_checked_like_yaml(cls, field) -> None:
    """Every choice field refuses an out-of-choice value at construction, with the same message
    a YAML plan gets (a near-miss spelling, a wrong case, a float for an int choice)."""
    from slimkit.core.errors import ConfigError

    base = REQUIRED.get(cls.method, {})
    for bad in ("Not-A-Choice", 4.0):
        with pytest.raises(ConfigError) as python:
            cls(**base, **{field: bad})
        with pytest.raises(ConfigError) as yaml_plan:
            cls.from_dict({"method": cls.method, **base, field: bad})
        assert str(python.value).startswith(f"{field}: expected one of")
        assert str(yaml_plan.value) == f"{cls.method}.{python.value}"


def test_python_configs_normalise_values_like_yaml() -> None:
    config = slimkit.Magnitude(sparsity=0.5, targets=slimkit.Targets(names=["tower.*"]))
    assert config == slimkit.Magnitude.from_dict(
        {"method": "prune.magnitude", "sparsity": 0.5, "targets": {"names": ["tower.*"]}})
    assert isinstance(slimkit.Finetune(epochs=1).epochs, float)
    with pytest.raises(slimkit.ConfigError, match="epochs: expected a number"):
        slimkit.Finetune(epochs="1")


def test_a_step_that_needs_data_is_refused_without_a_task_before_any_work() -> None:
    from torch import nn

    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
    before = [p.clone() for p in model.parameters()]
    plan = slimkit.Plan(steps=(slimkit.Magnitude(sparsity=0.5), slimkit.Finetune(epochs=0.1)))
    with pytest.raises(slimkit.SlimkitError, match=r"steps\[1\] \(finetune\): needs data"):
        slimkit.compress_(model, plan, slimkit.Context())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
