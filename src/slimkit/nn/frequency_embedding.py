"""Embedding tables stored at a width per row (frequency-aware mixed precision): a row->slot map
sends each id to a packed row of its group (8, 4 or 2 bits, fp16 scale and offset per row,
Guan et al. 2019) or to one shared default row; narrow tables (FM first-order weights) hold
packed codes with one scale and zero point per table. Lookups de-quantize only gathered rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.module_types import register_module_type
from .bags import MODES, bag_lookup
from .int8_linear import untraced
from .quantized_embedding import QuantizedEmbedding
from .rowwise import pack, unpack

WIDTHS = (8, 4, 2, 1)


def map_dtype(slots: int) -> torch.dtype:
    """The smallest integer dtype holding slot numbers 0..slots-1 (the map is as long as the
    vocabulary, so at 2 bits per row it would otherwise cost more than the rows)."""
    if slots <= 256:
        return torch.uint8
    if slots <= 1 << 15:
        return torch.int16
    return torch.int32


def check_layout(cls: str, mode: str, include_last_offset: bool, num: int, dim: int) -> None:
    if mode not in MODES:
        raise ValueError(f"{cls}: mode: expected one of {MODES}, got {mode!r}")
    if include_last_offset and mode == "none":
        raise ValueError(f"{cls}: include_last_offset needs a bag mode, got mode='none'")
    if num < 1 or dim < 1:
        raise ValueError(f"{cls}: expected num_embeddings, embedding_dim >= 1, got {num}, {dim}")


@register_module_type
class FrequencyEmbedding(nn.Module):
    """`groups` lists (bits, rows) in slot order; slot sum(rows) is the shared default row.
    Without `mapped` the table is one group holding every id in order: no map, no default row.
    `mode="none"` behaves as nn.Embedding, "sum"/"mean" as nn.EmbeddingBag."""

    slot: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    default: torch.Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int, groups: Sequence[Sequence[int]],
                 mode: str = "none", padding_idx: int | None = None,
                 include_last_offset: bool = False, mapped: bool = True) -> None:
        super().__init__()
        check_layout("FrequencyEmbedding", mode, include_last_offset, num_embeddings,
                     embedding_dim)
        pairs = [(int(b), int(n)) for b, n in groups]
        bits = [b for b, _ in pairs]
        if any(b not in WIDTHS for b in bits) or len(set(bits)) != len(bits) \
                or any(n < 0 for _, n in pairs):
            raise ValueError(f"FrequencyEmbedding: groups: expected distinct (bits in {WIDTHS}, "
                             f"rows >= 0) pairs, got {groups!r}")
        if not mapped and (len(pairs) != 1 or pairs[0][1] != num_embeddings):
            raise ValueError(f"FrequencyEmbedding: mapped=False needs one group of all "
                             f"{num_embeddings} rows, got {groups!r}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.groups = pairs
        self.mode = mode
        self.padding_idx = padding_idx
        self.include_last_offset = include_last_offset
        self.mapped = mapped
        kept = sum(n for _, n in pairs)
        self.default_slot = kept
        if mapped:
            self.register_buffer("slot", torch.zeros(num_embeddings, dtype=map_dtype(kept + 1)))
            self.register_buffer("default", torch.zeros(embedding_dim, dtype=torch.float16))
        for b, n in pairs:
            self.register_buffer(f"codes{b}",
                                 torch.zeros(n, -(-embedding_dim * b // 8), dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(kept, dtype=torch.float16))
        self.register_buffer("offset", torch.zeros(kept, dtype=torch.float16))
        self.__dict__["_kernel_table"] = None  # not a submodule: nothing of it is saved
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _keys: module.__dict__.update(_kernel_table=None))

    def kernel_table(self) -> QuantizedEmbedding | None:
        """A one-width table of 2, 4 or 8 bits without a map is exactly a QuantizedEmbedding's
        layout (packed codes, fp16 scale and offset per row): lookups then run fbgemm's fused
        row-wise kernels on these very tensors (no copy), 7-9x faster than gathering and
        unpacking in torch ops (bench/embeddings.py)."""
        if self.mapped or self.include_last_offset or self.groups[0][0] not in (2, 4, 8):
            return None
        table: QuantizedEmbedding | None = self.__dict__["_kernel_table"]
        if table is None:
            bits = self.groups[0][0]
            table = QuantizedEmbedding(self.num_embeddings, self.embedding_dim, bits, self.mode,
                                       self.padding_idx)
            table.packed = getattr(self, f"codes{bits}")
            table.scale, table.offset = self.scale, self.offset
            self.__dict__["_kernel_table"] = table
        return table

    def spec(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "groups": [list(g) for g in self.groups], "mode": self.mode,
                "padding_idx": self.padding_idx, "include_last_offset": self.include_last_offset,
                "mapped": self.mapped}

    def rows(self, index: torch.Tensor, *, unpacked: dict[int, torch.Tensor] | None = None
             ) -> torch.Tensor:
        """De-quantized rows for ids of any shape -> [*index.shape, dim]. Each group gathers at
        a clamped slot and a select keeps the group the slot belongs to: one static graph for
        ONNX, and still only the gathered rows are de-quantized."""
        if not self.mapped:
            b = self.groups[0][0]
            codes = unpacked[b][index] if unpacked is not None else \
                unpack(getattr(self, f"codes{b}")[index], b, self.embedding_dim)
            return (codes.float() * self.scale[index].float().unsqueeze(-1)
                    + self.offset[index].float().unsqueeze(-1))
        slot = self.slot[index].long()
        if unpacked is None:  # eager (the ONNX export passes the unpacked tables)
            return self._rows_by_group(slot).reshape(*index.shape, self.embedding_dim)
        out = self.default.float().expand(*index.shape, self.embedding_dim)
        at = slot.clamp(max=max(self.default_slot - 1, 0))  # scale of the default: any row
        start = 0
        for b, n in self.groups:
            if n == 0:
                continue
            local = (slot - start).clamp(0, n - 1)
            if unpacked is not None:
                codes = unpacked[b][local]
            else:
                codes = unpack(getattr(self, f"codes{b}")[local], b, self.embedding_dim)
            value = (codes.float() * self.scale[at].float().unsqueeze(-1)
                     + self.offset[at].float().unsqueeze(-1))
            inside = ((slot >= start) & (slot < start + n)).unsqueeze(-1)
            out = torch.where(inside, value, out)
            start += n
        return out

    def _rows_by_group(self, slot: torch.Tensor) -> torch.Tensor:
        """Eager lookups: each id's row from its own group only (the export graph above
        computes every group for every id and selects, 3-4x the work)."""
        flat = slot.reshape(-1)
        out = self.default.float().expand(flat.shape[0], self.embedding_dim).clone()
        start = 0
        for b, n in self.groups:
            if n:
                where = ((flat >= start) & (flat < start + n)).nonzero().squeeze(1)
                at = flat[where]
                codes = unpack(getattr(self, f"codes{b}")[at - start], b, self.embedding_dim)
                out[where] = (codes.float() * self.scale[at].float().unsqueeze(-1)
                              + self.offset[at].float().unsqueeze(-1))
            start += n
        return out

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        unpacked = None
        exporting = torch.onnx.is_in_onnx_export()
        kernel = None if exporting or offsets is not None or per_sample_weights is not None \
            or (self.mode != "none" and input.dim() != 2) else self.kernel_table()
        if kernel is not None:
            fused: torch.Tensor = kernel(input)
            return fused
        if exporting:
            # ONNX Runtime has no sub-byte gather: the ONNX file holds one byte per code (as
            # QuantizedEmbedding's export); the slimkit artifact keeps the packed form.
            with untraced():
                unpacked = {b: unpack(getattr(self, f"codes{b}"), b, self.embedding_dim)
                            .contiguous() for b, n in self.groups if n}
        return bag_lookup(lambda ids: self.rows(ids, unpacked=unpacked), input, offsets,
                          per_sample_weights, dim=self.embedding_dim, mode=self.mode,
                          padding_idx=self.padding_idx,
                          include_last_offset=self.include_last_offset)

    def dequantized_weight(self) -> torch.Tensor:
        return self.rows(torch.arange(self.num_embeddings))

    def bits_per_row(self) -> torch.Tensor:
        """Each id's code width (0 for the default row)."""
        if not self.mapped:
            return torch.full((self.num_embeddings,), self.groups[0][0], dtype=torch.long)
        widths = torch.zeros(self.default_slot + 1, dtype=torch.long)
        start = 0
        for b, n in self.groups:
            widths[start:start + n] = b
            start += n
        return widths[self.slot.long()]

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, groups={self.groups}, "
                f"mode={self.mode}")

    @classmethod
    def build(cls, weight: torch.Tensor, widths: torch.Tensor, default: torch.Tensor, *,
              mode: str = "none", padding_idx: int | None = None,
              include_last_offset: bool = False) -> FrequencyEmbedding:
        """From a float table and each row's width (one of WIDTHS, or 0 for the default row)."""
        from .rowwise import quantize_rows

        weight = weight.detach().float()
        groups = [(b, int((widths == b).sum())) for b in WIDTHS if bool((widths == b).any())]
        mapped = len(groups) != 1 or groups[0][1] != weight.shape[0]
        new = cls(weight.shape[0], weight.shape[1], groups, mode, padding_idx,
                  include_last_offset, mapped)
        slot = torch.full((weight.shape[0],), new.default_slot, dtype=torch.long)
        start = 0
        with torch.no_grad():
            for b, n in groups:
                ids = (widths == b).nonzero().flatten()
                codes, scale, offset = quantize_rows(weight[ids], b)
                getattr(new, f"codes{b}").copy_(pack(codes, b))
                new.scale[start:start + n] = scale
                new.offset[start:start + n] = offset
                slot[ids] = torch.arange(start, start + n)
                start += n
            if mapped:
                new.slot.copy_(slot.to(new.slot.dtype))
                new.default.copy_(default.half())
        return new


