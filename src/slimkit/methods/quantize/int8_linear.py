"""A Linear layer with INT8 per-channel weights whose activations are quantized at run time and
multiplied by fbgemm's int8 kernels (torch.ops.quantized.linear_dynamic).

Weights are stored as a plain int8 tensor plus fp32 scales, so the state dict is safetensors-ready;
the packed kernel weight is rebuilt lazily after construction or loading.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


def quantize_weight_int8(weight: torch.Tensor,
                         per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8: q = round(w / s), s = max|w| / 127 per output row (or per tensor)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1) if per_channel else w.abs().amax().expand(w.shape[0])
    # An all-zero row (fully pruned neuron) still needs a positive scale for the kernel.
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale.contiguous()


class DynamicInt8Linear(nn.Module):
    """y = x W^T + b (then ReLU if `relu`) with W in INT8 per output channel and x quantized
    per batch to UINT8."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 reduce_range: bool = True, relu: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.reduce_range = reduce_range
        self.relu = relu
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed: Any = None
        self.register_load_state_dict_post_hook(lambda module, _keys: module._invalidate())

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, per_channel: bool = True,
                    reduce_range: bool = True, relu: bool = False) -> DynamicInt8Linear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, reduce_range,
                  relu)
        q, scale = quantize_weight_int8(linear.weight, per_channel)
        new.weight.copy_(q)
        new.weight_scale.copy_(scale)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach())
        return new

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "reduce_range": self.reduce_range,
                "relu": self.relu}

    def _invalidate(self) -> None:
        self._packed = None

    def _pack(self) -> Any:
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # torch deprecates creating quantized tensors, but fbgemm's prepack still takes one.
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(
                self.weight, self.weight_scale.double(), zero_points, 0)
            return torch.ops.quantized.linear_prepack(qweight, self.bias)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self._packed = self._pack()
        shape = x.shape
        # The fused kernel applies ReLU on the int32 accumulator's output in the same pass.
        op = torch.ops.quantized.linear_relu_dynamic if self.relu else \
            torch.ops.quantized.linear_dynamic
        out = op(x.reshape(-1, shape[-1]).float().contiguous(), self._packed, self.reduce_range)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        relu = ", relu" if self.relu else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8{relu}"

    def __deepcopy__(self, memo: dict[int, Any]) -> DynamicInt8Linear:
        # The packed kernel weight is a ScriptObject that cannot be deep-copied; rebuild it lazily.
        new = DynamicInt8Linear(**self.spec())
        new.load_state_dict(self.state_dict())
        new.train(self.training)
        return new
