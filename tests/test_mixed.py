"""Mixed precision and per-table embedding bits: the knapsack solvers against brute force and the
budget, the methods keeping a fragile layer wide, budgets respected in bytes, bad configs."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

import slimkit
from slimkit.eval.sensitivity import module_bytes
from slimkit.methods.quantize.embedding_budget import EmbeddingBudget
from slimkit.methods.quantize.mixed import MixedPrecision, Option, solve_exact, solve_greedy


def _cost(options, pick):
    return (sum(max(options[n][i].drop, 0.0) for n, i in pick.items()),
            sum(options[n][i].bytes for n, i in pick.items()))


def _brute(options, budget):
    best = None
    for combo in itertools.product(*(range(len(o)) for o in options.values())):
        pick = dict(zip(options, combo, strict=True))
        drop, size = _cost(options, pick)
        if size <= budget and (best is None or drop < best[0] - 1e-12):
            best = (drop, size)
    return best


def test_exact_solver_matches_brute_force_and_greedy_respects_budget() -> None:
    rng = random.Random(0)
    for _ in range(40):
        options = {f"l{i}": [Option("fp32", b, 0.0), Option("int8", b // 4, rng.random() * 0.01),
                             Option("bin", b // 30, rng.random() * 0.05 - 0.005)]
                   for i, b in enumerate(rng.randint(300, 5000) for _ in range(5))}
        budget = rng.randint(200, 12000)
        expected = _brute(options, budget)
        pick = solve_exact(options, budget)
        greedy = solve_greedy(options, budget)
        if expected is None:
            assert pick is None and greedy is None
            continue
        drop, size = _cost(options, pick)
        assert size <= budget and drop == pytest.approx(expected[0], abs=1e-12)
        assert _cost(options, greedy)[1] <= budget


@pytest.mark.parametrize("solver", [solve_exact, solve_greedy])
def test_solver_keeps_the_sensitive_layer_wide(solver) -> None:
    options = {"fragile": [Option("fp32", 1000, 0.0), Option("bin", 40, 0.2)],
               "robust": [Option("fp32", 1000, 0.0), Option("bin", 40, 0.001)]}
    assert solver(options, 1100) == {"fragile": 0, "robust": 1}
    assert solver(options, 2000) == {"fragile": 0, "robust": 0}
    assert solver(options, 79) is None


@pytest.fixture(scope="module")
def fragile(tiny_task) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tiny_task.build_model("dcnv2", embed_dim=8, hidden=[32, 32, 32])
    slimkit.compress_(model, slimkit.Plan(steps=(slimkit.Finetune(epochs=1, batch_size=256,
                                                                  lr=5e-3),)),
                      slimkit.Context(task=tiny_task))
    # Dead neuron 0 of tower.0.0 read by a huge weight: harmless in fp32, ruinous once rounded.
    with torch.no_grad():
        model.tower[0][0].weight[0].zero_()
        model.tower[0][0].bias[0] = -1.0
        model.tower[1][0].weight[:, 0] = 1e4
    return model.eval()


@pytest.mark.parametrize("solver", ["exact", "greedy"])
def test_mixed_keeps_fragile_layer_fp32_within_budget(solver, fragile, tiny_task,
                                                      tmp_path) -> None:
    import copy

    model = copy.deepcopy(fragile)
    config = MixedPrecision(candidates=("fp32", "int8", "ternary"), budget=0.3, solver=solver)
    info = slimkit.compress_(model, slimkit.Plan(steps=(config,)),
                             slimkit.Context(task=tiny_task))[0].info
    assert info["choices"]["tower.1.0"] == "fp32"
    assert sum(c != "fp32" for c in info["choices"].values()) == 5
    assert info["bytes_after"] <= info["budget_bytes"] == int(0.3 * info["bytes_before"])
    assert info["bytes_after"] == sum(module_bytes(model.get_submodule(n))
                                      for n in info["choices"])
    assert info["measured_drop"] < 0.02 and "head" in info["kept_fp32"]
    x = tiny_task.example_inputs(16)
    with torch.inference_mode():
        out = model(*x)
        assert torch.equal(slimkit.load(slimkit.save(model, tmp_path / "m")).model(*x), out)


def test_mixed_budget_too_small_is_an_error(make_model, tiny_task) -> None:
    model = make_model("deepfm")
    with pytest.raises(slimkit.SlimkitError, match="smallest reachable"):
        slimkit.compress_(model, slimkit.Plan(steps=(MixedPrecision(budget_bytes=10),)),
                          slimkit.Context(task=tiny_task))


@pytest.mark.parametrize("budget_bytes", [2400, 3500, 6000])
def test_embedding_budget_respected_in_bytes(budget_bytes, make_model, tiny_task,
                                             tmp_path) -> None:
    model = make_model("deepfm")
    config = EmbeddingBudget(bits=(32, 8, 4, 2), budget_bytes=budget_bytes)
    info = slimkit.compress_(model, slimkit.Plan(steps=(config,)),
                             slimkit.Context(task=tiny_task))[0].info
    tables = info["tables"]
    assert set(tables) == {"embeddings.0", "embeddings.1", "embeddings.2", "embeddings.3", "bag"}
    assert info["bytes_after"] == sum(t["bytes"] for t in tables.values()) <= budget_bytes
    assert info["bytes_after"] == sum(module_bytes(model.get_submodule(n)) for n in tables)
    assert "linear.0" in info["skipped_narrow"]
    for name, t in tables.items():
        module = model.get_submodule(name)
        assert (t["bits"] == 32) == isinstance(module, torch.nn.Embedding | torch.nn.EmbeddingBag)
        assert t["bits"] == getattr(module, "bits", 32)
    x = tiny_task.example_inputs(16)
    with torch.inference_mode():
        out = model(*x)
        assert torch.equal(slimkit.load(slimkit.save(model, tmp_path / "m")).model(*x), out)


def test_embedding_budget_fraction_and_infeasible(make_model, tiny_task) -> None:
    model = make_model("deepfm")
    info = slimkit.compress_(model, slimkit.Plan(steps=(EmbeddingBudget(budget=0.4, bits=(8,)),)),
                             slimkit.Context(task=tiny_task))[0].info
    assert {t["bits"] for t in info["tables"].values()} == {8}
    assert info["bytes_after"] <= info["budget_bytes"] == int(0.4 * info["bytes_before"])
    with pytest.raises(slimkit.SlimkitError, match="smallest reachable"):
        slimkit.compress_(make_model("deepfm"),
                          slimkit.Plan(steps=(EmbeddingBudget(budget=0.3, bits=(8,)),)),
                          slimkit.Context(task=tiny_task))


@pytest.mark.parametrize("cls,data", [
    (MixedPrecision, {"budget": 0.0}), (MixedPrecision, {"budget": 1.5}),
    (MixedPrecision, {"budget_bytes": -1}), (MixedPrecision, {"candidates": []}),
    (MixedPrecision, {"candidates": ["int8", "int8"]}),
    (MixedPrecision, {"candidates": ["int3"]}), (MixedPrecision, {"candidates": ["finetune"]}),
    (MixedPrecision, {"solver": "random"}),
    (EmbeddingBudget, {"bits": [3]}), (EmbeddingBudget, {"bits": [4, 4]}),
    (EmbeddingBudget, {"bits": []}), (EmbeddingBudget, {"budget": 2.0}),
    (EmbeddingBudget, {"min_dim": 0}), (EmbeddingBudget, {"solver": "dp"}),
])
def test_bad_values_raise_config_error(cls, data) -> None:
    with pytest.raises(slimkit.ConfigError):
        cls.from_dict({"method": cls.method, **data})


def test_plans_round_trip() -> None:
    plan = slimkit.Plan(steps=(MixedPrecision(candidates=("fp32", "binary"), budget=0.2),
                               EmbeddingBudget(bits=(32, 4), budget_bytes=1000)))
    assert slimkit.Plan.from_yaml(plan.to_yaml()) == plan