@register_module_type
class NarrowEmbedding(nn.Module):
    """A narrow table (an FM first-order weight per id) as `bits` codes with one fp32 scale and
    zero point for the whole table: per-row scales would outweigh 1-wide rows. The codes of all
    rows form one bit stream (a 1-wide table at 2 bits takes 4 ids a byte; per-row packing
    would round each id up to a byte). The zero point is an integer code, so zero (the padding
    row) stays exactly zero."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, mode: str = "none",
                 padding_idx: int | None = None, include_last_offset: bool = False) -> None:
        super().__init__()
        check_layout("NarrowEmbedding", mode, include_last_offset, num_embeddings, embedding_dim)
        if bits not in WIDTHS:
            raise ValueError(f"NarrowEmbedding: bits: expected one of {WIDTHS}, got {bits!r}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.bits = bits
        self.mode = mode
        self.padding_idx = padding_idx
        self.include_last_offset = include_last_offset
        self.register_buffer("codes", torch.zeros(-(-num_embeddings * embedding_dim * bits // 8),
                                                  dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero", torch.zeros(1))

    def spec(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "bits": self.bits, "mode": self.mode, "padding_idx": self.padding_idx,
                "include_last_offset": self.include_last_offset}

    @staticmethod
    def quantize(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, float, float]:
        """(codes uint8, scale, zero point) of a whole table, zero exactly representable."""
        w = weight.detach().float()
        levels = (1 << bits) - 1
        lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
        scale = (hi - lo) / levels if hi > lo else 1.0
        zero = float(min(max(round(-lo / scale), 0), levels))
        codes = torch.round(w / scale + zero).clamp(0, levels).to(torch.uint8)
        return codes, scale, zero

    @classmethod
    def build(cls, weight: torch.Tensor, bits: int, *, mode: str = "none",
              padding_idx: int | None = None,
              include_last_offset: bool = False) -> NarrowEmbedding:
        new = cls(weight.shape[0], weight.shape[1], bits, mode, padding_idx, include_last_offset)
        codes, scale, zero = cls.quantize(weight, bits)
        with torch.no_grad():
            new.codes.copy_(pack(codes.reshape(1, -1), bits).flatten())
            new.scale.fill_(scale)
            new.zero.fill_(zero)
        return new

    def rows(self, index: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        if table is not None:
            codes = table[index]
        else:
            # bits divides 8, so no code straddles two bytes.
            at = (index.unsqueeze(-1) * self.embedding_dim
                  + torch.arange(self.embedding_dim, device=index.device)) * self.bits
            byte = self.codes[at >> 3].int()
            codes = (byte >> (at & 7).int()) & ((1 << self.bits) - 1)
        return (codes.float() - self.zero) * self.scale

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        table = None
        if torch.onnx.is_in_onnx_export():
            with untraced():
                table = unpack(self.codes.unsqueeze(0), self.bits, self.num_embeddings
                               * self.embedding_dim).reshape(self.num_embeddings, -1)
        return bag_lookup(lambda ids: self.rows(ids, table), input, offsets, per_sample_weights,
                          dim=self.embedding_dim, mode=self.mode, padding_idx=self.padding_idx,
                          include_last_offset=self.include_last_offset)

    def dequantized_weight(self) -> torch.Tensor:
        return self.rows(torch.arange(self.num_embeddings))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int{self.bits}, mode={self.mode}"
