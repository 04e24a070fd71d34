"""Structured and depth pruning of Hugging Face transformers (tiny random configs): exact removal,
grouped-query attention, reload, ONNX export."""

from __future__ import annotations

import copy

import pytest
import torch

import slimkit
from slimkit.export.onnx import check_parity, export_onnx

pytest.importorskip("transformers")

from slimkit.models import example_inputs, first_tensor, tiny_model  # noqa: E402
from slimkit.tasks.inputs import InputsTask, next_token_loss  # noqa: E402

SMALL = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 96, "vocab_size": 120, "max_position_embeddings": 64}
ARCHS = ("bert", "gpt2", "llama", "qwen2")


def _model(arch: str):
    return tiny_model(arch, 0, **SMALL)


def _task(model) -> InputsTask:
    batches = [example_inputs(model, batch=4, seq=12, seed=s) for s in range(2)]
    causal = "CausalLM" in type(model).__name__
    return InputsTask(batches, next_token_loss if causal else None)


@pytest.mark.parametrize("arch", ARCHS)
def test_zeroed_heads_and_neurons_removed_exactly(arch, check_exact_removal) -> None:
    model = _model(arch)
    pruned = check_exact_removal(model, example_inputs(model, batch=2, seq=12))
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel()
                                                            for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_half_heads_and_neurons_reload_and_export(arch, tmp_path) -> None:
    model = _model(arch)
    pruned = copy.deepcopy(model)
    criterion = "taylor" if arch in ("llama", "qwen2") else "activation"
    rec = slimkit.compress_(pruned, slimkit.Plan([slimkit.Structured(ratio=0.5,
                                                                     criterion=criterion)]),
                            slimkit.Context(task=_task(model)))
    info = rec[0].info
    assert info["params_after"] < info["params_before"] and info["criterion_fallbacks"] == 0
    x = example_inputs(model, batch=3, seq=20, seed=7)  # other shapes than the trace used
    with torch.no_grad():
        assert first_tensor(pruned(*x)).shape == first_tensor(model(*x)).shape
        slimkit.save(pruned, tmp_path / "m")
        loaded = slimkit.load(tmp_path / "m").model
        assert torch.equal(first_tensor(loaded(*x)), first_tensor(pruned(*x)))
    onnx = export_onnx(loaded, x, tmp_path / "m.onnx")
    assert check_parity(loaded, onnx, x, min_cosine=0.9999, atol=1e-3).passed


def test_grouped_query_attention_keeps_groups_consistent() -> None:
    model = _model("qwen2")  # 4 query heads sharing 2 key/value heads
    attn = model.model.layers[0].self_attn
    head_dim = attn.head_dim
    for head_ratio, q_heads, kv_heads in ((0.5, 2, 1),):
        pruned = copy.deepcopy(model)
        slimkit.compress_(pruned, slimkit.Plan([slimkit.Structured(ratio=0.0001,
                                                                   head_ratio=head_ratio)]),
                          slimkit.Context(task=_task(model)))
        a = pruned.model.layers[0].self_attn
        assert a.q_proj.out_features == q_heads * head_dim
        assert a.k_proj.out_features == a.v_proj.out_features == kv_heads * head_dim
        assert a.o_proj.in_features == q_heads * head_dim
        assert a.num_key_value_groups == q_heads // kv_heads
        ids = torch.randint(3, 120, (1, 9))
        with torch.no_grad():  # with and without a mask: transformers takes different paths
            no_mask = pruned(ids).logits
            with_mask = pruned(ids, torch.ones_like(ids)).logits
        torch.testing.assert_close(no_mask, with_mask)


@pytest.mark.parametrize(("arch", "container"), [("bert", "encoder.layer"),
                                                 ("llama", "model.layers")])
def test_depth_pruning_by_block_influence(arch, container, tmp_path) -> None:
    model = _model(arch)
    rec = slimkit.compress_(model, slimkit.Plan([slimkit.Layers(container=container, drop=1,
                                                                recover="none")]),
                            slimkit.Context(task=_task(model)))
    assert len(rec[0].info["block_influence"]) == 2
    assert len(model.get_submodule(container)) == 1
    x = example_inputs(model, batch=2, seq=10)
    slimkit.save(model, tmp_path / "d")
    loaded = slimkit.load(tmp_path / "d").model
    with torch.no_grad():
        assert torch.equal(first_tensor(loaded(*x)), first_tensor(model(*x)))
