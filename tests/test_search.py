"""Automatic search: plans from a space, budget, resume from the same storage, Pareto front."""

from __future__ import annotations

import pytest

import slimkit

optuna = pytest.importorskip("optuna")

from slimkit.search import SearchSpace, auto  # noqa: E402
from slimkit.search.study import pareto_front  # noqa: E402

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


def test_search_records_every_trial_and_resumes(make_model, tiny_task, tmp_path) -> None:
    space = SearchSpace.from_dict(SPACE)
    model = make_model("deepfm")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = auto(model, tiny_task, space, max_drop=0.05, trials=3, out=tmp_path / "run",
                 storage=storage, latency_batch=64)
    assert [r["number"] for r in first.trials] == [0, 1, 2]
    again = auto(model, tiny_task, space, max_drop=0.05, trials=5, out=tmp_path / "run",
                 storage=storage, latency_batch=64)
    assert [r["number"] for r in again.trials] == [0, 1, 2, 3, 4]
    assert again.trials[:3] == first.trials  # the first trials are intact
    for row in again.trials:
        assert (tmp_path / "run" / "trials" / f"{row['number']:04d}" / "manifest.json").is_file()
    if again.best is not None:
        feasible = [r for r in again.trials if r["drop"] <= 0.05]
        assert again.best["bytes"] == min(r["bytes"] for r in feasible)
    assert again.pareto and all(r in again.trials for r in again.pareto)


def test_pareto_front_keeps_only_non_dominated() -> None:
    rows = [{"drop": 0.0, "bytes": 10, "latency_ms": 1.0},
            {"drop": 0.1, "bytes": 5, "latency_ms": 1.0},
            {"drop": 0.1, "bytes": 10, "latency_ms": 1.0}]
    assert pareto_front(rows) == rows[:2]
