"""Deployable static INT8 layers: INT8 per-channel weights, UINT8 activations with calibrated
per-tensor scales, run by fbgemm's quantized::linear / conv2d (torch backend) or emulated exactly
as ONNX Runtime computes its QDQ graph (onnxruntime backend); ONNX export emits that QDQ graph.

State is plain tensors (int8 weight, fp32 scales, bias, activation scales and zero points); the
prepacked kernel is rebuilt lazily after construction, loading or deepcopy.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..core.cpu import PORTABLE_WEIGHT_MAX
from ..core.module_types import register_module_type
from .int8_linear import kernel_weight, quantize_weight_int8, untraced
from .runtime_memory import fbgemm_prepacked_bytes

BACKENDS = ("torch", "onnxruntime")


class _Consts:
    """Python-side constants handed to the autograd Function (non-tensors reach `symbolic`
    as-is, so the weights become ONNX initializers with the exact stored values)."""

    def __init__(self, m: _StaticInt8) -> None:
        self.weight = m.weight
        self.weight_scale = m.weight_scale
        self.bias = m.bias
        self.qparams = m.qparams()
        self.relu = m.relu
        self.conv = m.conv_args() if isinstance(m, StaticInt8Conv2d) else None

    def dequantized_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        return self.weight.float() * self.weight_scale.view(shape)

    def int32_bias(self) -> torch.Tensor:
        # ONNX Runtime adds the bias in the int32 accumulator at scale s_x * s_w (per channel).
        assert self.bias is not None, "int32_bias: the layer has no bias"
        return torch.round(self.bias / (self.qparams[0] * self.weight_scale.double())).to(
            torch.int32)


class _StaticQDQ(torch.autograd.Function):
    """forward: float emulation of the QDQ graph; symbolic: the QDQ graph itself."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, c: _Consts) -> torch.Tensor:
        with untraced():
            return _StaticQDQ.emulate(x, c)

    @staticmethod
    def emulate(x: torch.Tensor, c: _Consts) -> torch.Tensor:
        s_in, zp_in, s_out, zp_out = c.qparams
        x = torch.fake_quantize_per_tensor_affine(x.float(), s_in, zp_in, 0, 255)
        bias = None if c.bias is None else (c.int32_bias().double() * s_in
                                            * c.weight_scale.double()).float()
        w = c.dequantized_weight()
        y = F.linear(x, w, bias) if c.conv is None else F.conv2d(x, w, bias, *c.conv)
        if c.relu:
            y = torch.relu(y)
        return torch.fake_quantize_per_tensor_affine(y, s_out, zp_out, 0, 255)

    @staticmethod
    def symbolic(g: Any, x: Any, c: _Consts) -> Any:
        s_in, zp_in, s_out, zp_out = c.qparams

        def const(t: torch.Tensor) -> Any:
            return g.op("Constant", value_t=t)

        def qdq(v: Any, scale: float, zp: int) -> Any:
            s, z = const(torch.tensor(scale)), const(torch.tensor(zp, dtype=torch.uint8))
            return g.op("DequantizeLinear", g.op("QuantizeLinear", v, s, z), s, z)

        out_ch = c.weight.shape[0]
        w = g.op("DequantizeLinear", const(c.weight), const(c.weight_scale.float()),
                 const(torch.zeros(out_ch, dtype=torch.int8)), axis_i=0)
        inputs = [qdq(x, s_in, zp_in), w]
        if c.bias is not None:
            bias_scale = (s_in * c.weight_scale.double()).float()
            inputs.append(g.op("DequantizeLinear", const(c.int32_bias()), const(bias_scale),
                               const(torch.zeros(out_ch, dtype=torch.int32)), axis_i=0))
        if c.conv is None:
            y = g.op("Gemm", *inputs, transB_i=1)
        else:
            stride, padding, dilation, groups = c.conv
            y = g.op("Conv", *inputs, strides_i=list(stride), pads_i=list(padding) * 2,
                     dilations_i=list(dilation), group_i=groups,
                     kernel_shape_i=list(c.weight.shape[2:]))
        if c.relu:
            y = g.op("Relu", y)
        return qdq(y, s_out, zp_out)


