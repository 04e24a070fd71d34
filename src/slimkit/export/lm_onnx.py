"""ONNX export of a Llama-family causal language model with an explicit key/value cache, for
ONNX Runtime to prefill a prompt and then decode token by token.

The graph is written directly with onnx.helper from the model's own modules (no tracing):
  inputs   input_ids [batch, seq] int64, attention_mask [batch, past + seq] int64,
           position_ids [batch, seq] int64, past_key_values.{i}.key/.value
           [batch, kv_heads, past, head_dim] float32 (past = 0 for the prefill)
  outputs  logits [batch, seq, vocab] (or [batch, 1, vocab] with logits="last"),
           present.{i}.key/.value [batch, kv_heads, past + seq, head_dim]
Names follow Hugging Face Optimum's, so its tooling reads the file. Linear layers are written by
lm_onnx_graph.emit_linear (slimkit's WeightOnlyLinear as MatMulNBits). Attention is the eager
formula of transformers (matmul, scale, additive mask, softmax) with grouped-query heads
broadcast rather than repeated, so key/value heads are never copied.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .lm_onnx_embedding import emit_embedding, emit_head
from .lm_onnx_graph import MS_DOMAIN, GraphBuilder, emit_linear

log = logging.getLogger(__name__)
LOGITS = ("all", "last")
# ONNX Runtime 1.31 reads IR version <= 10 files written by onnx 1.23 (its default is newer).
IR_VERSION = 10


def export_causal_lm(model: nn.Module, path: str | Path, *, opset: int = 17,
                     accuracy_level: int = 4, logits: str = "all") -> Path:
    """Write `model` (a LlamaForCausalLM-like model, Linear layers possibly WeightOnlyLinear)
    as ONNX to `path` atomically and return the path.

    accuracy_level is MatMulNBits' attribute: 4 quantizes activations to int8 per block inside
    the kernel, the fast path on CPU (8-bit weights have no other fast path in ONNX Runtime
    1.31: 40x slower); 0 computes in fp32 and matches torch to rounding. logits="last" keeps
    only the last position's logits (what generation needs; a prefill then skips the
    vocabulary-sized product for every other position).
    """
    import onnx
    from onnx import TensorProto, helper

    if logits not in LOGITS:
        raise ValueError(f"logits={logits!r}: expected one of {LOGITS}")
    shape = _llama_shape(model)
    g = GraphBuilder(accuracy_level)
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch", "total"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = []
    cache_shape = ["batch", shape["kv_heads"], "past", shape["head_dim"]]
    present_shape = ["batch", shape["kv_heads"], "total", shape["head_dim"]]
    for i in range(shape["layers"]):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}",
                                                        TensorProto.FLOAT, cache_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}",
                                                         TensorProto.FLOAT, present_shape))
    logits_name = _build(g, model, shape, opset, logits == "last")
    vocab = shape["vocab"]
    outputs.insert(0, helper.make_tensor_value_info(logits_name, TensorProto.FLOAT,
                                                    ["batch", "logit_seq", vocab]))
    graph = helper.make_graph(g.nodes, "causal_lm", inputs, outputs, g.initializers)
    proto = helper.make_model(graph, ir_version=IR_VERSION, producer_name="slimkit",
                              opset_imports=[helper.make_opsetid("", opset),
                                             helper.make_opsetid(MS_DOMAIN, 1)])
    entry = proto.metadata_props.add()
    entry.key, entry.value = "slimkit.fallbacks", "; ".join(g.fallbacks)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    log.info("exported %s (%d bytes, %d MatMulNBits, %d de-quantized fallbacks)", path,
             path.stat().st_size, g.nbits_nodes, len(g.fallbacks))
    return path


def _llama_shape(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if config is None or layers is None or not hasattr(body, "embed_tokens") \
            or not hasattr(body, "rotary_emb") or not hasattr(model, "lm_head"):
        raise ValueError(f"{type(model).__name__}: not a Llama-family causal LM "
                         "(model.embed_tokens, model.layers, model.rotary_emb, lm_head)")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={config.hidden_act!r}: only SwiGLU (silu) is exported")
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"layers": len(layers), "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
            "vocab": config.vocab_size, "eps": float(config.rms_norm_eps)}


def _build(g: GraphBuilder, model: Any, shape: dict[str, Any], opset: int,
           last_only: bool) -> str:
    body = model.model
    h, table = emit_embedding(g, body.embed_tokens)
    cos, sin = _rotary(g, body.rotary_emb)
    bias = _mask_bias(g)
    for i, layer in enumerate(body.layers):
        normed = _rms_norm(g, h, layer.input_layernorm, shape["eps"], opset, f"l{i}.ln1")
        h = g.op("Add", [h, _attention(g, normed, layer.self_attn, i, shape, cos, sin, bias)],
                 f"l{i}.attn_res")
        normed = _rms_norm(g, h, layer.post_attention_layernorm, shape["eps"], opset,
                           f"l{i}.ln2")
        h = g.op("Add", [h, _mlp(g, normed, layer.mlp, f"l{i}.mlp")], f"l{i}.mlp_res")
    if last_only:
        h = g.op("Slice", [h, g.const([-1]), g.const([2**62]), g.const([1])], "last_position")
    h = _rms_norm(g, h, body.norm, shape["eps"], opset, "final_norm")
    return emit_head(g, h, model.lm_head, table)


def _rms_norm(g: GraphBuilder, x: str, norm: Any, eps: float, opset: int,
              name: str) -> str:
    """transformers' RMSNorm: x * rsqrt(mean(x^2) + eps) * weight (ONNX Runtime fuses it)."""
    square = g.op("Mul", [x, x], f"{name}_sq")
    if opset >= 18:
        mean = g.op("ReduceMean", [square, g.const([-1])], f"{name}_mean")
    else:
        mean = g.op("ReduceMean", [square], f"{name}_mean", axes=[-1])
    root = g.op("Sqrt", [g.op("Add", [mean, g.const(eps, np.float32)], f"{name}_eps")],
                f"{name}_sqrt")
    inv = g.op("Reciprocal", [root], f"{name}_inv")
    return g.op("Mul", [g.tensor(norm.weight, f"{name}.weight"),
                        g.op("Mul", [x, inv], f"{name}_scaled")], name)


