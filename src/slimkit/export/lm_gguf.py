"""Export a Llama-family causal LM to GGUF, the file llama.cpp (and its Python binding, Ollama,
LM Studio) runs, with the tokenizer and general metadata of a source GGUF file (the one the model
came from: the built-in SmolLM2, or `model_path=*.gguf`); the architecture keys are written
from the model's own config, so a model with fewer layers or heads describes itself.

Tensors are written in the GGML type that holds slimkit's stored values exactly where one exists:
- packed layers and tables (WeightOnlyLinear, WeightOnlyEmbedding) in groups of 32: asymmetric
  2/3/4-bit codes as Q4_1 (x = d * q + m, with d = scale and m = offset), symmetric 2/3/4-bit as
  Q4_0 (x = d * (q - 8): codes shifted so that 8 is their centre), symmetric 8-bit as Q8_0;
- everything else (other group sizes, asymmetric 8-bit, float Linears, norms) as F32 of the
  weight as slimkit computes with it; each such layer is listed in `fallbacks` (norms aside).
A GGML block holds fp16 parameters: slimkit's fp16 scales and offsets are written as they are
(exact); fp32 ones (`scale_dtype: float32`) and double-quantized ones (`param_bits`, decoded)
are rounded to fp16 (relative error at most 2^-11 per parameter). AWQ layers go as F32. Biases
are written as F32 `.bias` tensors. A head tied to the table is not written: llama.cpp reads
`token_embd` for the output when `output.weight` is absent, so the tie holds in the file too.

llama.cpp's rotary embedding rotates neighbouring dimensions of a head, Hugging Face's rotates
dimension i with i + head_dim/2, so Q and K rows are permuted as llama.cpp's converter does
(rows of a quantized layer move whole: groups run along the input dimension).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import SlimkitError
from .lm_onnx_embedding import is_tied_head

log = logging.getLogger(__name__)

GROUP = 32  # the block of Q4_0, Q4_1 and Q8_0
PROJECTIONS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
               "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
# Keys written from the model's config, not copied from the source file.
OWN_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.alignment", "llama.")


@dataclasses.dataclass
class GGUFExport:
    path: Path
    types: dict[str, str]
    fallbacks: list[str]


def _heads_permutation(rows: int, heads: int) -> np.ndarray:
    """Row order llama.cpp's converter gives a Q or K weight of `heads` heads."""
    index = np.arange(rows)
    return index.reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)


def _packed_form(module: Any) -> str | None:
    """The exact GGML type for a packed layer, or None when none holds it (an AWQ layer's codes
    stand for W * s with a per-input scale s that no GGML block carries)."""
    if module.group_size != GROUP or module.dense_shape()[1] % GROUP:
        return None
    if getattr(module, "input_scale", None) is not None:
        return None
    if module.bits <= 4:
        return "Q4_0" if module.symmetric else "Q4_1"
    if module.bits == 8 and module.symmetric:
        return "Q8_0"
    return None


