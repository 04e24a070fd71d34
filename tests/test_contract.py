"""Contract matrix: every method on every toy model runs, stays finite, shrinks where it claims,
is deterministic for a seed, survives save/load exactly, and its plan round-trips."""

from __future__ import annotations

import pytest
import torch

import slimkit
from slimkit.export import artifact_bytes

QUICK = {"epochs": 0.25, "batch_size": 256}
METHODS = {
    "prune.magnitude": (slimkit.Magnitude(sparsity=0.7), True),
    "prune.magnitude.gradual": (slimkit.Magnitude(sparsity=0.7, schedule="gradual",
                                                  update_every=2, **QUICK), True),
    "quantize.dynamic_int8": (slimkit.DynamicInt8(), True),
    "quantize.embedding": (slimkit.EmbeddingQuant(bits=4), True),
    "distill.logits": (slimkit.LogitsKD(**QUICK), False),
    "truncate.layers": (slimkit.Layers(container="tower", drop=1, recover="distill", **QUICK),
                        True),
    "finetune": (slimkit.Finetune(**QUICK), False),
    "prune.structured": (slimkit.Structured(ratio=0.5, steps=2, recover="finetune", **QUICK),
                         True),
    "quantize.qat": (slimkit.QAT(**QUICK), True),
    "quantize.cluster": (slimkit.Cluster(**QUICK), True),
    "quantize.weight_only": (slimkit.WeightOnly(bits=4, group_size=16), True),
    "quantize.weight_only.gptq": (slimkit.WeightOnly(bits=3, group_size=32, algorithm="gptq",
                                                     calibration_batches=2), True),
    "quantize.binary": (slimkit.BinaryWeights(kind="xnor", **QUICK), True),
    "quantize.mixed": (slimkit.MixedPrecision(budget=0.3), True),
    "quantize.embedding_budget": (slimkit.EmbeddingBudget(budget=0.3), True),
    "quantize.static_int8": (slimkit.StaticInt8(calibration_batches=4), True),
    "quantize.static_int8.ort": (slimkit.StaticInt8(calibration_batches=4, backend="onnxruntime",
                                                    observer="kl"), True),
}


# Methods for text encoders: their contract runs on a tiny BERT in tests/test_encoder_methods.py.
TEXT_ONLY = {"distill.encoder", "truncate.vocab"}


def test_every_packaged_method_has_a_row() -> None:
    packaged = {getattr(slimkit.methods, n).method for n in slimkit.methods.__all__}
    assert packaged - TEXT_ONLY <= {config.method for config, _ in METHODS.values()}


def _apply(make_model, task, model_kind, config, seed=0):
    model = make_model(model_kind)
    ctx = slimkit.Context(task=task, seed=seed)
    slimkit.compress_(model, slimkit.Plan(steps=(config,)), ctx)
    return model


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name, make_model, tiny_task, model_kind, tmp_path) -> None:
    config, shrinks = METHODS[name]
    model = _apply(make_model, tiny_task, model_kind, config)
    x = tiny_task.example_inputs(32)
    with torch.inference_mode():
        out = model(*x)
    assert out.shape == (32,) and torch.isfinite(out).all()
    metrics = tiny_task.evaluate(model)
    assert 0.0 <= metrics["auc"] <= 1.0

    path = slimkit.save(model, tmp_path / "after")
    base = artifact_bytes(slimkit.save(make_model(model_kind), tmp_path / "before"))
    if shrinks:
        assert artifact_bytes(path) < base
    with torch.inference_mode():
        assert torch.equal(slimkit.load(path).model(*x), out)

    again = _apply(make_model, tiny_task, model_kind, config)
    with torch.inference_mode():
        assert torch.equal(again(*x), out)

    plan = slimkit.Plan(steps=(config,))
    assert slimkit.Plan.from_yaml(plan.to_yaml()) == plan