def _rotary(g: GraphBuilder, rotary: Any) -> tuple[str, str]:
    """cos, sin [batch, 1, seq, head_dim] from position_ids, as transformers computes them
    (positions times inv_freq, duplicated, times attention_scaling)."""
    inv_freq = rotary.inv_freq.detach().float().numpy()
    pos = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], "pos_f", to=1), g.const([-1])],
               "pos_col")
    freqs = g.op("Mul", [pos, g.initializer(inv_freq, "inv_freq")], "freqs")
    emb = g.op("Concat", [freqs, freqs], "rope_angles", axis=-1)
    scaling = float(getattr(rotary, "attention_scaling", 1.0))
    out = []
    for fn in ("Cos", "Sin"):
        value = g.op(fn, [emb], f"rope_{fn.lower()}")
        if scaling != 1.0:
            value = g.op("Mul", [value, g.const(scaling, np.float32)], f"rope_{fn.lower()}_s")
        out.append(g.op("Unsqueeze", [value, g.const([1])], f"rope_{fn.lower()}_h"))
    return out[0], out[1]


def _mask_bias(g: GraphBuilder) -> str:
    """Additive mask [batch, 1, 1, seq, total]: 0 where a query may attend (the key is not
    padding and not after it: query j sits at past + j), the lowest float elsewhere."""
    total = g.op("Shape", ["attention_mask"], "total", start=1, end=2)
    seq = g.op("Shape", ["input_ids"], "seq", start=1, end=2)
    past = g.op("Sub", [total, seq], "past")
    scalar = g.const([])
    one = g.const(1)
    key_pos = g.op("Range", [g.const(0), g.op("Reshape", [total, scalar], "total_s"), one],
                   "key_pos")
    query_pos = g.op("Range", [g.op("Reshape", [past, scalar], "past_s"),
                               g.op("Reshape", [total, scalar], "total_s2"), one], "query_pos")
    causal = g.op("LessOrEqual", [key_pos, g.op("Unsqueeze", [query_pos, g.const([1])],
                                                 "query_col")], "causal")
    keep = g.op("Cast", [g.op("Unsqueeze", ["attention_mask", g.const([1, 2, 3])], "mask_5d")],
                "mask_bool", to=9)
    allowed = g.op("And", [keep, causal], "allowed")
    return g.op("Where", [allowed, g.const(0.0, np.float32),
                          g.const(np.finfo(np.float32).min, np.float32)], "mask_bias")