class _StaticInt8(nn.Module):
    """Shared state and run-time plumbing of the static INT8 Linear and Conv2d."""

    # fbgemm's int8 ops and the QDQ emulation define no backward: training through them is wrong.
    supports_autograd = False
    relu: bool
    backend: str
    quantized_output: bool
    weight_max: int

    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None
    input_scale: torch.Tensor
    input_zero_point: torch.Tensor
    output_scale: torch.Tensor
    output_zero_point: torch.Tensor

    def _init_state(self, out_ch: int, weight_shape: tuple[int, ...], bias: bool) -> None:
        self.register_buffer("weight", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_ch))
        self.register_buffer("bias", torch.zeros(out_ch) if bias else None)
        for name in ("input", "output"):
            self.register_buffer(f"{name}_scale", torch.tensor(1.0))
            self.register_buffer(f"{name}_zero_point", torch.tensor(0, dtype=torch.int32))
        self._packed: Any = None
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _keys: module._invalidate())

    def _invalidate(self) -> None:
        self._packed = None

    def set_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        q, scale = quantize_weight_int8(weight.detach().flatten(1), True, self.weight_max)
        self.weight.copy_(q.view_as(self.weight))
        self.weight_scale.copy_(scale)
        if bias is not None and self.bias is not None:
            self.bias.copy_(bias.detach())
        self._invalidate()

    def set_qparams(self, inp: tuple[float, int], out: tuple[float, int]) -> None:
        for name, (scale, zp) in (("input", inp), ("output", out)):
            getattr(self, f"{name}_scale").fill_(scale)
            getattr(self, f"{name}_zero_point").fill_(zp)
        self._invalidate()

    def qparams(self) -> tuple[float, int, float, int]:
        return (float(self.input_scale), int(self.input_zero_point),
                float(self.output_scale), int(self.output_zero_point))

    def dequantized_weight(self) -> torch.Tensor:
        return _Consts(self).dequantized_weight()

    def _qweight(self) -> torch.Tensor:
        zero_points = torch.zeros(self.weight.shape[0], dtype=torch.long)
        # Even 7-bit calibrated activations reach 255 on outliers (quantize clamps to 0..255),
        # so only the codes decide whether this CPU needs a re-pack.
        codes, scale = kernel_weight(self.weight, self.weight_scale, activations_7bit=False)
        return torch._make_per_channel_quantized_tensor(codes, scale.double(), zero_points, 0)

    def _kernel(self) -> Any:
        if self._packed is None:
            with warnings.catch_warnings():
                # torch deprecates creating quantized tensors, but fbgemm's prepack takes one.
                warnings.simplefilter("ignore", UserWarning)
                self._packed = (self._prepack(self._qweight()), self.qparams())
        return self._packed

    def _prepack(self, qweight: torch.Tensor) -> Any:
        raise NotImplementedError

    def _run(self, x: torch.Tensor, op: Any) -> torch.Tensor:
        """x (float or an already-quantized quint8 tensor) -> float, or quint8 when chained."""
        if torch.onnx.is_in_onnx_export() or self.backend == "onnxruntime":
            if x.is_quantized:
                x = x.dequantize()
            return _StaticQDQ.apply(x, _Consts(self))  # type: ignore[no-any-return,no-untyped-call]
        packed, (s_in, zp_in, s_out, zp_out) = self._kernel()
        if not x.is_quantized:
            x = torch.quantize_per_tensor(x.float().contiguous(), s_in, zp_in, torch.quint8)
        y: torch.Tensor = op(x, packed, s_out, zp_out)
        return y if self.quantized_output else y.dequantize()

    def __deepcopy__(self, memo: dict[int, Any]) -> _StaticInt8:
        # The packed kernel is a ScriptObject that cannot be deep-copied; rebuild it lazily.
        new = type(self)(**self.spec())
        new.load_state_dict(self.state_dict())
        new.train(self.training)
        return new

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def extra_runtime_bytes(self) -> int:
        """fbgemm's prepacked weight (torch backend only, built on the first forward)."""
        if self.backend != "torch":
            return 0
        return fbgemm_prepacked_bytes(self.weight.numel(), self.weight.shape[0])


@register_module_type
class StaticInt8Linear(_StaticInt8):
    """y = requant(x_q W_q^T + b) (then ReLU if `relu`): Jacob et al. 2018 integer-only inference
    with INT8 per-output-channel weights and calibrated UINT8 activations."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 relu: bool = False, backend: str = "torch",
                 quantized_output: bool = False, weight_max: int = PORTABLE_WEIGHT_MAX) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        self.in_features, self.out_features = in_features, out_features
        self.relu, self.backend, self.quantized_output = relu, backend, quantized_output
        self.weight_max = weight_max
        self._init_state(out_features, (out_features, in_features), bias)

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "relu": self.relu, "backend": self.backend,
                "quantized_output": self.quantized_output, "weight_max": self.weight_max}

    def _prepack(self, qweight: torch.Tensor) -> Any:
        return torch.ops.quantized.linear_prepack(qweight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if len(shape) != 2:
            x = x.reshape(-1, shape[-1])
        op = torch.ops.quantized.linear_relu if self.relu else torch.ops.quantized.linear
        y = self._run(x, op)
        return y if len(shape) == 2 else y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        relu = ", relu" if self.relu else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"static int8{relu}, backend={self.backend}")


@register_module_type
class StaticInt8Conv2d(_StaticInt8):
    """Static INT8 Conv2d (zero padding, numeric padding), same scheme as StaticInt8Linear."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: list[int],
                 stride: list[int], padding: list[int], dilation: list[int], groups: int = 1,
                 bias: bool = True, relu: bool = False, backend: str = "torch",
                 quantized_output: bool = False, weight_max: int = PORTABLE_WEIGHT_MAX) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = list(kernel_size), list(stride)
        self.padding, self.dilation = list(padding), list(dilation)
        self.relu, self.backend, self.quantized_output = relu, backend, quantized_output
        self.weight_max = weight_max
        self._init_state(out_channels, (out_channels, in_channels // groups, *kernel_size), bias)

    def spec(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation, "groups": self.groups, "bias": self.bias is not None,
                "relu": self.relu, "backend": self.backend,
                "quantized_output": self.quantized_output, "weight_max": self.weight_max}

    def conv_args(self) -> tuple[list[int], list[int], list[int], int]:
        return self.stride, self.padding, self.dilation, self.groups

    def _prepack(self, qweight: torch.Tensor) -> Any:
        return torch.ops.quantized.conv2d_prepack(qweight, self.bias, self.stride, self.padding,
                                                  self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = torch.ops.quantized.conv2d_relu if self.relu else torch.ops.quantized.conv2d
        return self._run(x, op)

    def extra_repr(self) -> str:
        relu = ", relu" if self.relu else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, static int8{relu}, backend={self.backend}")
