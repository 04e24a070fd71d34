"""A language model's head tied to its input embedding: methods leave the pair alone unless
asked, and refuse when one side is named, so the tie (one table, stored once) survives."""

from __future__ import annotations

import pytest
import torch

import slimkit
from slimkit.models import tiny_model


def _llama():
    return tiny_model("llama", 0, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, vocab_size=64)


@pytest.mark.parametrize("step", [slimkit.Magnitude(sparsity=0.7),
                                  slimkit.WeightOnly(bits=4, group_size=16),
                                  slimkit.DynamicInt8()],
                         ids=["magnitude", "weight_only", "dynamic_int8"])
def test_default_targets_keep_the_tie(step, tmp_path) -> None:
    model = _llama()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    table = model.model.embed_tokens.weight.detach().clone()
    slimkit.compress_(model, slimkit.Plan(steps=(step,)), slimkit.Context())
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still one table
    assert torch.equal(model.model.embed_tokens.weight, table)  # not pruned through the head
    reloaded = slimkit.load(slimkit.save(model, tmp_path / "m")).model
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight


def test_naming_a_tied_module_is_refused_in_one_line() -> None:
    model = _llama()
    step = slimkit.WeightOnly(bits=4, targets=slimkit.Targets(names=("lm_head",)))
    with pytest.raises(slimkit.ConfigError) as err:
        slimkit.compress_(model, slimkit.Plan(steps=(step,)), slimkit.Context())
    assert "'model.embed_tokens'" in str(err.value) and "\n" not in str(err.value)
