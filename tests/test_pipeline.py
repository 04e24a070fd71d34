"""The staged runner: an interrupted run resumes after its last finished stage, same result."""

from __future__ import annotations

import json

import pytest
import torch

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


def test_metrics_carry_noise_verdicts_and_regressions(tmp_path, tiny_task) -> None:
    torch.manual_seed(0)
    model = tiny_task.build_model("deepfm", embed_dim=4, hidden=[16]).eval()
    plan = slimkit.Plan(steps=(slimkit.EmbeddingQuant(bits=8),))  # narrow tables: bytes grow
    metrics = run_plan(model, tiny_task, plan, tmp_path, ctx=slimkit.Context(task=tiny_task),
                       title="t", measure_memory=False, threads=1)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["threads"] == metrics["threads"] == 1
    runtimes = set(saved["noise"])
    assert "torch" in runtimes and runtimes <= {"torch", "onnxruntime"}
    base, stage = saved["stages"]
    for runtime in runtimes:
        assert set(saved["noise"][runtime]) == {"1", "512"}
        itself = base["speed"][runtime]["1"]["vs_baseline"]
        assert (itself["ratio"], itself["verdict"]) == (1.0, "within noise")
        for batch, versus in stage["speed"][runtime].items():
            assert versus["vs_baseline"] == versus["vs_previous"]  # the previous is the base
            assert versus["vs_baseline"]["verdict"] in ("faster", "slower", "within noise")
            lat = (stage if runtime == "torch" else stage["onnxruntime"])["latency_ms"][batch]
            assert set(lat) == {"median", "p90", "spread"}
    assert base["regressions"] == []
    grown = [r for r in stage["regressions"] if r["what"] == "bytes"]
    assert stage["bytes"] > base["bytes"] and len(grown) == 1
    assert grown[0]["change"] > 1 and "width 4" in grown[0]["reason"]
    slower = [r for r in stage["regressions"] if r["what"] == "latency"]
    assert all(stage["speed"][r["runtime"]][r["batch"]]["vs_previous"]["verdict"] == "slower"
               for r in slower)