def _blocks(module: Any, kind: str, rows: np.ndarray) -> np.ndarray:
    """GGML blocks [rows, bytes] of a packed layer's rows `rows` (in that order)."""
    codes = module.codes()[torch.from_numpy(rows)].numpy().astype(np.int16)
    with torch.no_grad():
        scale, offset = module.group_params(torch.from_numpy(rows))
    n, cols = codes.shape
    groups = codes.reshape(n, cols // GROUP, GROUP)
    d = scale.float().numpy().astype(np.float16).reshape(n, -1, 1).view(np.uint8)
    if kind == "Q8_0":
        qs = (groups - 128).astype(np.int8).view(np.uint8)
        return np.concatenate([d, qs], axis=2).reshape(n, -1)
    if kind == "Q4_0":
        groups = groups + (8 - (1 << (module.bits - 1)))
    nibbles = (groups[..., :GROUP // 2] | (groups[..., GROUP // 2:] << 4)).astype(np.uint8)
    if kind == "Q4_0":
        return np.concatenate([d, nibbles], axis=2).reshape(n, -1)
    m = offset.float().numpy().astype(np.float16).reshape(n, -1, 1).view(np.uint8)
    return np.concatenate([d, m, nibbles], axis=2).reshape(n, -1)


def _rows(module: nn.Module) -> int:
    shape = getattr(module, "dense_shape", None)
    return int(shape()[0]) if callable(shape) else int(module.weight.shape[0])


def _float_weight(module: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        if hasattr(module, "dequantized_weight"):
            return module.dequantized_weight()
        return module.weight.detach().float()


def _source_fields(source: Path) -> list[tuple[str, Any, list[Any]]]:
    import gguf

    reader = gguf.GGUFReader(str(source))
    fields = []
    for name, field in reader.fields.items():
        if name.startswith(OWN_KEYS):
            continue
        fields.append((name, field.contents(), field.types))
    return fields


def _config_keys(writer: Any, config: Any) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))


def _tensors(model: nn.Module) -> list[tuple[str, nn.Module, int | None]]:
    """(GGUF name, module, heads for the Q/K row permutation) for every weight to write."""
    config = model.config
    inner = model.model
    out: list[tuple[str, nn.Module, int | None]] = [("token_embd", inner.embed_tokens, None)]
    for i, layer in enumerate(inner.layers):
        for path, short in PROJECTIONS.items():
            heads = {"attn_q": config.num_attention_heads,
                     "attn_k": config.num_key_value_heads}.get(short)
            out.append((f"blk.{i}.{short}", layer.get_submodule(path), heads))
    out.append(("output_norm", inner.norm, None))
    head = model.lm_head
    if not is_tied_head(head, inner.embed_tokens):
        out.append(("output", head, None))
    return out


def export_gguf(model: nn.Module, path: str | Path, *, source: str | Path) -> GGUFExport:
    """Write `model` (a Hugging Face Llama-family causal LM, float or compressed by slimkit) to
    `path` as GGUF, with the tokenizer and general metadata of the GGUF file `source`."""

    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in ("llama", "mistral"):
        raise SlimkitError(f"export_gguf: a Llama-family causal LM is needed (config.model_type "
                           f"{getattr(config, 'model_type', None)!r})")
    source = Path(source)
    if not source.is_file() or source.suffix != ".gguf":
        raise SlimkitError(f"export_gguf: source {str(source)!r} is not a .gguf file")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        result = _write(model, config, partial, source)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    log.info("GGUF: %s (%s; fallbacks %s)", path, dict(Counter(result.types.values())),
             result.fallbacks)
    return GGUFExport(path, result.types, result.fallbacks)


def _write(model: nn.Module, config: Any, partial: Path, source: Path) -> GGUFExport:
    import gguf

    writer = gguf.GGUFWriter(str(partial), "llama")
    for name, value, types in _source_fields(source):
        sub = types[1] if len(types) > 1 else None
        writer.add_key_value(name, value, types[0], sub_type=sub)
    _config_keys(writer, config)
    types: dict[str, str] = {}
    fallbacks: list[str] = []
    for name, module, heads in _tensors(model):
        order = _heads_permutation(_rows(module), heads) if heads else None
        kind = _packed_form(module) if hasattr(module, "qweight") else None
        if kind is not None:
            rows = order if order is not None else np.arange(module.dense_shape()[0])
            writer.add_tensor(f"{name}.weight", _blocks(module, kind, rows),
                              raw_dtype=gguf.GGMLQuantizationType[kind])
        else:
            kind = "F32"
            weight = _float_weight(module).numpy()
            if order is not None:
                weight = weight[order]
            writer.add_tensor(f"{name}.weight", np.ascontiguousarray(weight, np.float32))
            if weight.ndim == 2:
                fallbacks.append(name)
        types[name] = kind
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            values = bias.detach().float().numpy()
            writer.add_tensor(f"{name}.bias", values[order] if order is not None else values)
    common = Counter(t for t in types.values() if t != "F32").most_common(1)
    file_type = {"Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
                 "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}.get(
        common[0][0] if common else "", gguf.LlamaFileType.ALL_F32)
    writer.add_file_type(file_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFExport(partial, types, fallbacks)
