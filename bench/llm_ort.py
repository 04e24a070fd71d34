"""ONNX Runtime's own weight-only quantizer (onnxruntime.quantization.matmul_nbits_quantizer) on
slimkit's fp32 export of the causal LM, and an ORT session wrapped as a module so the task scores
an ONNX file with the same code as a torch model.

Algorithms ORT 1.31 offers there: "DEFAULT" (its own blockwise round-to-nearest, C++), "RTN" and
"GPTQ" (ports of Intel Neural Compressor's; GPTQ runs the model in ORT on calibration inputs),
"k_quant", "HQQ" (half-quadratic, no data; needs torch), and "nvidia_awq" (needs NVIDIA's
modelopt package and downloads a calibration data set: not run). Every algorithm here quantizes
the MatMul nodes only, as slimkit's weight-only plans quantize the Linear layers; the tied
embedding / head (Gather + Gemm on one fp32 initializer) stays fp32 in both.

One quantization serves both uses of the file (so compression is timed once): the quantizer
runs on the all-positions export; `last_position_only` then adds the Slice that
export_causal_lm(logits="last") has, for the timed deployment, and `set_accuracy_level` sets the
MatMulNBits attribute: 4 (int8 activations inside the kernel, ORT's fast CPU path, as slimkit's
deployed files) for deployment, 0 (fp32 compute) for the quality file, so perplexity measures the
weights alone, as torch does for slimkit's rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

GROUP = 64
ALGORITHMS = ("default", "hqq", "rtn", "gptq")
# The first node export_causal_lm writes for the final RMSNorm; the tensor it reads is the last
# layer's residual output, which only the final norm consumes.
FINAL_NORM_NODE = "n_final_norm_sq"


class CalibrationReader:
    """GPTQ's calibration inputs: one prefill per chunk with an empty key/value cache."""

    def __init__(self, chunks: np.ndarray, cache_inputs: list[tuple[str, int, int]]) -> None:
        self.feeds = []
        for ids in chunks:
            ids = ids[None].astype(np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                    "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None]}
            feed.update({name: np.zeros((1, heads, 0, dim), np.float32)
                         for name, heads, dim in cache_inputs})
            self.feeds.append(feed)
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position == len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def __iter__(self) -> Any:  # the INC GPTQ port iterates a deep copy of the reader
        return iter(self.feeds)


def cache_inputs(proto: Any) -> list[tuple[str, int, int]]:
    out = []
    for value in proto.graph.input:
        if value.name.startswith("past_key_values."):
            dims = value.type.tensor_type.shape.dim
            out.append((value.name, dims[1].dim_value, dims[3].dim_value))
    return out


def quantize(proto: Any, algorithm: str, calibration: np.ndarray | None) -> Any:
    """4-bit, groups of 64 along the input dimension; symmetric where the algorithm has the
    choice (as slimkit's RTN row and llm-compressor's W4A16), HQQ asymmetric by design."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    config: Any
    if algorithm == "default":
        config = mnq.DefaultWeightOnlyQuantConfig(block_size=GROUP, is_symmetric=True,
                                                  accuracy_level=4, bits=4)
    elif algorithm == "hqq":
        config = mnq.HQQWeightOnlyQuantConfig(block_size=GROUP, bits=4)
    elif algorithm == "rtn":
        config = mnq.RTNWeightOnlyQuantConfig()
    elif algorithm == "gptq":
        if calibration is None:
            raise ValueError("gptq needs calibration chunks")
        # act-order on: slimkit's GPTQ and llm-compressor's (actorder="static") use it too.
        config = mnq.GPTQWeightOnlyQuantConfig(
            calibration_data_reader=CalibrationReader(calibration, cache_inputs(proto)),
            percdamp=0.01, block_size=128, actorder=True)
    else:
        raise ValueError(f"algorithm {algorithm!r}: expected one of {ALGORITHMS}")
    quantizer = mnq.MatMulNBitsQuantizer(proto, bits=4, block_size=GROUP, is_symmetric=True,
                                         accuracy_level=4, algo_config=config)
    quantizer.process()
    model = quantizer.model
    return getattr(model, "model", model)  # an ONNXModel wrapper (two kinds) around the proto


def set_accuracy_level(proto: Any, level: int) -> int:
    """Set MatMulNBits' accuracy_level on every such node in place; returns how many."""
    from onnx import helper

    count = 0
    for node in proto.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("accuracy_level", level)])
        count += 1
    return count


def last_position_only(proto: Any) -> Any:
    """A copy whose logits cover the last position only: the final norm and head read a Slice of
    the last layer's output, as in export_causal_lm(logits="last")."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    first = next((n for n in graph.node if n.name == FINAL_NORM_NODE), None)
    if first is None:
        raise ValueError(f"no node {FINAL_NORM_NODE!r}: not a file export_causal_lm wrote")
    hidden = first.input[0]
    for name, value in (("last_starts", [-1]), ("last_ends", [2**62]), ("last_axes", [1])):
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    nodes = list(graph.node)
    for node in nodes:
        node.input[:] = ["last_hidden" if i == hidden else i for i in node.input]
    # Right before the final norm: every reader of `hidden` is a final-norm node, which the
    # exporter (and the quantizers, which keep node order) write after that first one.
    at = next(i for i, n in enumerate(nodes) if n.name == FINAL_NORM_NODE)
    nodes.insert(at, helper.make_node("Slice", [hidden, "last_starts", "last_ends", "last_axes"],
                                      ["last_hidden"], name="n_last_position"))
    del graph.node[:]
    graph.node.extend(nodes)
    return out


class OrtLogits(nn.Module):
    """forward(input_ids [batch, seq]) -> logits [batch, seq, vocab] of an exported causal LM
    (logits for every position), run by ONNX Runtime as one prefill with an empty cache."""

    def __init__(self, path: str | Path, threads: int) -> None:
        super().__init__()
        from slimkit.export.lm_onnx_runtime import OrtCausalLM

        self.session = OrtCausalLM(path, threads=threads)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.numpy().astype(np.int64)
        logits, _ = self.session.step(ids, np.ones_like(ids),
                                      self.session.empty_cache(ids.shape[0]))
        return torch.from_numpy(logits)
