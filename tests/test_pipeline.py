"""The staged runner: an interrupted run resumes after its last finished stage, same result."""

from __future__ import annotations

import json

import pytest

import slimkit
from slimkit.pipeline import run_plan

PLAN = slimkit.Plan(steps=(
    slimkit.Magnitude(sparsity=0.5),
    slimkit.Finetune(epochs=0.3, batch_size=256),
    slimkit.DynamicInt8(),
))


class Stop(Exception):
    pass


def test_interrupted_run_resumes_with_identical_result(tmp_path, tiny_task, make_model) -> None:
    full = run_plan(make_model(), tiny_task, PLAN, tmp_path / "full",
                    ctx=slimkit.Context(task=tiny_task), title="t", measure_memory=False)

    def stop_after_finetune(stage: dict) -> None:
        if stage["name"] == "finetune":
            raise Stop

    with pytest.raises(Stop):
        run_plan(make_model(), tiny_task, PLAN, tmp_path / "cut", ctx=slimkit.Context(
            task=tiny_task), title="t", measure_memory=False, on_stage=stop_after_finetune)
    progress = json.loads((tmp_path / "cut" / "progress.json").read_text())
    assert [s["name"] for s in progress["stages"]] == ["teacher", "prune.magnitude", "finetune"]
    assert not (tmp_path / "cut" / "metrics.json").exists()

    resumed = run_plan(None, tiny_task, PLAN, tmp_path / "cut", ctx=slimkit.Context(
        task=tiny_task), title="t", resume=True, measure_memory=False)
    assert [s["metrics"] for s in resumed["stages"]] == [s["metrics"] for s in full["stages"]]
