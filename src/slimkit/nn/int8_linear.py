"""A Linear layer with INT8 per-channel weights whose activations are quantized at run time and
multiplied by fbgemm's int8 kernels (torch.ops.quantized.linear_dynamic).

Weights are stored as a plain int8 tensor plus fp32 scales, so the state dict is safetensors-ready;
the packed kernel weight is rebuilt lazily after construction or loading.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..core.cpu import (
    FULL_WEIGHT_MAX,
    PORTABLE_WEIGHT_MAX,
    code_max,
    cpu_features,
    requantize_to_portable,
)
from ..core.module_types import register_module_type
from .runtime_memory import fbgemm_prepacked_bytes

log = logging.getLogger(__name__)
INT8_RANGES = {"portable": PORTABLE_WEIGHT_MAX, "full": FULL_WEIGHT_MAX}


def quantize_weight_int8(weight: torch.Tensor, per_channel: bool,
                         qmax: int = FULL_WEIGHT_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8: q = round(w / s), s = max|w| / qmax per output row (or per tensor)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1) if per_channel else w.abs().amax().expand(w.shape[0])
    # An all-zero row (fully pruned neuron) still needs a positive scale for the kernel.
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    q = torch.clamp(torch.round(w / scale[:, None]), -qmax, qmax).to(torch.int8)
    return q, scale.contiguous()


def kernel_weight(codes: torch.Tensor, scale: torch.Tensor,
                  activations_7bit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The codes and scales to hand this CPU's fbgemm kernel: the stored ones, unless a pair of
    products could overflow int16 here (full-range weights, 8-bit activations, no VNNI)."""
    if activations_7bit or not cpu_features().fbgemm_saturates or \
            code_max(codes) <= PORTABLE_WEIGHT_MAX:
        return codes, scale
    log.info("full-range int8 weights re-packed to [-64, 64]: this CPU's int8 kernels add "
             "pairs of products in 16 bits (no VNNI)")
    return requantize_to_portable(codes, scale)


@register_module_type
class DynamicInt8Linear(nn.Module):
    """y = x W^T + b (then ReLU if `relu`) with W in INT8 per output channel and x quantized
    per batch to UINT8."""

    # fbgemm's int8 ops define no backward: training through this layer would be silently wrong.
    supports_autograd = False

    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 reduce_range: bool = False, relu: bool = False,
                 weight_max: int = PORTABLE_WEIGHT_MAX) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        # reduce_range: 7-bit activations (fbgemm's own remedy for int16 overflow). weight_max:
        # the range the codes were quantized to (64 = portable). The kernel checks the codes
        # themselves, so artifacts from before weight_max (full range, 7-bit activations) stay
        # right everywhere.
        self.reduce_range = reduce_range
        self.weight_max = weight_max
        self.relu = relu
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed: Any = None
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _keys: module._invalidate())

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, per_channel: bool = True,
                    reduce_range: bool = False, relu: bool = False,
                    int8_range: str = "portable") -> DynamicInt8Linear:
        weight_max = INT8_RANGES[int8_range]
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, reduce_range,
                  relu, weight_max)
        q, scale = quantize_weight_int8(linear.weight, per_channel, weight_max)
        new.weight.copy_(q)
        new.weight_scale.copy_(scale)
        if linear.bias is not None and new.bias is not None:
            new.bias.copy_(linear.bias.detach())
        return new

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "reduce_range": self.reduce_range,
                "relu": self.relu, "weight_max": self.weight_max}

    def _invalidate(self) -> None:
        self._packed = None

    def _pack(self) -> Any:
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        codes, scale = kernel_weight(self.weight, self.weight_scale, self.reduce_range)
        with warnings.catch_warnings():
            # torch deprecates creating quantized tensors, but fbgemm's prepack still takes one.
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(
                codes, scale.double(), zero_points, 0)
            return torch.ops.quantized.linear_prepack(qweight, self.bias)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if torch.onnx.is_in_onnx_export():
            if len(shape) == 2:
                return _DynamicQLinear.apply(x.float(), self)  # type: ignore[no-any-return,no-untyped-call]
            out: torch.Tensor = _DynamicQLinear.apply(  # type: ignore[no-untyped-call]
                x.reshape(-1, shape[-1]).float(), self)
            return out.reshape(*shape[:-1], self.out_features)
        if self._packed is None:
            self._packed = self._pack()
        # The fused kernel applies ReLU on the int32 accumulator's output in the same pass.
        op = torch.ops.quantized.linear_relu_dynamic if self.relu else \
            torch.ops.quantized.linear_dynamic
        y: torch.Tensor = op(x.reshape(-1, shape[-1]).float().contiguous(), self._packed,
                             self.reduce_range)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        relu = ", relu" if self.relu else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8{relu}"

    def __deepcopy__(self, memo: dict[int, Any]) -> DynamicInt8Linear:
        # The packed kernel weight is a ScriptObject that cannot be deep-copied; rebuild it lazily.
        new = DynamicInt8Linear(**self.spec())
        new.load_state_dict(self.state_dict())
        new.train(self.training)
        return new

    def extra_runtime_bytes(self) -> int:
        """fbgemm's prepacked weight, built on the first forward (see runtime_memory)."""
        return fbgemm_prepacked_bytes(self.weight.numel(), self.out_features)


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Pause the TorchScript tracer: in torch 2.13 it stays active inside an autograd.Function's
    forward during ONNX export, and ops recorded there break the exporter ("unordered_map::at")."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)  # type: ignore[attr-defined]


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
