"""Bits per weight over a whole model (embeddings, norms and biases included): the bytes a
compressed model stores for its weights, times 8, over its logical parameter count (what the
uncompressed model would hold). An fp32 model is 32; a 4-bit layer with one fp16 scale per 64
weights is 4.25, but the model's figure also carries every table and norm that stays float.
A tied weight is one tensor and counts once."""

from __future__ import annotations

from typing import Any

from torch import nn


def _tensor_key(t: Any) -> tuple[int, tuple[int, ...], str]:
    # A tied weight or a buffer two modules share is stored once: same address, shape, dtype.
    return (t.data_ptr(), tuple(t.shape), str(t.dtype))


def stored_weight_bytes(model: nn.Module, leave_out: frozenset[str] = frozenset()) -> int:
    """Bytes of the model's state-dict tensors (less the names in `leave_out`), each distinct
    tensor once (the tied head is the embedding's table). Counted per tensor, not per storage: a
    loaded tensor may be a view into one large file-backed storage."""
    seen: set[tuple[int, tuple[int, ...], str]] = set()
    total = 0
    for name, t in model.state_dict().items():
        if name in leave_out:
            continue
        key = _tensor_key(t)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def logical_parameters(model: nn.Module) -> int:
    """Weights the model computes with, whatever their storage: a packed layer (any module with a
    `qweight` buffer: WeightOnlyLinear, WeightOnlyEmbedding, TiedLowBitHead) counts rows x
    logical width of its table (once per table: a tied head shares its embedding's) plus its bias;
    every float parameter counts its elements (once per tensor)."""
    seen: set[tuple[int, tuple[int, ...], str]] = set()
    total = 0
    for module in model.modules():
        packed = module._buffers.get("qweight")
        if packed is not None:
            key = _tensor_key(packed)
            if key not in seen:
                seen.add(key)
                width = getattr(module, "in_features", None) or module.embedding_dim
                total += packed.shape[0] * width
            bias = module._buffers.get("bias")
            if bias is not None:
                total += bias.numel()
        for p in module._parameters.values():
            if p is not None and _tensor_key(p) not in seen:
                seen.add(_tensor_key(p))
                total += p.numel()
    return total


def bits_per_weight(model: nn.Module) -> float:
    return 8 * stored_weight_bytes(model) / logical_parameters(model)
