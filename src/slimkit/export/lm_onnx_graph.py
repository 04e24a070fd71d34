"""A small ONNX graph builder for the causal-LM exporter, and how it writes a linear layer.

An nn.Linear becomes a float MatMul; a WeightOnlyLinear becomes ONNX Runtime's contrib op
`com.microsoft::MatMulNBits` on its packed codes as they are stored (4 and 8 bits, block size =
the layer's group size), or a de-quantized float MatMul when the kernel cannot take the layer.
2- and 3-bit codes, which ONNX Runtime's kernels do not take, are written as 4-bit codes of the
same values (`kernel_codes`: exact, the weights de-quantize identically), so a layer of a mixed
2/3/4-bit allocation runs on the 4-bit kernel at 4-bit memory instead of de-quantized in fp32.

Asymmetric layers (w = q * scale + offset, a float offset per group) are written as
MatMulNBits without zero points (the kernel's implicit 2^(bits-1)) plus a correction
x_groupsums @ (offset + 2^(bits-1) * scale)^T. Why not float
zero points (zero = -offset / scale), which MatMulNBits accepts: ONNX Runtime 1.31's CPU kernel
runs them on a path that de-quantizes the whole weight on every call (4-bit, 576x1536, one
token: 494 us against 9-13 us with integer zero points; dense fp32 27-47 us) and refuses them
for 8 bits. The correction costs one ReduceSum and a MatMul with a [groups, out] matrix (1/group
of the weight), shared by the layers that read the same activation.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from ..nn.groupwise import effective_group, pack_codes

log = logging.getLogger(__name__)
MS_DOMAIN = "com.microsoft"
NBITS = (4, 8)
WIDENED = (2, 3)  # exported as 4-bit codes
MIN_BLOCK = 16


def kernel_bits(bits: int) -> int:
    """The code width a layer of `bits` is exported with."""
    return 4 if bits in WIDENED else bits


def kernel_codes(m: Any) -> np.ndarray:
    """The packed codes [rows, packed bytes] of a packed layer or table at `kernel_bits`: as
    stored for 4 and 8 bits; 2/3-bit codes re-packed as 4-bit, shifted when symmetric so that
    the kernel's implicit zero point 8 stands for the layer's 2^(bits-1)."""
    if m.bits not in WIDENED:
        return m.qweight.detach().cpu().numpy()
    codes = m.codes().to(torch.int32)
    if m.symmetric:
        codes = codes + (8 - (1 << (m.bits - 1)))
    return pack_codes(codes.to(torch.uint8), 4).numpy()


def nbits_refusal(bits: int, group_size: int, in_features: int) -> str | None:
    """Why MatMulNBits cannot run a layer stored this way, or None when it can."""
    block = effective_group(in_features, group_size)
    if bits not in NBITS + WIDENED:
        return f"{bits}-bit codes (exported MatMulNBits widths: {NBITS + WIDENED})"
    if block < MIN_BLOCK or block & (block - 1):
        return f"group size {block} is not a power of two >= {MIN_BLOCK}"
    if in_features % block:
        return f"group size {block} does not divide in_features {in_features}"
    return None


class GraphBuilder:
    """Nodes and initializers of one ONNX graph, with unique names and cached constants."""

    def __init__(self, accuracy_level: int) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.accuracy_level = accuracy_level
        self.nbits_nodes = 0
        self.fallbacks: list[str] = []
        self._names: set[str] = set()
        self._consts: dict[tuple[str, bytes], str] = {}
        self._tensors: dict[int, str] = {}
        self._derived: dict[tuple[Any, ...], str] = {}

    def fresh(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def op(self, op_type: str, inputs: list[str], name: str, *, outputs: int = 1,
           domain: str = "", **attrs: Any) -> Any:
        """Add a node; returns its output name (or the list of them when `outputs` > 1)."""
        from onnx import helper

        names = [self.fresh(f"{name}_{k}" if outputs > 1 else name) for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.fresh(f"n_{name}"),
                                           domain=domain or None, **attrs))
        return names if outputs > 1 else names[0]

    def initializer(self, array: np.ndarray, name: str) -> str:
        from onnx import numpy_helper

        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """A small constant, written once however often it is used."""
        array = np.asarray(value, dtype=dtype)
        key = (str(array.dtype), array.tobytes() + str(array.shape).encode())
        if key not in self._consts:
            self._consts[key] = self.initializer(array, "const")
        return self._consts[key]

    def tensor(self, t: torch.Tensor, name: str) -> str:
        """A module tensor as an fp32 initializer, written once per storage: tied weights (a
        head sharing the embedding's table) stay one initializer in the file and in memory."""
        key = int(t.untyped_storage().data_ptr() + t.storage_offset())
        if key not in self._tensors:
            self._tensors[key] = self.initializer(t.detach().float().cpu().numpy(), name)
        return self._tensors[key]

    def derived(self, key: tuple[Any, ...], make: Any) -> str:
        """A tensor computed once per key (an activation divided by the same AWQ scale, its
        group sums) and reused by every layer that asks for it."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]


def emit_linear(g: GraphBuilder, x: str, module: Any, name: str) -> str:
    """y = module(x) for x [..., in_features]: nn.Linear, or a packed layer (WeightOnlyLinear,
    TiedLowBitHead: `qweight`, `scale`, `offset`, `bits`, `group_size`)."""
    if isinstance(getattr(module, "qweight", None), torch.Tensor) and hasattr(module, "bits"):
        why = nbits_refusal(module.bits, module.group_size, module.in_features)
        if why is None:
            return matmul_nbits(g, x, module, name)
        g.fallbacks.append(f"{name}: {why}")
        log.info("%s: de-quantized float MatMul (%s)", name, why)
        with torch.no_grad():
            weight = module.dequantized_weight()
    elif isinstance(module, nn.Linear):
        weight = module.weight.detach()
    else:
        raise TypeError(f"{name}: {type(module).__name__} is not a Linear layer slimkit exports")
    y = g.op("MatMul", [x, g.initializer(weight.float().t().numpy(), f"{name}.weight_t")], name)
    return _add_bias(g, y, module.bias, name)


def _add_bias(g: GraphBuilder, y: str, bias: torch.Tensor | None, name: str) -> str:
    if bias is None:
        return y
    return g.op("Add", [y, g.tensor(bias, f"{name}.bias")], f"{name}_bias")


def matmul_nbits(g: GraphBuilder, x: str, m: Any, name: str, *, codes: str | None = None
                 ) -> str:
    """MatMulNBits on the layer's packed codes (or on `codes`, an initializer already holding
    them as [out, groups, group bytes]: a head tied to a quantized embedding)."""
    k, n, bits = m.in_features, m.out_features, kernel_bits(m.bits)
    block = effective_group(k, m.group_size)
    blocks = k // block
    input_scale = getattr(m, "input_scale", None)
    if input_scale is not None:
        # AWQ: the effective weight is W / s per input column, i.e. the layer sees x / s.
        s = input_scale.detach().float().numpy()
        x = g.derived(("awq", x, hashlib.sha1(s.tobytes()).hexdigest()),
                      lambda: g.op("Div", [x, g.initializer(s, f"{name}.input_scale")],
                                   f"{name}_awq"))
    if codes is None:
        packed = kernel_codes(m).reshape(n, blocks, block * bits // 8)
        codes = g.initializer(packed, f"{name}.qweight")
    # group_params(): the stored scale / offset, or double-quantized ones decoded (the file then
    # holds them as floats: MatMulNBits has no double-quantized form).
    scale, offset = layer_group_params(m)
    inputs = [x, codes, g.initializer(scale.numpy().reshape(-1), f"{name}.scale")]
    y = g.op("MatMulNBits", inputs, name, domain=MS_DOMAIN, K=k, N=n, bits=bits,
             block_size=block, accuracy_level=g.accuracy_level)
    g.nbits_nodes += 1
    if offset is not None:
        # No zero point: the kernel subtracts its implicit 2^(bits-1), q * s + o =
        # (q - 2^(bits-1)) * s + (o + 2^(bits-1) * s), so that multiple of the scale joins the
        # float offset in the correction below.
        offset = offset + (1 << (bits - 1)) * scale
        sums = g.derived(("groupsum", x, block), lambda: _group_sums(g, x, blocks, block, name))
        offset_t = offset.t().contiguous().numpy()
        y = g.op("Add", [y, g.op("MatMul", [sums, g.initializer(offset_t, f"{name}.offset_t")],
                                 f"{name}_offset")], f"{name}_asym")
    return _add_bias(g, y, m.bias, name)


def layer_group_params(m: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 (scale, offset or None) [rows, groups] of a packed layer, as it de-quantizes."""
    with torch.no_grad():
        scale, offset = m.group_params()
    return scale.detach().float().cpu(), None if offset is None else offset.detach().float().cpu()


def _group_sums(g: GraphBuilder, x: str, blocks: int, block: int, name: str) -> str:
    """[..., in] -> [..., groups]: the sum of x over each group of input columns."""
    grouped = g.op("Reshape", [x, g.const([0, 0, blocks, block])], f"{name}_groups")
    return g.op("ReduceSum", [grouped, g.const([-1])], f"{name}_groupsum", keepdims=0)
