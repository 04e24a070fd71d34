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


def test_resume_refuses_a_different_run_and_keeps_its_stages(tmp_path, tiny_task,
                                                             make_model) -> None:
    plan = slimkit.Plan(steps=(slimkit.DynamicInt8(),))
    run_plan(make_model(), tiny_task, plan, tmp_path, ctx=slimkit.Context(task=tiny_task),
             title="t", measure_memory=False)
    stages = sorted(p.name for p in (tmp_path / "stages").iterdir())
    for ctx_seed, other in ((1, plan), (0, slimkit.Plan(steps=(slimkit.EmbeddingQuant(),)))):
        with pytest.raises(slimkit.SlimkitError, match="different run"):
            run_plan(None, tiny_task, other, tmp_path, ctx=slimkit.Context(
                task=tiny_task, seed=ctx_seed), title="t", resume=True, measure_memory=False)
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == stages


def test_training_after_int8_quantization_is_refused(tiny_task, make_model) -> None:
    plan = slimkit.Plan(steps=(slimkit.DynamicInt8(), slimkit.Finetune(epochs=0.1)))
    with pytest.raises(slimkit.SlimkitError, match="before quantize"):
        slimkit.compress_(make_model(), plan, slimkit.Context(task=tiny_task))
