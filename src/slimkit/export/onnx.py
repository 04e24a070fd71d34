"""ONNX export of float and slimkit-quantized models, and a parity check against ONNX Runtime.

Quantized slimkit modules export as standard int8 ONNX patterns (QDQ for static INT8,
DynamicQuantizeLinear + MatMulInteger for dynamic INT8, Gather of packed rows for quantized
tables) that ONNX Runtime fuses into its int8 kernels. Needs the `onnx` extra.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..core.cpu import code_max
from ..graph import set_submodule
from ..nn.mean_bag import MeanBag

log = logging.getLogger(__name__)
INT8_WEIGHT_MAX_KEY = "slimkit.int8_weight_max"


def export_onnx(model: nn.Module, example_inputs: Sequence[torch.Tensor], path: str | Path, *,
                opset: int = 17, dynamic_batch: bool = True,
                input_names: Sequence[str] | None = None) -> Path:
    """Write `model` (in eval mode) as ONNX to `path` atomically; the user's model is untouched.
    A Llama-family causal LM is written by lm_onnx.export_causal_lm (its inputs and cache are
    its own; OrtSession runs it from token ids alone).

    Export runs on a deep copy whose padded mean EmbeddingBags are swapped for MeanBag: the
    TorchScript exporter cannot export `embedding_bag` with `padding_idx`. A transformers model's
    copy runs eager attention and returns its main tensor (logits or last_hidden_state), with
    batch and sequence axes dynamic.
    """
    if len(example_inputs) == 1 and is_causal_lm(model):
        from .lm_onnx import export_causal_lm

        return export_causal_lm(model, path, opset=opset)
    export_model = copy.deepcopy(model).eval()
    for name, module in list(export_model.named_modules()):
        if isinstance(module, nn.EmbeddingBag) and module.mode == "mean" \
                and module.padding_idx == 0:
            set_submodule(export_model, name, MeanBag.from_embedding_bag(module))
    inputs = tuple(example_inputs)
    names = list(input_names or _input_names(model, len(inputs)))
    # Transformers models: batch and sequence axes are dynamic, the output is the main tensor.
    dynamic = {0: "batch", 1: "sequence"} if _is_hf(model) else {0: "batch"}
    axes = {n: dynamic for n in [*names, "output"]} if dynamic_batch else None
    if _is_hf(model):
        export_model = _hf_export_module(export_model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns about tracing and deprecations on every call.
        warnings.simplefilter("ignore")
        torch.onnx.export(export_model, inputs, str(tmp), dynamo=False, opset_version=opset,
                          input_names=names, output_names=["output"], dynamic_axes=axes,
                          do_constant_folding=True)
    weight_max = int8_weight_max(model)
    if weight_max is not None:
        record_int8_range(tmp, weight_max)
    os.replace(tmp, path)
    log.info("exported %s (%d bytes)", path, path.stat().st_size)
    return path


def int8_weight_max(model: nn.Module) -> int | None:
    """Largest |code| of the model's int8 GEMM weights (modules holding an int8 `weight` with a
    `weight_scale`), or None when it has none."""
    found = [code_max(m.weight) for m in model.modules()
             if isinstance(getattr(m, "weight_scale", None), torch.Tensor)
             and isinstance(getattr(m, "weight", None), torch.Tensor)
             and m.weight.dtype == torch.int8 and m.weight.numel()]
    return max(found) if found else None


def record_int8_range(path: Path, weight_max: int) -> None:
    """Write the int8 weight range into the ONNX file's metadata, so a session on a CPU whose
    int8 kernels add pairs in 16 bits can tell whether this graph is exact there."""
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = INT8_WEIGHT_MAX_KEY, str(weight_max)
    onnx.save(proto, str(path))


# The layers lm_onnx writes itself: others (int8, pruned-shape) go through the TorchScript path.
_LM_LAYERS = ("Linear", "WeightOnlyLinear", "Embedding", "WeightOnlyEmbedding", "TiedLowBitHead")


def is_causal_lm(model: nn.Module) -> bool:
    """A Llama-family transformers causal LM whose layers lm_onnx.py writes (float or
    weight-only), exported with its key/value cache and low-bit layers as MatMulNBits instead
    of through the TorchScript exporter (token ids as the only example input)."""
    config = getattr(model, "config", None)
    if not (_is_hf(model) and type(model).__name__.endswith("ForCausalLM")
            and getattr(config, "model_type", None) == "llama"):
        return False
    return all(_lm_writes(m) for m in model.modules() if not list(m.children()))


def _lm_writes(module: nn.Module) -> bool:
    """A leaf lm_onnx.py writes: one of its layer types, a norm, or one without weights. Read
    from the registries, not `hasattr(m, "weight")`: a packed layer's `weight` property
    de-quantizes the whole weight."""
    kind = type(module).__name__
    has_weight = module._parameters.get("weight") is not None \
        or module._buffers.get("qweight") is not None
    return kind in _LM_LAYERS or "Norm" in kind or not has_weight


def _is_hf(model: nn.Module) -> bool:
    from ..models.hf import is_hf_model

    return is_hf_model(model)


def _hf_export_module(model: nn.Module) -> nn.Module:
    """The copy with eager attention (plain matmul + softmax, traced the same on every
    transformers version) wrapped to return only its main tensor."""
    from ..models.hf import MainOutput

    switch = getattr(model, "set_attn_implementation", None)
    if callable(switch):
        switch("eager")
    return MainOutput(model)


def _main_tensor(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    from ..models.hf import first_tensor

    return first_tensor(output)


def _input_names(model: nn.Module, n: int) -> list[str]:
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return params[:n] if len(params) >= n else [f"input_{i}" for i in range(n)]


@dataclasses.dataclass(frozen=True)
class Parity:
    """ORT vs torch on the same inputs."""

    max_abs_diff: float
    cosine: float
    passed: bool


def check_parity(model: nn.Module, onnx_path: str | Path, inputs: Sequence[torch.Tensor], *,
                 atol: float = 1e-4, rtol: float = 1e-3,
                 min_cosine: float | None = None) -> Parity:
    """Run `onnx_path` in ONNX Runtime and `model` in torch on `inputs` and compare outputs.

    Passes when |ort - torch| <= atol + rtol |torch| everywhere, or, when `min_cosine` is given,
    when the cosine similarity of the flattened outputs is at least `min_cosine` (for quantized
    graphs whose requantization may round a value to the neighbouring level).
    """
    from .runtime import OrtSession

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ref = _main_tensor(model(*inputs)).float()
    finally:
        model.train(was_training)
    out = OrtSession(onnx_path)(*inputs).float().reshape(ref.shape)
    diff = float((out - ref).abs().max()) if ref.numel() else 0.0
    cosine = float(torch.nn.functional.cosine_similarity(
        out.reshape(1, -1).double(), ref.reshape(1, -1).double()).item())
    if min_cosine is not None:
        passed = cosine >= min_cosine
    else:
        passed = bool(torch.all((out - ref).abs() <= atol + rtol * ref.abs()))
    return Parity(diff, cosine, passed)
