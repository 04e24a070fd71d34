"""GGUF export (slimkit.export.lm_gguf): read back with gguf's own reader and de-quantizer, every
weight equals what slimkit computes with (Q/K rows in llama.cpp's order), packed layers in the
exact GGML type, the tie kept, the source's tokenizer metadata carried over.

Exact where the parameters are fp16 (param_bits 0): Q4_0 / Q4_1 / Q8_0 blocks store fp16 d and
m, and de-quantize as d * q (+ m) in fp32, the same products slimkit forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from slimkit.core.errors import SlimkitError  # noqa: E402
from slimkit.export.lm_gguf import _heads_permutation, export_gguf  # noqa: E402
from slimkit.methods.quantize.tied_embedding import quantize_tied_embedding  # noqa: E402
from slimkit.nn.lowbit_linear import WeightOnlyLinear  # noqa: E402

HEADS, KV_HEADS = 4, 2


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, vocab_size=128, tie_word_embeddings=True,
        max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def source_file(path) -> str:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(7)  # wrong on purpose: the export writes the model's own
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(128)])
    writer.add_bos_token_id(1)
    writer.add_name("tiny")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def quantize_all(model: nn.Module, bits: int, symmetric: bool, group: int = 32) -> nn.Module:
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name != "lm_head":
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child,
                    WeightOnlyLinear.from_linear(module, bits=bits, group_size=group,
                                                 symmetric=symmetric))
    return model


def read(path) -> dict[str, np.ndarray]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, gguf.quants.dequantize(t.data, t.tensor_type))
            for t in reader.tensors}


def expected(module: nn.Module, heads: int | None = None) -> np.ndarray:
    with torch.no_grad():
        w = (module.dequantized_weight() if hasattr(module, "dequantized_weight")
             else module.weight).float().numpy()
    return w[_heads_permutation(w.shape[0], heads)] if heads else w


@pytest.mark.parametrize("bits,symmetric,kind", [(4, False, "Q4_1"), (4, True, "Q4_0"),
                                                 (3, False, "Q4_1"), (2, True, "Q4_0"),
                                                 (8, True, "Q8_0")])
def test_packed_layers_read_back_exactly(tmp_path, bits, symmetric, kind):
    model = quantize_all(tiny_llama(), bits, symmetric)
    quantize_tied_embedding(model, "model.embed_tokens", "lm_head", bits=4, group_size=32)
    result = export_gguf(model, tmp_path / "m.gguf", source=source_file(tmp_path / "s.gguf"))
    tensors = read(result.path)
    assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd for the head
    assert tensors["token_embd.weight"][0] == "Q4_1"
    assert np.array_equal(tensors["token_embd.weight"][1], expected(model.model.embed_tokens))
    layer = model.model.layers[1]
    for short, module, heads in [("attn_q", layer.self_attn.q_proj, HEADS),
                                 ("attn_k", layer.self_attn.k_proj, KV_HEADS),
                                 ("ffn_down", layer.mlp.down_proj, None)]:
        kind_read, values = tensors[f"blk.1.{short}.weight"]
        assert kind_read == kind
        assert np.array_equal(values, expected(module, heads)), short
    assert result.fallbacks == []


def test_metadata_from_the_model_and_tokenizer_from_the_source(tmp_path):
    model = tiny_llama()
    result = export_gguf(model, tmp_path / "m.gguf", source=source_file(tmp_path / "s.gguf"))
    fields = gguf.GGUFReader(str(result.path)).fields
    assert fields["llama.block_count"].contents() == 2
    assert fields["llama.attention.head_count_kv"].contents() == KV_HEADS
    assert fields["tokenizer.ggml.tokens"].contents()[:2] == ["t0", "t1"]
    assert fields["general.name"].contents() == "tiny"
    tensors = read(result.path)
    assert tensors["blk.0.attn_norm.weight"][0] == "F32"
    assert np.array_equal(tensors["blk.0.attn_q.weight"][1],
                          expected(model.model.layers[0].self_attn.q_proj, HEADS))


def test_layers_without_an_exact_type_fall_back_to_f32(tmp_path):
    model = quantize_all(tiny_llama(), 4, False, group=16)
    result = export_gguf(model, tmp_path / "m.gguf", source=source_file(tmp_path / "s.gguf"))
    assert "blk.0.attn_q" in result.fallbacks and result.types["blk.0.attn_q"] == "F32"
    values = read(result.path)["blk.0.ffn_up.weight"][1]
    assert np.array_equal(values, expected(model.model.layers[0].mlp.up_proj))


def test_refusals_name_what_is_wrong(tmp_path):
    with pytest.raises(SlimkitError, match="source"):
        export_gguf(tiny_llama(), tmp_path / "m.gguf", source=tmp_path / "missing.gguf")
    with pytest.raises(SlimkitError, match="Llama-family"):
        export_gguf(nn.Linear(2, 2), tmp_path / "m.gguf", source=source_file(tmp_path / "s.gguf"))
    assert not (tmp_path / "m.gguf").exists()


def test_cli_writes_an_artifact_as_gguf(tmp_path, capsys):
    import json

    from lm_fixtures import write_text, write_tiny_lm

    import slimkit
    from slimkit.cli.main import main
    from slimkit.tasks.registry import make_task

    text = write_text(tmp_path / "text.txt", paragraphs=60)
    folder = write_tiny_lm(tmp_path / "model", text)
    task = make_task("causal-lm", model_path=str(folder), text_file=str(text), seq_len=32,
                     eval_chunks=2, eval_batch=2, calibration_rows=2)
    model = task.build_model()
    plan = slimkit.Plan.from_dict({"version": 1, "steps": [
        {"method": "quantize.weight_only", "bits": 4, "group_size": 32}]})
    slimkit.compress_(model, plan, slimkit.Context(task=task))
    artifact = slimkit.save(model, tmp_path / "artifact", task=task)
    out = tmp_path / "m.gguf"
    # A folder model has no GGUF of its own to take the tokenizer from: one line, exit 2.
    assert main(["gguf", str(artifact), str(out)]) == 2
    assert "--source" in capsys.readouterr().err and not out.exists()
    source = source_file(tmp_path / "s.gguf")
    assert main(["gguf", str(artifact), str(out), "--source", source, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["types"] == {"Q4_1": 14, "F32": 6}
    assert printed["fallbacks"] == ["token_embd"]  # the float table, written as it is
    assert read(out)["blk.0.ffn_up.weight"][0] == "Q4_1"
    assert main(["gguf", str(artifact), str(out), "--source", source]) == 2  # no overwrite


def test_awq_layers_and_biases_go_as_f32_with_their_own_values(tmp_path):
    model = tiny_llama()
    layer = model.model.layers[0].mlp.up_proj
    torch.manual_seed(1)
    awq = WeightOnlyLinear.from_codes(
        layer, *_codes(layer.weight * 2.0), bits=4, group_size=32,
        input_scale=torch.rand(layer.in_features) + 0.5)
    model.model.layers[0].mlp.up_proj = awq
    q = model.model.layers[1].self_attn.q_proj
    q.bias = nn.Parameter(torch.randn(q.out_features))
    result = export_gguf(model, tmp_path / "m.gguf", source=source_file(tmp_path / "s.gguf"))
    assert result.types["blk.0.ffn_up"] == "F32" and "blk.0.ffn_up" in result.fallbacks
    tensors = read(result.path)
    assert np.array_equal(tensors["blk.0.ffn_up.weight"][1], expected(awq))
    bias = q.bias.detach().numpy()[_heads_permutation(q.out_features, HEADS)]
    assert np.array_equal(tensors["blk.1.attn_q.bias"][1], bias)


def _codes(weight: torch.Tensor):
    from slimkit.nn.groupwise import quantize_groups

    return quantize_groups(weight, 4, 32, False)
