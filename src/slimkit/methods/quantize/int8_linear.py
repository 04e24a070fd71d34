"""A Linear layer with INT8 per-channel weights whose activations are quantized at run time and
multiplied by fbgemm's int8 kernels (torch.ops.quantized.linear_dynamic).

Weights are stored as a plain int8 tensor plus fp32 scales, so the state dict is safetensors-ready;
the packed kernel weight is rebuilt lazily after construction or loading.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
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

    # fbgemm's int8 ops define no backward: training through this layer would be silently wrong.
    supports_autograd = False

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
        shape = x.shape
        if torch.onnx.is_in_onnx_export():
            if len(shape) == 2:
                return _DynamicQLinear.apply(x.float(), self)
            out = _DynamicQLinear.apply(x.reshape(-1, shape[-1]).float(), self)
            return out.reshape(*shape[:-1], self.out_features)
        if self._packed is None:
            self._packed = self._pack()
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


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Pause the TorchScript tracer: in torch 2.13 it stays active inside an autograd.Function's
    forward during ONNX export, and ops recorded there break the exporter ("unordered_map::at")."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


class _DynamicQLinear(torch.autograd.Function):
    """ONNX export of DynamicInt8Linear: DynamicQuantizeLinear + MatMulInteger + scale multiply,
    the pattern ONNX Runtime fuses into its DynamicQuantizeMatMul int8 kernel."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, m: DynamicInt8Linear) -> torch.Tensor:
        # Only traced for shapes; run the float equivalent (fbgemm ops do not trace).
        with untraced():
            y = torch.nn.functional.linear(x, m.dequantized_weight(), m.bias)
            return torch.relu(y) if m.relu else y

    @staticmethod
    def symbolic(g: Any, x: Any, m: DynamicInt8Linear) -> Any:
        def const(t: torch.Tensor) -> Any:
            return g.op("Constant", value_t=t)

        xq, x_scale, x_zp = g.op("DynamicQuantizeLinear", x, outputs=3)
        acc = g.op("MatMulInteger", xq, const(m.weight.t().contiguous()), x_zp,
                   const(torch.zeros(m.out_features, dtype=torch.int8)))
        scale = g.op("Mul", x_scale, const(m.weight_scale.float()))
        y = g.op("Mul", g.op("Cast", acc, to_i=1), scale)  # to_i=1: FLOAT
        if m.bias is not None:
            y = g.op("Add", y, const(m.bias.float()))
        return g.op("Relu", y) if m.relu else y
