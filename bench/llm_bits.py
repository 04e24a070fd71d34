"""Bits per weight over a whole causal LM (slimkit.eval.weight_bits has the rule and counts a
slimkit model), from three sources: a slimkit model (its state dict: packed codes, scales,
offsets, and every float tensor), an ONNX file (its initializers less the exporter's graph
constants), and llm-compressor's GPTQ layers (the layer shapes and scales its child reports).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from slimkit.eval.weight_bits import (  # noqa: F401  (re-exported for the bench)
    bits_per_weight,
    logical_parameters,
    stored_weight_bytes,
)

# Initializers export_causal_lm writes that are no weights: small shape/axis constants and the
# rotary frequencies (both kept as they are by every ONNX quantizer).
GRAPH_CONSTANTS = ("const", "inv_freq")


def onnx_weight_bytes(path: str | Path) -> int:
    """Bytes of an ONNX file's initializers less the graph constants (GRAPH_CONSTANTS prefixes),
    as stored: packed codes, scales and zero points count at their own dtype."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        if init.name.startswith(GRAPH_CONSTANTS):
            continue
        total += len(init.raw_data) if init.raw_data else numpy_helper.to_array(init).nbytes
    return total


def llmc_weight_bytes(fp32: nn.Module, layers: dict[str, dict[str, int]]) -> int:
    """llm-compressor's GPTQ model as it stores it: each quantized Linear as 4-bit codes plus its
    scales (and zero points) at the reported sizes; every other tensor of the fp32 model as is."""
    floats = stored_weight_bytes(fp32, frozenset(f"{name}.weight" for name in layers))
    codes = sum(fp32.get_submodule(name).weight.numel() * 4 // 8 for name in layers)
    scales = sum(r["scale_numel"] * r["scale_bytes"] + r["zero_numel"] for r in layers.values())
    return floats + codes + scales

