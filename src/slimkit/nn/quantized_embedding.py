"""Embedding / EmbeddingBag with row-wise INT8/INT4/INT2 storage; a lookup de-quantizes only the
rows it gathers, so memory stays at the packed size (Guan et al. 2019, post-training 4-bit tables).

Lookups run fbgemm's fused row-wise kernels (quantized::embedding_bag_{byte,4bit,2bit}_rowwise_
offsets), which read each packed row with its scale and offset appended; that fused layout is
built lazily from the three stored tensors, so the state dict stays plain and safetensors-ready.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.module_types import register_module_type
from .int8_linear import untraced
from .rowwise import pack, quantize_rows, unpack

MODES = ("none", "sum", "mean")
_KERNELS = {8: "embedding_bag_byte_rowwise_offsets", 4: "embedding_bag_4bit_rowwise_offsets",
            2: "embedding_bag_2bit_rowwise_offsets"}


@register_module_type
class QuantizedEmbedding(nn.Module):
    """`mode="none"` behaves as nn.Embedding; "sum"/"mean" as nn.EmbeddingBag on 2-D bags."""

    packed: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, mode: str = "none",
                 padding_idx: int | None = None) -> None:
        super().__init__()
        if bits not in (2, 4, 8) or mode not in MODES:
            raise ValueError(f"QuantizedEmbedding: bits={bits!r} mode={mode!r} unsupported")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.bits = bits
        self.mode = mode
        self.padding_idx = padding_idx
        width = -(-embedding_dim * bits // 8)
        self.register_buffer("packed", torch.zeros(num_embeddings, width, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(num_embeddings, dtype=torch.float16))
        self.register_buffer("offset", torch.zeros(num_embeddings, dtype=torch.float16))
        self._fused: torch.Tensor | None = None
        self._kernel = getattr(torch.ops.quantized, _KERNELS[bits])
        self._offsets: dict[tuple[int, int], torch.Tensor] = {}
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _keys: module._invalidate())

    def _invalidate(self) -> None:
        self._fused = None

    def _fused_rows(self) -> torch.Tensor:
        if self._fused is None:
            # The byte kernel takes fp32 scale/offset, the sub-byte kernels fp16 (exact upcast).
            dtype = torch.float32 if self.bits == 8 else torch.float16
            scale = self.scale.to(dtype).view(torch.uint8).view(self.num_embeddings, -1)
            offset = self.offset.to(dtype).view(torch.uint8).view(self.num_embeddings, -1)
            self._fused = torch.cat([self.packed, scale, offset], dim=1).contiguous()
        return self._fused

    @classmethod
    def from_float(cls, module: nn.Embedding | nn.EmbeddingBag, bits: int) -> QuantizedEmbedding:
        mode = module.mode if isinstance(module, nn.EmbeddingBag) else "none"
        if mode not in MODES:
            raise ValueError(f"EmbeddingBag mode {mode!r} is not supported (sum or mean)")
        new = cls(module.num_embeddings, module.embedding_dim, bits, mode, module.padding_idx)
        codes, scale, offset = quantize_rows(module.weight, bits)
        new.packed.copy_(pack(codes, bits))
        new.scale.copy_(scale)
        new.offset.copy_(offset)
        return new

    def spec(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "bits": self.bits, "mode": self.mode, "padding_idx": self.padding_idx}

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """De-quantized rows for `index` of any shape -> [*index.shape, dim]."""
        codes = unpack(self.packed[index], self.bits, self.embedding_dim)
        scale = self.scale[index].float().unsqueeze(-1)
        offset = self.offset[index].float().unsqueeze(-1)
        return codes.float() * scale + offset

    def _bag_offsets(self, bags: int, length: int, dtype: torch.dtype) -> torch.Tensor:
        # Cached per shape: at batch 1 building offsets costs as much as the lookup itself.
        key = (bags, length)
        offsets = self._offsets.get(key)
        if offsets is None or offsets.dtype != dtype:
            if len(self._offsets) > 16:
                self._offsets.clear()
            offsets = torch.arange(0, bags * length, length, dtype=dtype)
            self._offsets[key] = offsets
        return offsets

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return self._export_forward(index)
        kernel = self._kernel
        flat = index.reshape(-1).contiguous()
        if self.mode == "none":
            # One row per bag: a plain lookup through the same fused kernel.
            offsets = self._bag_offsets(flat.numel(), 1, flat.dtype)
            out = kernel(self._fused_rows(), flat, offsets, False, 0, False, None, None, False)
            return self._trim(out).reshape(*index.shape, self.embedding_dim)
        if index.dim() != 2:
            raise ValueError("QuantizedEmbedding bags take 2-D input [batch, bag_len]")
        batch, length = index.shape
        keep = torch.ones(index.shape, dtype=torch.float32)
        if self.padding_idx is not None:
            keep = (index != self.padding_idx).float()
        if self.mode == "mean":
            # Empty bags give zeros, as nn.EmbeddingBag does.
            keep = keep / keep.sum(dim=1, keepdim=True).clamp(min=1)
        offsets = self._bag_offsets(batch, length, flat.dtype)
        return self._trim(kernel(self._fused_rows(), flat, offsets, False, 0, False,
                                 keep.reshape(-1), None, False))

    def _trim(self, out: torch.Tensor) -> torch.Tensor:
        # fbgemm infers the width from whole packed bytes: a 5-wide INT4 row reads as 6 wide.
        return out if out.shape[-1] == self.embedding_dim else out[..., :self.embedding_dim]

    def _export_forward(self, index: torch.Tensor) -> torch.Tensor:
        """Standard ONNX ops: Gather of uint8 code rows, scale and offset, then the padded bag
        reduction; only the gathered rows are de-quantized.

        Sub-byte codes are unpacked once, at export, into a uint8 table: ONNX Runtime has no
        fast sub-byte gather, and unpacking per call with integer Div/Mul (opset 17 has no
        BitwiseAnd) made the exported lookups slower than fp32. The ONNX file therefore holds
        one byte per code; the slimkit artifact keeps the packed form.
        """
        with untraced():
            table = unpack(self.packed, self.bits, self.embedding_dim).contiguous()
        codes = table[index]
        rows = (codes.float() * self.scale[index].float().unsqueeze(-1)
                + self.offset[index].float().unsqueeze(-1))
        if self.mode == "none":
            return rows
        keep = torch.ones(index.shape, dtype=torch.float32)
        if self.padding_idx is not None:
            keep = (index != self.padding_idx).float()
        if self.mode == "mean":
            keep = keep / keep.sum(dim=1, keepdim=True).clamp(min=1)
        return (rows * keep.unsqueeze(-1)).sum(dim=1)

    def dequantized_weight(self) -> torch.Tensor:
        return self.rows(torch.arange(self.num_embeddings))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int{self.bits}, mode={self.mode}"

    def extra_runtime_bytes(self) -> int:
        """The fused rows fbgemm reads (codes + scale + offset per row), a copy built on the
        first forward beside the buffers."""
        scale_bytes = 4 if self.bits == 8 else 2
        return self.num_embeddings * (self.packed.shape[1] + 2 * scale_bytes)
