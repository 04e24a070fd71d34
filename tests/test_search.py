"""Automatic search: space validation, every trial recorded, resume from the same storage,
sensitivity narrowing, early stop of hopeless trials, Pareto front and ranks."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import slimkit

optuna = pytest.importorskip("optuna")

from slimkit.core import compress_  # noqa: E402
from slimkit.core.plan import Plan  # noqa: E402
from slimkit.report.search_html import write_search_report  # noqa: E402
from slimkit.search import SearchSpace, auto, narrow  # noqa: E402
from slimkit.search.records import nondominated_ranks, pareto_front  # noqa: E402
from slimkit.search.space import describe, suggest_plan  # noqa: E402
from slimkit.search.trial import Hopeless, run_plan_trial  # noqa: E402

SPACE = {"steps": [
    {"method": "prune.structured", "optional": True,
     "params": {"ratio": {"float": [0.2, 0.7]}},
     "fixed": {"targets": {"names": ["tower.*", "head"]}}},
    {"method": "quantize.embedding", "optional": True, "params": {"bits": {"choice": [8, 4]}}},
]}


def test_space_errors_name_the_field() -> None:
    with pytest.raises(slimkit.ConfigError, match=r"steps\[0\].method"):
        SearchSpace.from_dict({"steps": [{"method": "prune.magic"}]})
    with pytest.raises(slimkit.ConfigError, match=r"steps\[0\].params.ratio"):
        SearchSpace.from_dict({"steps": [{"method": "prune.structured",
                                          "params": {"ratio": {"between": [0, 1]}}}]})
    # The upper end of a range is checked too, before any trial runs.
    with pytest.raises(slimkit.ConfigError, match=r"steps\[0\].sparsity.*1.5"):
        SearchSpace.from_dict({"steps": [{"method": "prune.magnitude",
                                          "params": {"sparsity": {"float": [0.5, 1.5]}}}]})
    with pytest.raises(slimkit.ConfigError, match=r"steps\[0\].bits.*3"):
        SearchSpace.from_dict({"steps": [{"method": "quantize.embedding",
                                          "params": {"bits": {"choice": [8, 3]}}}]})
    with pytest.raises(slimkit.ConfigError, match=r"steps\[0\].sensitivity"):
        SearchSpace.from_dict({"steps": [{"method": "distill.logits",
                                          "sensitivity": {"epochs": 1.0}}]})
    with pytest.raises(slimkit.ConfigError, match=r"steps\[0\].fixd"):
        SearchSpace.from_dict({"steps": [{"method": "finetune", "fixd": {}}]})


def test_search_records_every_trial_and_resumes(make_model, tiny_task, tmp_path) -> None:
    space = SearchSpace.from_dict(SPACE)
    model = make_model("deepfm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    kw = dict(max_drop=0.05, out=tmp_path / "run", storage=storage, latency_batch=64)
    first = auto(model, tiny_task, space, trials=3, **kw)
    assert [r["number"] for r in first.finished] == [0, 1, 2]
    again = auto(model, tiny_task, space, trials=5, **kw)
    assert [r["number"] for r in again.finished] == [0, 1, 2, 3, 4]
    raw = ("number", "state", "plan", "params", "metrics", "bytes", "latency_ms", "drop",
           "artifact", "worker", "note")
    # The first trials are intact (ranks and the front may change as trials arrive).
    assert [{k: r[k] for k in raw} for r in again.trials[:3]] == \
        [{k: r[k] for k in raw} for r in first.trials]
    for key, value in model.state_dict().items():  # the input model is never modified
        assert torch.equal(value, before[key])
    for row in again.finished:
        if row["state"] == "COMPLETE":
            assert (tmp_path / "run" / row["artifact"] / "manifest.json").is_file()
            assert row["plan"]["version"] == 1 and row["steps"]
    measured = [r for r in again.trials if r["bytes"] is not None]
    feasible = [r for r in measured if r["drop"] <= 0.05]
    if feasible:
        assert again.best["bytes"] == min(r["bytes"] for r in feasible)
        assert again.best["rank"] == 1 and again.data["best_position"]["position"] >= 1
    assert again.pareto and all(r["rank"] == 1 for r in again.pareto)
    saved = json.loads((tmp_path / "run" / "search.json").read_text())
    assert [r["number"] for r in saved["trials"]] == [r["number"] for r in again.trials]
    assert saved["baseline"]["bytes"] > max(r["bytes"] for r in measured) or not measured
    # Every measured trial was timed interleaved with the baseline and its noise probe; its
    # latency_ms is the study's baseline latency over that paired ratio.
    base_ms = saved["baseline"]["latency_ms"]
    assert saved["threads"] >= 1 and saved["baseline"]["latency_band"] >= 0
    for row in saved["trials"]:
        if row["bytes"] is None:
            assert row["latency_verdict"] is None and row["latency_ratio"] is None
            continue
        assert row["latency_verdict"] in ("faster", "slower", "within noise")
        assert row["latency_ms"] == round(base_ms / row["latency_ratio"], 5)
        assert row["latency_band"] >= 0 and set(row["latency_timed_ms"]) == {"trial",
                                                                              "baseline"}
    # A study answers only to the target it was started with.
    with pytest.raises(slimkit.SlimkitError, match="max_drop"):
        auto(model, tiny_task, space, trials=5, **{**kw, "max_drop": 0.01})
    with pytest.raises(slimkit.SlimkitError, match="model"):
        auto(make_model("deepfm", seed=1), tiny_task, space, trials=5, **kw)


def test_the_empty_plan_is_never_proposed() -> None:
    space = SearchSpace.from_dict(SPACE)  # every slot optional
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    plans = set()
    for _ in range(200):
        trial = study.ask()
        plan = suggest_plan(trial, space)
        methods = tuple(s.method for s in plan.steps)
        assert methods == tuple(d.split("(")[0] for d in describe(trial.params, space)
                                .split(" > "))
        plans.add(methods)
        study.tell(trial, 0.0)
    # The last slot is used unasked when the first is not: every non-empty plan, no other.
    assert plans == {("prune.structured",), ("quantize.embedding",),
                     ("prune.structured", "quantize.embedding")}
    with pytest.raises(slimkit.ConfigError, match="non-empty list of steps"):
        SearchSpace.from_dict({"steps": []})


def test_narrowing_excludes_layers_over_the_budget(make_model, tiny_task) -> None:
    model = make_model("deepfm")
    space = SearchSpace.from_dict({"steps": [
        {"method": "quantize.embedding", "params": {"bits": {"choice": [8, 4]}},
         "sensitivity": {"bits": 2}}]})
    probed = narrow(model, tiny_task, space, max_drop=1.0)[1]
    drops = {r["layer"]: r["drop"] for r in probed if r["status"] == "measured"}
    assert all(r["reason"] for r in probed if r["status"] != "measured")
    assert len(drops) >= 4  # every embedding table was probed
    budget = sorted(drops.values())[len(drops) // 2]  # half the tables are over it
    narrowed, rows = narrow(model, tiny_task, space, max_drop=budget)
    excluded = {r["layer"] for r in rows if not r["kept"]}
    assert all(r["kept"] for r in rows if r["status"] != "measured")
    assert excluded == {layer for layer, d in drops.items() if d > budget} and excluded
    config = Plan.from_dict({"version": 1, "steps": [
        {"method": "quantize.embedding", "bits": 4, **narrowed.slots[0].fixed}]}).steps[0]
    candidate = copy.deepcopy(model)
    compress_(candidate, Plan(steps=(config,)), slimkit.Context(task=tiny_task))
    for layer in drops:
        untouched = type(candidate.get_submodule(layer)) is type(model.get_submodule(layer))
        assert untouched == (layer in excluded)


def test_hopeless_trial_stops_after_the_step_that_ruins_it(make_model, tiny_task,
                                                           tmp_path) -> None:
    model = make_model("deepfm")
    finetune = Plan.from_dict({"version": 1, "steps": [{"method": "finetune", "epochs": 3.0}]})
    compress_(model, finetune, slimkit.Context(task=tiny_task))  # a model with quality to lose
    base = tiny_task.evaluate(model, "valid")
    ruin = {"method": "prune.magnitude", "sparsity": 0.99, "targets": {"names": ["*"]}}
    then_quantize = Plan.from_dict({"version": 1, "steps": [
        ruin, {"method": "quantize.embedding", "bits": 8}]})
    seen: list[tuple[int, float]] = []
    with pytest.raises(Hopeless) as stop:
        run_plan_trial(model, model, tiny_task, then_quantize, baseline=base, max_drop=1e-4,
                       seed=0, path=tmp_path / "a", batch=64,
                       report=lambda step, drop: seen.append((step, drop)))
    assert stop.value.step == 0 and seen and seen[0][0] == 0
    assert not (tmp_path / "a").exists()  # nothing measured or saved for a stopped trial
    # With training still to come the bar is looser (10x the budget), so a small loss passes.
    drop = seen[0][1]
    then_train = Plan.from_dict({"version": 1, "steps": [
        ruin, {"method": "distill.logits", "epochs": 0.2}]})
    result = run_plan_trial(model, model, tiny_task, then_train, baseline=base,
                            max_drop=drop / 5, seed=0, path=tmp_path / "b", batch=64)
    assert (tmp_path / "b" / "manifest.json").is_file() and result["bytes"] > 0


def test_pareto_front_and_ranks() -> None:
    rows = [{"drop": 0.0, "bytes": 10, "latency_ms": 1.0},
            {"drop": 0.1, "bytes": 5, "latency_ms": 1.0},
            {"drop": 0.1, "bytes": 10, "latency_ms": 1.0},
            {"drop": 0.2, "bytes": 10, "latency_ms": 2.0}]
    assert pareto_front(rows) == rows[:2]
    assert nondominated_ranks(rows) == [1, 1, 2, 3]


def test_nsga2_searches_the_three_objectives(make_model, tiny_task, tmp_path) -> None:
    space = SearchSpace.from_dict(SPACE)
    result = auto(make_model("deepfm"), tiny_task, space, max_drop=0.05, trials=4,
                  out=tmp_path / "run", sampler="nsga2", latency_batch=64, sensitivity=False)
    study = optuna.load_study(study_name="slimkit", storage=result.data["storage"])
    assert len(study.directions) == 3 and len(result.finished) == 4
    for t in study.trials:  # values are (drop, bytes, latency), as the rows say
        row = next(r for r in result.trials if r["number"] == t.number)
        assert t.values == [row["drop"], row["bytes"], row["latency_ms"]]
    with pytest.raises(slimkit.SlimkitError, match="sampler"):  # a study keeps its sampler
        auto(make_model("deepfm"), tiny_task, space, max_drop=0.05, trials=5,
             out=tmp_path / "run", sampler="tpe", latency_batch=64, sensitivity=False)


def test_a_failing_probe_keeps_the_layer_and_says_why(make_model, tiny_task,
                                                      monkeypatch) -> None:
    from slimkit.eval import sensitivity

    real = sensitivity.compress_

    def flaky(model, plan, ctx, **kw):
        if plan.steps[0].targets.names == ("re:embeddings\\.1",):
            raise RuntimeError("probe crashed")
        return real(model, plan, ctx, **kw)

    monkeypatch.setattr(sensitivity, "compress_", flaky)
    space = SearchSpace.from_dict({"steps": [
        {"method": "quantize.embedding", "params": {"bits": {"choice": [8, 4]}},
         "sensitivity": {"bits": 2}}]})
    narrowed, rows = narrow(make_model("deepfm"), tiny_task, space, max_drop=-1.0)
    failed = [r for r in rows if r["status"] == "failed"]
    assert [(r["layer"], r["reason"], r["kept"], r["drop"]) for r in failed] == \
        [("embeddings.1", "RuntimeError: probe crashed", True, None)]
    # Every measured layer is over a negative budget and excluded; the failed one is not.
    excluded = narrowed.slots[0].fixed["targets"]["exclude"]
    assert "re:embeddings\\.1" not in excluded and "re:embeddings\\.0" in excluded


def test_a_crashing_trial_is_recorded_and_the_search_goes_on(make_model, tiny_task, tmp_path,
                                                             monkeypatch) -> None:
    from slimkit.search import objective

    real, calls = objective.run_plan_trial, []

    def crash_once(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("no such layer")
        return real(*args, **kw)

    monkeypatch.setattr(objective, "run_plan_trial", crash_once)
    space = SearchSpace.from_dict({"steps": [
        {"method": "quantize.embedding", "params": {"bits": {"choice": [8, 4]}}}]})
    result = auto(make_model("deepfm"), tiny_task, space, trials=2, max_drop=0.05,
                  out=tmp_path / "run", latency_batch=64, sensitivity=False,
                  write_page=write_search_report)
    first = result.trials[0]
    assert first["state"] == "FAIL" and first["error"] == "KeyError: 'no such layer'"
    assert first["note"] == "failed: KeyError: 'no such layer'"
    assert [r["state"] for r in result.trials[1:]] == ["COMPLETE", "COMPLETE"]
    saved = json.loads((tmp_path / "run" / "search.json").read_text())
    assert saved["trials"][0]["note"] == first["note"]
    assert "KeyError: 'no such layer'" in (tmp_path / "run" / "report.html").read_text()


def test_a_space_where_every_plan_fails_stops(make_model, tiny_task, tmp_path,
                                              monkeypatch) -> None:
    from slimkit.search import objective

    def crash(*args, **kw):
        raise RuntimeError("always")

    monkeypatch.setattr(objective, "run_plan_trial", crash)
    space = SearchSpace.from_dict({"steps": [
        {"method": "quantize.embedding", "params": {"bits": {"choice": [8, 4]}}}]})
    with pytest.raises(slimkit.SlimkitError, match=r"trials: the last 3 trials all failed "
                       r"\(last: failed: RuntimeError: always\)"):
        auto(make_model("deepfm"), tiny_task, space, trials=2, max_drop=0.05,
             out=tmp_path / "run", latency_batch=64, sensitivity=False)
