"""Deployable Linear layers with binary (1 bit) or ternary (2 bits) weights, and the fake-quant
wrapper used while training them.

The state dict holds only plain tensors: packed codes (uint8), fp32 per-channel scales and the fp32
bias, so safetensors artifacts rebuild the layer exactly. By default each forward de-quantizes
the weight a block of output rows at a time (resident: the packed codes; outputs equal to the
cached mode's within fp32 rounding, see blockwise.py); with `cache=True` the dense weight is kept,
and the cache is dropped on load_state_dict, on device moves and on deepcopy.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..core.module_types import register_module_type
from .binary_math import fake_quantize, pack_codes, quantize, ste, unpack_codes
from .blockwise import block_rows, blockwise_linear
from .int8_linear import untraced
from .runtime_memory import PackedMemory


class _PackedSignLinear(PackedMemory, nn.Module):
    """y = x (scale * codes)^T + b with codes packed `bits` per weight. `weight` is a read-only
    de-quantized view for code written against nn.Linear, built on each access."""

    bits: ClassVar[int] = 1

    packed: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 cache: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.cache = bool(cache)
        width = -(-in_features * self.bits // 8)
        self.register_buffer("packed", torch.zeros(out_features, width, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._dense: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _keys: module._invalidate())

    @classmethod
    def from_linear(cls, linear: nn.Linear, kind: str, factor: float = 0.7,
                    cache: bool = False) -> Any:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, cache)
        codes, scale = quantize(linear.weight, kind, factor)
        new.packed.copy_(pack_codes(codes, kind))
        new.scale.copy_(scale)
        if linear.bias is not None and new.bias is not None:
            new.bias.copy_(linear.bias.detach())
        new._invalidate()
        return new

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "cache": self.cache}

    @property
    def weight(self) -> torch.Tensor:
        with untraced():
            return self.dequantized_weight()

    def dense_numel(self) -> int:
        return self.out_features * self.in_features

    def _invalidate(self) -> None:
        self._dense = None

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        self._invalidate()  # .to(device) / .double() move the buffers; rebuild from the new ones
        return super()._apply(fn, recurse)  # type: ignore[no-untyped-call]

    def codes(self) -> torch.Tensor:
        return unpack_codes(self.packed, self.bits, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        # Built outside inference mode so the cache can also serve later training forwards.
        with torch.inference_mode(False), torch.no_grad():
            return self.dequantized_rows(slice(None)).contiguous()

    def dequantized_rows(self, rows: slice) -> torch.Tensor:
        codes = unpack_codes(self.packed[rows], self.bits, self.in_features)
        return codes.to(self.scale.device) * self.scale[rows, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.cache or torch.onnx.is_in_onnx_export()):
            return blockwise_linear(x, self.out_features, self._constant_rows, self.bias,
                                    block_rows(self.in_features))
        dense = self._dense
        if dense is None:
            # Unpacking is not traced into ONNX (no bitwise AND on bytes there): the exported
            # graph holds the de-quantized weight as a constant.
            with untraced():
                dense = self.dequantized_weight()
            if self.cache:
                self._dense = dense
        return F.linear(x, dense.to(x.dtype), self.bias)

    def _constant_rows(self, rows: slice) -> torch.Tensor:
        with torch.no_grad():
            return self.dequantized_rows(rows)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{self.bits}-bit codes, {self.memory_mode}")

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        # Rebuilt from spec + state: the copy starts without the dense cache (memory) and with
        # its own load hook bound to itself.
        new = type(self)(**self.spec()).to(self.scale.device)
        memo[id(self)] = new
        new.load_state_dict(self.state_dict())
        new.train(self.training)
        return new


@register_module_type
class BinaryLinear(_PackedSignLinear):
    """Binary weights, one bit each: BinaryConnect (scale 1) or XNOR-Net (scale mean |W|)."""

    bits = 1


@register_module_type
class TernaryLinear(_PackedSignLinear):
    """Ternary weights {-alpha, 0, +alpha} per channel in two bits each (TWN, Li et al. 2016)."""

    bits = 2


@register_module_type
class FakeSignLinear(nn.Module):
    """Training-time stand-in: forward uses the quantized weight, backward updates the latent fp32
    weight through the straight-through estimator. Never saved; converted before the step ends."""

    def __init__(self, linear: nn.Linear, kind: str, factor: float, clip: float) -> None:
        super().__init__()
        self.linear = linear
        self.kind = kind
        self.factor = factor
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight
        return F.linear(x, ste(w, fake_quantize(w, self.kind, self.factor), self.clip),
                        self.linear.bias)

    @torch.no_grad()
    def clip_latent(self) -> None:
        # BinaryConnect keeps latent weights in [-1, 1]: beyond the clip the STE passes no
        # gradient, so an unclipped weight could never come back.
        self.linear.weight.clamp_(-self.clip, self.clip)
