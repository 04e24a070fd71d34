"""The short texts the report prints: the byte unit, durations and a step's one-line summary."""

from __future__ import annotations

import pytest

import slimkit
from slimkit.core.config import lookup
from slimkit.report.units import UNIT_NOTE, format_bytes, format_duration

DEMO_PLAN = {"version": 1, "steps": [
    {"method": "prune.magnitude", "sparsity": 0.8, "schedule": "gradual", "epochs": 2.0,
     "lr": 0.0005, "targets": {"names": ["tower.*", "head", "cross.*"]}},
    {"method": "truncate.layers", "recover": "distill", "lr": 0.0005, "container": "tower",
     "drop": 1},
    {"method": "distill.logits", "lr": 0.0003},
    {"method": "quantize.dynamic_int8"},
    {"method": "quantize.embedding", "bits": 4},
]}


def test_bytes_are_binary_units() -> None:
    assert format_bytes(1_567_925) == "1.50 MiB"
    assert format_bytes(99_947) == "97.6 KiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1024**3 * 2.5) == "2.50 GiB"
    assert format_bytes(None) == "n/a"
    assert "1 KiB = 1024 bytes" in UNIT_NOTE


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "<1 s"), (0.27, "<1 s"), (6.25, "6.2 s"), (125, "2 min 5 s"), (3700, "1 h 1 min")])
def test_durations_never_read_zero(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_summary_of_the_demo_plan_is_short_human_text() -> None:
    steps = slimkit.Plan.from_dict(DEMO_PLAN).steps
    assert [s.summary() for s in steps] == [
        "prune.magnitude 80% gradual 2 ep lr=0.0005 targets=tower.*,head,cross.*",
        "truncate.layers recover=distill lr=0.0005 container=tower drop=1",
        "distill.logits lr=0.0003",
        "quantize.dynamic_int8",
        "quantize.embedding 4-bit",  # the amount shows even at its default
    ]
    for s in steps:
        assert "{" not in s.summary() and "'" not in s.summary() and "\n" not in s.summary()


def test_summary_is_the_same_for_equal_configs() -> None:
    cluster, _ = lookup("quantize.cluster")
    a, b = cluster(bits={"fc2": 3, "fc1": 5}), cluster(bits={"fc1": 5, "fc2": 3})
    assert a == b and a.summary() == b.summary() == "quantize.cluster bits=fc1:5,fc2:3"
    weight_only, _ = lookup("quantize.weight_only")
    text = weight_only(bits=3, algorithm="gptq", gptq={"block_size": 64},
                       targets={"names": ["mlp.*"], "exclude": ["head"]}).summary()
    assert text == ("quantize.weight_only 3-bit gptq gptq.block_size=64 targets=mlp.* "
                    "targets.exclude=head")
    structured, _ = lookup("prune.structured")
    assert structured(ratio=0.3333).summary() == "prune.structured 33.33%"