def _heads(g: GraphBuilder, x: str, heads: int, head_dim: int, name: str) -> str:
    """[batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim]."""
    split = g.op("Reshape", [x, g.const([0, 0, heads, head_dim])], f"{name}_split")
    return g.op("Transpose", [split], f"{name}_heads", perm=[0, 2, 1, 3])


def _rope(g: GraphBuilder, x: str, cos: str, sin: str, dim: int, name: str) -> str:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] (x1, x2: the two halves)."""
    half, axis = g.const([dim // 2]), g.const([-1])
    first = g.op("Slice", [x, g.const([0]), half, axis], f"{name}_x1")
    second = g.op("Slice", [x, half, g.const([dim]), axis], f"{name}_x2")
    rotated = g.op("Concat", [g.op("Neg", [second], f"{name}_neg"), first], f"{name}_rot",
                   axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos], f"{name}_cos"),
                        g.op("Mul", [rotated, sin], f"{name}_sin")], f"{name}_rope")


def _attention(g: GraphBuilder, x: str, attn: Any, i: int, shape: dict[str, Any],
               cos: str, sin: str, bias: str) -> str:
    heads, kv_heads, dim = shape["heads"], shape["kv_heads"], shape["head_dim"]
    name = f"l{i}.attn"
    q = _heads(g, emit_linear(g, x, attn.q_proj, f"{name}.q_proj"), heads, dim, f"{name}.q")
    k = _heads(g, emit_linear(g, x, attn.k_proj, f"{name}.k_proj"), kv_heads, dim, f"{name}.k")
    v = _heads(g, emit_linear(g, x, attn.v_proj, f"{name}.v_proj"), kv_heads, dim, f"{name}.v")
    q = _rope(g, q, cos, sin, dim, f"{name}.q")
    k = _rope(g, k, cos, sin, dim, f"{name}.k")
    key = g.op("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
    value = g.op("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
    # Grouped-query: queries [b, kv, group, seq, d] against keys [b, kv, 1, d, total].
    group = heads // kv_heads
    q5 = g.op("Reshape", [q, g.const([0, kv_heads, group, -1, dim])], f"{name}.q5")
    k5 = g.op("Transpose", [g.op("Unsqueeze", [key, g.const([2])], f"{name}.k5")],
              f"{name}.kt", perm=[0, 1, 2, 4, 3])
    scores = g.op("Mul", [g.op("MatMul", [q5, k5], f"{name}.qk"),
                          g.const(float(attn.scaling), np.float32)], f"{name}.scaled")
    probs = g.op("Softmax", [g.op("Add", [scores, bias], f"{name}.masked")], f"{name}.probs",
                 axis=-1)
    v5 = g.op("Unsqueeze", [value, g.const([2])], f"{name}.v5")
    context = g.op("Reshape", [g.op("MatMul", [probs, v5], f"{name}.pv"),
                               g.const([0, heads, -1, dim])], f"{name}.context")
    merged = g.op("Reshape", [g.op("Transpose", [context], f"{name}.ctx_t", perm=[0, 2, 1, 3]),
                              g.const([0, 0, heads * dim])], f"{name}.merged")
    return emit_linear(g, merged, attn.o_proj, f"{name}.o_proj")


def _mlp(g: GraphBuilder, x: str, mlp: Any, name: str) -> str:
    gate = emit_linear(g, x, mlp.gate_proj, f"{name}.gate_proj")
    up = emit_linear(g, x, mlp.up_proj, f"{name}.up_proj")
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{name}.sigmoid")], f"{name}.silu")
    return emit_linear(g, g.op("Mul", [silu, up], f"{name}.gated"), mlp.down_proj,
                       f"{name}.down_proj")
