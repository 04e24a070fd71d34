"""WeightOnlyLinear: a Linear layer stored as packed 8/4/3/2-bit codes with per-group scales (and
offsets). By default (`cache=False`) each forward de-quantizes the weight for that call only, so
the resident state is the packed form; `cache=True` keeps the fp32 weight (speed over memory).

The state dict holds plain tensors only (uint8 codes, fp16/fp32 scales, optional offsets, bias,
optional AWQ input scale), so safetensors artifacts rebuild it exactly from `type(m)(**m.spec())`.
With `param_bits` 6 or 8 the scales and offsets are stored double-quantized (group_params.py,
double_quant.py): 4-bit group 32 then costs 4.375 bits per weight plus 48 bits per row, not 5.0.

Why no low-bit kernel: torch 2.13's CPU kernels `_weight_int4pack_mm_for_cpu` and
`_weight_int8pack_mm` were timed against F.linear on the cached weight (bench/weight_only.py
--kernels, MiniLM shapes, 2 busy AVX-512 cores): with fp32 activations they are 10-100x slower
(int4 at 1536x384, batch 256: 124 ms vs 1.1-1.5 ms). Their fast path needs bf16 activations, which
changes the numerics; it roughly ties F.linear at batch 1-16 and is slower at batch 256. So the
packed form is the resident format and F.linear runs on de-quantized weights: a block of output
rows at a time per call (transient: about 4 MiB, see blockwise.py) or, with `cache=True`, the
whole weight kept (run-time memory of fp32). The two modes agree within fp32 rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..core.module_types import register_module_type
from .blockwise import block_rows, blockwise_linear
from .double_quant import DoubleQuant, quantize_groups_dq
from .group_params import GroupParamBuffers
from .groupwise import (
    BITS,
    dequantize_groups,
    num_groups,
    pack_codes,
    packed_width,
    quantize_groups,
    unpack_codes,
)
from .int8_linear import untraced
from .runtime_memory import PackedMemory

SCALE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@register_module_type
class WeightOnlyLinear(GroupParamBuffers, PackedMemory):
    """y = x W^T + b with W group-wise quantized to `bits`.

    AWQ's input scale s is kept here rather than folded into a preceding LayerNorm or Linear (which
    needs graph knowledge and sharing of s between q/k/v): the de-quantized weight is Q(W s) / s,
    so the run-time cost of the scale is zero and the module works after any producer.

    `weight` is a read-only view for code written against nn.Linear (torch's
    TransformerEncoderLayer and MultiheadAttention read their children's `.weight`): it is
    de-quantized on each access and never stored.
    """

    qweight: torch.Tensor
    scale: torch.Tensor | None  # None with param_bits > 0: read through group_params()
    offset: torch.Tensor | None
    bias: torch.Tensor | None
    input_scale: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bits: int = 4,
                 group_size: int = 128, symmetric: bool = False, bias: bool = True,
                 scale_dtype: str = "float16", input_scale: bool = False,
                 cache: bool = False, param_bits: int = 0) -> None:
        super().__init__()
        if bits not in BITS or scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"WeightOnlyLinear: bits={bits!r} scale_dtype={scale_dtype!r} "
                             f"unsupported (bits in {BITS}, scale_dtype in {list(SCALE_DTYPES)})")
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        self.symmetric = symmetric
        self.scale_dtype = scale_dtype
        self.cache = bool(cache)
        groups = num_groups(in_features, group_size)
        dtype = SCALE_DTYPES[scale_dtype]
        self.register_buffer("qweight", torch.zeros(out_features, packed_width(in_features, bits),
                                                    dtype=torch.uint8))
        self._register_group_params(out_features, groups, symmetric, dtype, param_bits)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_scale", torch.ones(in_features) if input_scale else None)
        self._dense: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _keys: module._invalidate())

    @classmethod
    def from_codes(cls, linear: nn.Linear, codes: torch.Tensor, scale: torch.Tensor | DoubleQuant,
                   offset: torch.Tensor | None, *, bits: int, group_size: int,
                   input_scale: torch.Tensor | None = None,
                   cache: bool = False) -> WeightOnlyLinear:
        """Wrap codes [out, in] and group parameters produced by RTN, GPTQ or AWQ: plain
        tensors, or a DoubleQuant (then `offset` is unused: the DoubleQuant holds it)."""
        dq = scale if isinstance(scale, DoubleQuant) else None
        step = scale.scale_step if isinstance(scale, DoubleQuant) else scale
        dtype = "float16" if step.dtype == torch.float16 else "float32"
        symmetric = dq.offset_codes is None if dq is not None else offset is None
        new = cls(linear.in_features, linear.out_features, bits, group_size, symmetric,
                  linear.bias is not None, dtype, input_scale is not None, cache,
                  dq.bits if dq is not None else 0)
        new._set_group_params(scale, offset)
        with torch.no_grad():
            new.qweight.copy_(pack_codes(codes, bits))
            if linear.bias is not None and new.bias is not None:
                new.bias.copy_(linear.bias.detach().float())
            if input_scale is not None and new.input_scale is not None:
                new.input_scale.copy_(input_scale)
        return new

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, bits: int, group_size: int,
                    symmetric: bool = False, scale_dtype: str = "float16",
                    cache: bool = False, param_bits: int = 0) -> WeightOnlyLinear:
        """Round-to-nearest quantization of `linear` (against double-quantized group parameters
        when `param_bits` > 0)."""
        dtype = SCALE_DTYPES[scale_dtype]
        if param_bits:
            codes, dq = quantize_groups_dq(linear.weight, bits, group_size, symmetric,
                                           param_bits, dtype)
            return cls.from_codes(linear, codes, dq, None, bits=bits, group_size=group_size,
                                  cache=cache)
        codes, scale, offset = quantize_groups(linear.weight, bits, group_size, symmetric, dtype)
        return cls.from_codes(linear, codes, scale, offset, bits=bits, group_size=group_size,
                              cache=cache)

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric,
                "bias": self.bias is not None, "scale_dtype": self.scale_dtype,
                "input_scale": self.input_scale is not None, "cache": self.cache,
                # Only when set: specs (and artifact manifests) of plain layers stay as they were.
                **({"param_bits": self.param_bits} if self.param_bits else {})}

    def codes(self) -> torch.Tensor:
        return unpack_codes(self.qweight, self.bits, self.in_features)

    def dense_shape(self) -> tuple[int, int]:
        """The effective weight is [out, in], with AWQ's 1 / s folded in."""
        return self.out_features, self.in_features

    def dequantized_rows(self, rows: slice) -> torch.Tensor:
        """Rows `rows` of the effective weight; every weight goes through the same ops whichever
        block it is de-quantized in."""
        codes = unpack_codes(self.qweight[rows], self.bits, self.in_features)
        scale, offset = self.group_params(rows)
        w = dequantize_groups(codes, scale, offset, self.bits, self.group_size)
        if self.input_scale is not None:
            w = w / self.input_scale.float()[None, :]
        return w

    def _invalidate(self) -> None:
        self._dense = None

    def _apply(self, fn: Any, recurse: bool = True) -> WeightOnlyLinear:
        # .to() / .half() / .cuda() change the buffers the cache was built from.
        self._invalidate()
        return super()._apply(fn, recurse)  # type: ignore[no-any-return,no-untyped-call]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.cache or torch.onnx.is_in_onnx_export()):
            return blockwise_linear(x, self.out_features, self._constant_rows, self.bias,
                                    block_rows(self.in_features))
        dense = self._dense
        if dense is None:
            # A cache first built under inference_mode would be an inference tensor, which a
            # later call with autograd on (fine-tuning the layers around it) cannot save.
            # Untraced: an ONNX export holds the de-quantized weight as a constant (the exporter
            # has no bitwise AND on bytes to unpack with).
            with torch.inference_mode(False), torch.no_grad(), untraced():
                dense = self.dequantized_weight()
            if self.cache:
                self._dense = dense
        bias = self.bias
        if dense.dtype != x.dtype:
            dense = dense.to(x.dtype)
            bias = bias.to(x.dtype) if bias is not None else None
        return F.linear(x, dense, bias)

    def _constant_rows(self, rows: slice) -> torch.Tensor:
        with torch.no_grad():
            return self.dequantized_rows(rows)

    def packed_bytes(self) -> int:
        """Alias of `stored_bytes` (kept for existing callers)."""
        return self.stored_bytes()

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        awq = ", awq scale" if self.input_scale is not None else ""
        dq = f", {self.param_bits}-bit params" if self.param_bits else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int{self.bits}, group={self.group_size}, {kind}{awq}{dq}, {self.memory_mode}")

    def __deepcopy__(self, memo: dict[int, Any]) -> WeightOnlyLinear:
        # Copy the stored tensors only; the dense cache (4x-16x larger) is rebuilt lazily.
        new = type(self)(**self.spec())
        new.load_state_dict(self.state_dict())
        new.to(self.qweight.device)
        new.train(self.training)
        memo[id(self)] = new
        return new
