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


def _headed(arch: str):
    """A model whose output is not its hidden width: a task head over it."""
    if arch in ("llama", "qwen2"):
        return _model(arch)
    import transformers

    from slimkit.models.hf import attach_spec, tiny_config

    cls = {"bert": transformers.BertForSequenceClassification,
           "gpt2": transformers.GPT2LMHeadModel}[arch]  # GPT-2: Conv1D layers, tied head
    torch.manual_seed(0)
    return attach_spec(cls._from_config(tiny_config(arch, **SMALL, num_labels=2),
                                        attn_implementation="sdpa").eval())


@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_width_under_normalisation_is_cut_on_request(arch, tmp_path) -> None:
    """normalised_widths=True cuts the residual width every LayerNorm/RMSNorm reads (inexact,
    so never by default); the model keeps its outputs' shapes, reloads and exports."""
    model = _headed(arch)
    width = model.get_input_embeddings().weight.shape[1]
    exact = copy.deepcopy(model)
    slimkit.compress_(exact, slimkit.Plan([slimkit.Structured(ratio=0.5)]),
                      slimkit.Context(task=_task(model)))
    assert exact.get_input_embeddings().weight.shape[1] == width
    pruned = copy.deepcopy(model)
    rec = slimkit.compress_(pruned, slimkit.Plan([slimkit.Structured(
        ratio=0.5, normalised_widths=True)]), slimkit.Context(task=_task(model)))
    assert pruned.get_input_embeddings().weight.shape[1] == width // 2
    norms = [m for m in pruned.modules() if "Norm" in type(m).__name__]
    assert norms and all(m.weight.shape == (width // 2,) for m in norms)
    analysis = rec[0].info["analysis"]
    assert analysis["inexact"] and not any("normalised" in g["reason"]
                                           for g in analysis["locked"])
    x = example_inputs(model, batch=3, seq=20, seed=7)
    with torch.no_grad():
        out = first_tensor(pruned(*x))
        assert out.shape == first_tensor(model(*x)).shape and torch.isfinite(out).all()
        slimkit.save(pruned, tmp_path / "m")
        loaded = slimkit.load(tmp_path / "m").model
        assert torch.equal(first_tensor(loaded(*x)), out)
    onnx = export_onnx(loaded, x, tmp_path / "m.onnx")
    assert check_parity(loaded, onnx, x, min_cosine=0.9999, atol=1e-3).passed


def test_a_tied_head_and_embedding_lose_the_same_width() -> None:
    model = _model("llama")  # lm_head shares the embedding's tensor
    assert model.lm_head.weight is model.get_input_embeddings().weight
    slimkit.compress_(model, slimkit.Plan([slimkit.Structured(ratio=0.25,
                                                              normalised_widths=True)]),
                      slimkit.Context(task=_task(model)))
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.lm_head.weight.shape == (120, 36) and model.lm_head.in_features == 36


@pytest.mark.parametrize("config,cls,fused", [
    # q, k, v sliced out of one output; its slice bounds come from the shared config, so the
    # probe refuses its heads, and the fused gate/up projection is what loses rows.
    ("Phi3Config", "Phi3ForCausalLM", "mlp.gate_up_proj"),
    ("GPTNeoXConfig", "GPTNeoXForCausalLM", "attention.query_key_value"),  # and partial rotary
])
def test_fused_projections_split_by_slicing_lose_rows(config, cls, fused,
                                                       check_exact_removal) -> None:
    import transformers

    cfg = getattr(transformers, config)(**SMALL, use_cache=False, pad_token_id=0)
    torch.manual_seed(0)
    model = getattr(transformers, cls)._from_config(cfg, attn_implementation="sdpa").eval()
    from slimkit.graph.deps import analyse

    x = example_inputs(model, batch=2, seq=12)
    locked = [g.locked for g in analyse(model, x).groups if g.locked]
    assert not any("sliced" in r for r in locked), locked
    pruned = check_exact_removal(model, x)
    layer = pruned.model.layers[0] if hasattr(pruned, "model") else pruned.gpt_neox.layers[0]
    before = model.get_submodule(f"{'model' if hasattr(model, 'model') else 'gpt_neox'}"
                                 f".layers.0.{fused}").out_features
    assert layer.get_submodule(fused).out_features < before
