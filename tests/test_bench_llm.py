"""The pure parts of bench/llm.py: bits-per-weight accounting (slimkit packed layers, ONNX
initializers, llm-compressor's layer report), the Markdown table, and the graph edit that gives
an ONNX Runtime quantizer's file last-position logits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import llm_bits  # noqa: E402
import llm_report  # noqa: E402

from slimkit.nn.lowbit_embedding import TiedLowBitHead, WeightOnlyEmbedding  # noqa: E402
from slimkit.nn.lowbit_linear import WeightOnlyLinear  # noqa: E402


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 64)
        self.proj = nn.Linear(64, 32)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 100, bias=False)
        self.head.weight = self.embed.weight  # tied: one table


def test_fp32_is_32_bits_and_a_tied_table_counts_once() -> None:
    model = TinyLM()
    assert llm_bits.logical_parameters(model) == 6400 + 64 * 32 + 32 + 2 * 64
    assert llm_bits.bits_per_weight(model) == 32.0


def test_packed_layers_exact_bits() -> None:
    model = TinyLM()
    table = WeightOnlyEmbedding.from_embedding(model.embed, bits=4, group_size=32,
                                               symmetric=True)
    model.embed, model.head = table, TiedLowBitHead.tied_to(table)
    model.proj = WeightOnlyLinear.from_linear(model.proj, bits=4, group_size=32, symmetric=False)
    # table: 100 x 64 four-bit codes + 100 x 2 fp16 scales (the tied head adds nothing);
    # proj: 32 x 64 codes + 32 x 2 fp16 scales and offsets + 32 fp32 biases; norm: 2 x 64 fp32.
    stored = (100 * 32 + 100 * 2 * 2) + (32 * 32 + 2 * 32 * 2 * 2 + 32 * 4) + 2 * 64 * 4
    logical = 100 * 64 + 32 * 64 + 32 + 2 * 64
    assert llm_bits.stored_weight_bytes(model) == stored
    assert llm_bits.logical_parameters(model) == logical
    assert llm_bits.bits_per_weight(model) == pytest.approx(8 * stored / logical)


def test_llmc_bytes_replace_quantized_weights_by_codes_and_scales() -> None:
    model = TinyLM()
    layers = {"proj": {"scale_numel": 32, "scale_bytes": 4, "zero_numel": 0}}
    floats = (100 * 64 + 32 + 2 * 64) * 4  # table (once), proj bias, norm
    assert llm_bits.llmc_weight_bytes(model, layers) == floats + 32 * 64 // 2 + 32 * 4


def test_onnx_weight_bytes_leave_out_graph_constants(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.zeros(3, np.int64), "const"),
             numpy_helper.from_array(np.zeros(8, np.float32), "inv_freq"),
             numpy_helper.from_array(np.zeros((4, 5), np.float32), "w"),
             numpy_helper.from_array(np.zeros(7, np.uint8), "w_q4")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    assert llm_bits.onnx_weight_bytes(tmp_path / "m.onnx") == 4 * 5 * 4 + 7


def test_markdown_table() -> None:
    rows = [{"name": "fp32", "bits_per_weight": 32.0, "perplexity": 10.0, "ppl_change_pct": 0.0,
             "kl": 0.0, "top1": 1.0, "artifact_mb": 538.1, "resident_mib": 700.4,
             "prefill_512_ms": 250.2, "decode_tps": 40.04},
            {"name": "w4", "bits_per_weight": 9.5, "perplexity": 11.5,
             "ppl_change_pct": llm_report.change_pct(11.5, 10.0), "kl": 0.05, "top1": 0.9,
             "compress_s": 12.34, "compress_peak_mib": 1500.0,
             "compress_peak_above_mib": 900.0, "artifact_mb": 160.0},
            {"name": "peer", "not_run": "no environment"}]
    lines = llm_report.markdown_table(rows).splitlines()
    assert lines[0].startswith("| row | bits/weight")
    assert lines[1] == "|" + "---|" * len(llm_report.COLUMNS)
    assert lines[2] == ("| fp32 | 32.00 | 10.000 (+0.0%) | 0.0000 | 100.0% | - | - | 538.1 | "
                        "700 | 250 | 40.0 |")
    assert lines[3] == ("| w4 | 9.50 | 11.500 (+15.0%) | 0.0500 | 90.0% | 12.3 | 1500 (+900) | "
                        "160.0 | - | - | - |")
    assert lines[4] == "| peer | not run: no environment |" + " - |" * 9


def test_last_position_only_matches_the_exporters_last_logits(tmp_path: Path) -> None:
    import onnx
    from llm_ort import OrtLogits, last_position_only
    from transformers import LlamaConfig, LlamaForCausalLM

    from slimkit.export.lm_onnx import export_causal_lm
    from slimkit.export.lm_onnx_runtime import OrtCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, tie_word_embeddings=True)).eval()
    export_causal_lm(model, tmp_path / "all.onnx")
    onnx.save(last_position_only(onnx.load(str(tmp_path / "all.onnx"))),
              str(tmp_path / "sliced.onnx"))
    ids = torch.randint(0, 50, (2, 7))
    every = OrtLogits(tmp_path / "all.onnx", threads=1)(ids)
    session = OrtCausalLM(tmp_path / "sliced.onnx", threads=1)
    last, _ = session.step(ids.numpy(), np.ones((2, 7), np.int64), session.empty_cache(2))
    assert last.shape == (2, 1, 50)
    np.testing.assert_allclose(last[:, 0], every[:, -1].numpy(), rtol=1e-5, atol=1e-5)
