"""The input embedding and the output head of the causal-LM graph, stored once when they are tied.

A float table is one initializer read by Gather (the lookup) and by Gemm with transB (the head).
A WeightOnlyEmbedding (slimkit.nn.lowbit_embedding) becomes `com.microsoft::GatherBlockQuantized`
over its packed codes, and a TiedLowBitHead over the same table becomes MatMulNBits reading that
very initializer: both take codes shaped [vocab, groups, group bytes] (MatMulNBits requires that
shape; GatherBlockQuantized then blocks along its last axis). Only the scales are written twice
(MatMulNBits takes them [vocab * groups], GatherBlockQuantized [vocab, groups, 1]; 1/group of the
table in fp32). Without a zero point both kernels use 2^(bits-1), slimkit's symmetric code
centre; an asymmetric table gathers without one too and adds each row's float group offsets
plus 2^(bits-1) times its scales.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..nn.groupwise import effective_group
from .lm_onnx_graph import (
    MS_DOMAIN,
    GraphBuilder,
    emit_linear,
    kernel_bits,
    kernel_codes,
    layer_group_params,
    matmul_nbits,
    nbits_refusal,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Table:
    """How the lookup stored the embedding, for a tied head to reuse."""

    module: Any
    dense: str | None = None  # float [vocab, hidden] initializer
    codes: str | None = None  # packed [vocab, groups, bytes] initializer


def emit_embedding(g: GraphBuilder, embedding: Any) -> tuple[str, Table]:
    """hidden [batch, seq, embedding_dim] for input_ids, and the table as stored."""
    if _is_lowbit_table(embedding):
        why = nbits_refusal(embedding.bits, embedding.group_size, embedding.embedding_dim)
        if why is None:
            return _gather_block_quantized(g, embedding)
        g.fallbacks.append(f"embed_tokens: {why}")
        log.info("embed_tokens: de-quantized float table (%s)", why)
        with torch.no_grad():
            weight = embedding.dequantized_weight()
        table = g.initializer(weight.numpy(), "embed_tokens.weight")
    else:
        table = g.tensor(embedding.weight, "embed_tokens.weight")
    return g.op("Gather", [table, "input_ids"], "embed"), Table(embedding, dense=table)


def emit_head(g: GraphBuilder, h: str, head: Any, table: Table) -> str:
    """logits [batch, seq, vocab] for hidden h; a head tied to the table reads its initializer."""
    if table.dense is not None and is_tied_head(head, table.module):
        # Gemm reads the [vocab, hidden] table transposed: no second, transposed copy.
        hidden = table.module.embedding_dim
        flat = g.op("Reshape", [h, g.const([-1, hidden])], "head_in")
        logits = g.op("Gemm", [flat, table.dense], "head", transB=1)
        shape = g.op("Shape", [h], "head_shape", end=2)
        full = g.op("Concat", [shape, g.const([-1])], "logits_shape", axis=0)
        return g.op("Reshape", [logits, full], "logits")
    if table.codes is not None and is_tied_head(head, table.module):
        return g.op("Identity", [matmul_nbits(g, h, head, "lm_head", codes=table.codes)],
                    "logits")
    return g.op("Identity", [emit_linear(g, h, head, "lm_head")], "logits")


def is_tied_head(head: Any, embedding: Any) -> bool:
    """Whether `head` reads `embedding`'s table (a float tie, or a TiedLowBitHead's)."""
    if type(head) is nn.Linear:
        return head.weight.data_ptr() == embedding.weight.data_ptr()
    is_tied_to = getattr(head, "is_tied_to", None)
    return callable(is_tied_to) and bool(is_tied_to(embedding))


def _is_lowbit_table(module: nn.Module) -> bool:
    try:
        from ..nn.lowbit_embedding import WeightOnlyEmbedding
    except ImportError:  # an older slimkit without quantized tables: nothing to detect
        return False
    return isinstance(module, WeightOnlyEmbedding)


def _gather_block_quantized(g: GraphBuilder, e: Any) -> tuple[str, Table]:
    vocab, dim, bits = e.num_embeddings, e.embedding_dim, kernel_bits(e.bits)
    block = effective_group(dim, e.group_size)
    blocks = dim // block
    codes = g.initializer(kernel_codes(e).reshape(vocab, blocks, block * bits // 8),
                          "embed_tokens.qweight")
    scale, offset = layer_group_params(e)  # decoded when double-quantized (param_bits > 0)
    scales = scale.numpy().reshape(vocab, blocks, 1)
    inputs = [codes, "input_ids", g.initializer(scales, "embed_tokens.gather_scale")]
    rows = g.op("GatherBlockQuantized", inputs, "embed_blocks", domain=MS_DOMAIN, bits=bits,
                block_size=block, gather_axis=0, quantize_axis=2)
    if offset is not None:
        # As the head's MatMulNBits: no zero point, the implicit 2^(bits-1) joins the offset.
        offset = offset + (1 << (bits - 1)) * scale
        offsets = g.op("Gather", [g.initializer(offset.numpy(), "embed_tokens.offset"),
                                  "input_ids"],
                       "embed_offsets")
        rows = g.op("Add", [rows, g.op("Unsqueeze", [offsets, g.const([-1])], "embed_off_col")],
                    "embed_asym")
    hidden = g.op("Reshape", [rows, g.const([0, 0, dim])], "embed")
    return hidden, Table(e, codes=codes)
