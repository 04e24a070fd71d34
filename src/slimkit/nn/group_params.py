"""The group-parameter buffers of a packed layer (WeightOnlyLinear, WeightOnlyEmbedding,
TiedLowBitHead): plain `scale` / `offset` [rows, groups] (param_bits 0, the default and the
original layout), or with param_bits 6 / 8 their double-quantized form (double_quant.py):
`param_codes` [rows, bytes], each row's scale codes then offset codes packed as one run (18
groups of 6-bit scale + offset: 36 codes in 27 bytes, where two runs would pad to 30), and
per-row `scale_step`, `offset_min`, `offset_step`. Every name is registered in both layouts
(None where unused, so absent from the state dict): a tied head can take the embedding's buffers
by name whichever layout it has.
"""

from __future__ import annotations

import torch
from torch import nn

from .blockwise import block_rows
from .double_quant import PARAM_BITS, DoubleQuant, decode_offset, decode_scale
from .groupwise import pack_codes, packed_width, unpack_codes
from .int8_linear import untraced

PARAM_KEYS = ("scale", "offset", "param_codes", "scale_step", "offset_min", "offset_step")
Index = slice | torch.Tensor


class GroupParamBuffers(nn.Module):
    """Registers, fills and decodes the group parameters; `group_params(rows)` is the one way to
    read them (de-quantization, ONNX export). Also assembles the fp32 weight from the layer's
    `dequantized_rows`, a block of rows at a time, for code that reads `.weight`."""

    param_bits: int
    param_groups: int
    qweight: torch.Tensor

    def dense_shape(self) -> tuple[int, int]:
        """[rows, columns] of the float weight the layer stands for."""
        raise NotImplementedError

    def dequantized_rows(self, rows: slice) -> torch.Tensor:
        raise NotImplementedError

    def dequantized_weight(self) -> torch.Tensor:
        """The whole fp32 weight (a transient copy; the layer keeps only its packed form)."""
        rows, cols = self.dense_shape()
        out = torch.empty(rows, cols, device=self.qweight.device)
        step = block_rows(cols)
        for start in range(0, rows, step):
            block = slice(start, start + step)
            out[block] = self.dequantized_rows(block)
        return out

    @property
    def weight(self) -> torch.Tensor:
        """The de-quantized fp32 weight, built on each access (not cached, not trainable)."""
        with torch.no_grad(), untraced():
            return self.dequantized_weight()

    def dense_numel(self) -> int:
        rows, cols = self.dense_shape()
        return rows * cols

    def _register_group_params(self, rows: int, groups: int, symmetric: bool,
                               dtype: torch.dtype, param_bits: int) -> None:
        if param_bits not in (0, *PARAM_BITS):
            raise ValueError(f"{type(self).__name__}: param_bits={param_bits!r} not in "
                             f"{(0, *PARAM_BITS)}")
        self.param_bits = param_bits
        self.param_groups = groups
        plain = param_bits == 0
        asym = not symmetric
        width = packed_width(groups * (1 if symmetric else 2), param_bits) if param_bits else 0

        def buf(key: str, wanted: bool, shape: tuple[int, ...], kind: torch.dtype,
                fill: float) -> None:
            self.register_buffer(key, torch.full(shape, fill, dtype=kind) if wanted else None)

        buf("scale", plain, (rows, groups), dtype, 1.0)
        buf("offset", plain and asym, (rows, groups), dtype, 0.0)
        buf("param_codes", not plain, (rows, width), torch.uint8, 0)
        buf("scale_step", not plain, (rows,), dtype, 1.0)
        buf("offset_min", not plain and asym, (rows,), dtype, 0.0)
        buf("offset_step", not plain and asym, (rows,), dtype, 1.0)

    def _set_group_params(self, scale: torch.Tensor | DoubleQuant,
                          offset: torch.Tensor | None = None) -> None:
        """Copy in plain parameters (param_bits 0) or a DoubleQuant (param_bits > 0)."""
        b = self._buffers
        pairs: list[tuple[str, torch.Tensor | None]]
        if isinstance(scale, DoubleQuant):
            if scale.bits != self.param_bits:
                raise ValueError(f"{type(self).__name__}: {scale.bits}-bit parameters given to a "
                                 f"layer with param_bits={self.param_bits}")
            codes = scale.scale_codes if scale.offset_codes is None else \
                torch.cat([scale.scale_codes, scale.offset_codes], dim=1)
            pairs = [("param_codes", pack_codes(codes, scale.bits)),
                     ("scale_step", scale.scale_step), ("offset_min", scale.offset_min),
                     ("offset_step", scale.offset_step)]
        else:
            if self.param_bits:
                raise ValueError(f"{type(self).__name__}: param_bits={self.param_bits} needs "
                                 "double-quantized parameters (a DoubleQuant)")
            pairs = [("scale", scale), ("offset", offset)]
        with torch.no_grad():
            for key, value in pairs:
                target = b[key]
                if value is not None and target is not None:
                    target.copy_(value)

    def group_params(self, rows: Index = slice(None)) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scale, offset or None) [len(rows), groups] of rows `rows` (a slice or an index
        tensor): the stored tensors as they are (param_bits 0) or decoded to fp32."""
        b = self._buffers
        if not self.param_bits:
            scale, offset = b["scale"], b["offset"]
            assert scale is not None
            return scale[rows], None if offset is None else offset[rows]
        packed, step = b["param_codes"], b["scale_step"]
        assert packed is not None and step is not None
        low, o_step = b["offset_min"], b["offset_step"]
        groups = self.param_groups
        asym = low is not None and o_step is not None
        codes = unpack_codes(packed[rows], self.param_bits, groups * (2 if asym else 1))
        scale = decode_scale(codes[:, :groups], step[rows])
        if low is None or o_step is None:
            return scale, None
        return scale, decode_offset(codes[:, groups:], low[rows], o_step[rows])
