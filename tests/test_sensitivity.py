"""Per-layer sensitivity: leaves the input model alone, ranks a deliberately fragile layer first,
and its chart renders."""

from __future__ import annotations

import copy

import pytest
import torch

import slimkit
from slimkit.core import Targets
from slimkit.eval.sensitivity import layer_sensitivity, module_bytes
from slimkit.methods.quantize.binary import BinaryWeights
from slimkit.report.sensitivity import sensitivity_chart


def fragile_model(task) -> torch.nn.Module:
    """A trained DCN-v2 whose tower.1.0 breaks under per-channel rounding: neuron 0 of tower.0.0
    is dead (always 0 after ReLU), so a huge weight reading it changes nothing in fp32, but it
    sets every row's quantization scale and rounds all the other weights of tower.1.0 away."""
    torch.manual_seed(0)
    model = task.build_model("dcnv2", embed_dim=8, hidden=[32, 32, 32])
    slimkit.compress_(model, slimkit.Plan(steps=(slimkit.Finetune(epochs=1, batch_size=256,
                                                                  lr=5e-3),)),
                      slimkit.Context(task=task))
    with torch.no_grad():
        model.tower[0][0].weight[0].zero_()
        model.tower[0][0].bias[0] = -1.0
        model.tower[1][0].weight[:, 0] = 1e4
    return model


@pytest.fixture(scope="module")
def fragile(tiny_task) -> torch.nn.Module:
    return fragile_model(tiny_task)


def _snapshot(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("config", [slimkit.DynamicInt8(), BinaryWeights(kind="ternary")])
def test_fragile_layer_ranks_first_and_input_untouched(config, fragile, tiny_task) -> None:
    before = _snapshot(fragile)
    types = [type(m) for m in fragile.modules()]
    rng = torch.get_rng_state()
    rows = layer_sensitivity(fragile, tiny_task, config)
    assert rows[0]["layer"] == "tower.1.0" and rows[0]["drop"] > 0.05
    assert all(r["drop"] < rows[0]["drop"] / 5 for r in rows[1:])
    assert [r["drop"] for r in rows] == sorted((r["drop"] for r in rows), reverse=True)
    # The 1-output head is skipped by both methods; embeddings are not Linear.
    assert {r["layer"] for r in rows} == {"tower.0.0", "tower.1.0", "tower.2.0",
                                          "cross.0.linear", "cross.1.linear", "cross.2.linear"}
    assert all(r["bytes_after"] < r["bytes_before"] for r in rows)
    after = fragile.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m) for m in fragile.modules()] == types
    assert torch.equal(torch.get_rng_state(), rng)


def test_factory_and_explicit_layers(make_model, tiny_task) -> None:
    model = make_model("deepfm")
    seen = []

    def factory(name: str) -> slimkit.EmbeddingQuant:
        seen.append(name)
        return slimkit.EmbeddingQuant(bits=2, targets=Targets(names=(name,)))

    rows = layer_sensitivity(model, tiny_task, factory,
                             layers=["embeddings.0", "linear.0", "tower.0.0"])
    # linear.0 is 1 wide (kept fp32) and tower.0.0 is no table: both left out.
    assert seen == ["embeddings.0", "linear.0", "tower.0.0"]
    assert [r["layer"] for r in rows] == ["embeddings.0"]
    assert rows[0]["bytes_before"] == module_bytes(model.embeddings[0])
    assert rows[0]["bytes_after"] == 201 * 2 + 201 * 4  # 8 dims x 2 bits + fp16 scale, offset


def test_sensitivity_on_a_copy_leaves_edit_log(make_model, tiny_task) -> None:
    model = make_model("deepfm")
    model_copy = copy.deepcopy(model)
    layer_sensitivity(model, tiny_task, slimkit.DynamicInt8(), layers=["tower.0.0"])
    assert slimkit.core.edit_log(model) == slimkit.core.edit_log(model_copy) == []


def test_chart_is_png(fragile, tiny_task) -> None:
    rows = layer_sensitivity(fragile, tiny_task, slimkit.DynamicInt8(),
                             layers=["tower.0.0", "tower.1.0"])
    png = sensitivity_chart({"int8": rows, "ternary": rows[:1]})
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert sensitivity_chart([]).startswith(b"\x89PNG")


def test_every_layer_without_a_row_is_listed_with_its_status(make_model, tiny_task) -> None:
    model = make_model("deepfm")
    rows = layer_sensitivity(model, tiny_task, slimkit.DynamicInt8(),
                             layers=["tower.0.0", "embeddings.0", "head"])
    assert [r["layer"] for r in rows] == ["tower.0.0"]
    status = {s["layer"]: (s["status"], s["reason"]) for s in rows.skipped}
    assert status["embeddings.0"] == ("not applicable",
                                      "quantize.dynamic_int8: targets match no Linear module")
    assert status["head"][0] == "unchanged"  # the 1-output head stays fp32
    assert rows.failures == []


def test_a_failing_layer_is_recorded_with_its_reason(make_model, tiny_task, monkeypatch,
                                                     caplog) -> None:
    from slimkit.core import SlimkitError
    from slimkit.eval import sensitivity

    real = sensitivity.compress_

    def flaky(model, plan, ctx, **kw):  # fails on one layer, as a buggy method would
        names = plan.steps[0].targets.names
        if names == ("tower.1.0",):
            raise RuntimeError("boom\nsecond line")
        if names == ("tower.2.0",):
            raise SlimkitError("quantize.dynamic_int8: scale out of range")
        return real(model, plan, ctx, **kw)

    monkeypatch.setattr(sensitivity, "compress_", flaky)
    model = make_model("deepfm")
    with caplog.at_level("WARNING", logger=sensitivity.__name__):
        rows = layer_sensitivity(model, tiny_task, slimkit.DynamicInt8(),
                                 layers=["tower.0.0", "tower.1.0", "tower.2.0"])
    assert [r["layer"] for r in rows] == ["tower.0.0"]
    # A SlimkitError other than "targets match no module" is a failure too, never "n/a".
    assert rows.failures == [
        {"layer": "tower.1.0", "type": "Linear", "method": "quantize.dynamic_int8",
         "status": "failed", "reason": "RuntimeError: boom"},
        {"layer": "tower.2.0", "type": "Linear", "method": "quantize.dynamic_int8",
         "status": "failed", "reason": "SlimkitError: quantize.dynamic_int8: scale out of range"}]
    assert sum("tower.1.0 failed: RuntimeError: boom" in m for m in caplog.messages) == 1
    from slimkit.report.sensitivity import sensitivity_markdown

    table = sensitivity_markdown({"int8": rows})
    assert "| int8 | tower.1.0 | quantize.dynamic_int8 | – | – | failed: RuntimeError: boom |" \
        in table and "| tower.0.0 |" in table
    assert sensitivity_chart({"int8": rows}).startswith(b"\x89PNG")
    failed_only = sensitivity.SensitivityResult([], rows.skipped)
    assert sensitivity_chart(failed_only).startswith(b"\x89PNG")
