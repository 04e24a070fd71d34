"""WeightOnlyEmbedding: an nn.Embedding stored as packed 8/4/3/2-bit codes with per-group scales
(and offsets) along embedding_dim, the same buffers and packing as WeightOnlyLinear; a lookup
de-quantizes only the rows it gathers, so the resident table stays packed.

TiedLowBitHead: a language model's output projection y = x W^T tied to its input embedding. It
holds the embedding's own buffer objects (`qweight`, `scale`, `offset`), so the table is resident
once; its forward de-quantizes a block of vocabulary rows at a time (blockwise.py), so no dense
[vocab, dim] fp32 copy is ever held. Its state dict lists the tensors under its own names too:
the artifact stores a tensor shared by several names once and `load` makes the names share one
tensor again (export/artifact.py), so the pair is rebuilt from `spec()` like any swapped layer
and re-tied by the loader.

Buffers shared by two modules would be copied apart by `.to()` / `.half()` (nn.Module._apply
converts each module's buffers on their own); both classes here give a buffer another module
already converted in the same call the same new tensor, so the tie survives a device or dtype
change of the model (or of any module holding both). Converting one side alone does not reach
the other: that side then holds its own copy (re-tie with `TiedLowBitHead.tie_to`).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from ..core.module_types import register_module_type
from .blockwise import block_rows, blockwise_linear
from .double_quant import DoubleQuant, quantize_groups_dq
from .group_params import PARAM_KEYS, GroupParamBuffers
from .groupwise import (
    BITS,
    dequantize_groups,
    num_groups,
    pack_codes,
    packed_width,
    quantize_groups,
    unpack_codes,
)
from .lowbit_linear import SCALE_DTYPES
from .runtime_memory import PackedMemory

# Every buffer name of the table in either parameter layout (group_params.py), unused ones None.
TABLE = ("qweight", *PARAM_KEYS)

# fn of one Module._apply call (the same object is passed down to every child) -> {id(old):
# (old, its version, new)}: the first module converting a shared buffer records the result, the
# others reuse it. Weak throughout: an entry goes with the call's conversion function, and holds
# neither tensor; a buffer changed in place since (its version moved on) is converted afresh.
_Entry = tuple["weakref.ref[torch.Tensor]", int, "weakref.ref[torch.Tensor]"]
_CONVERTED: weakref.WeakKeyDictionary[Any, dict[int, _Entry]] = weakref.WeakKeyDictionary()


def _tie_keeping_apply(module: nn.Module, fn: Any, recurse: bool) -> None:
    before = {k: v for k, v in module._buffers.items() if v is not None}
    nn.Module._apply(module, fn, recurse)  # type: ignore[no-untyped-call]
    try:
        memo = _CONVERTED.setdefault(fn, {})
    except TypeError:  # not weak-referenceable: no sharing across modules for this call
        return
    for key, old in before.items():
        hit = memo.get(id(old))
        new = hit[2]() if hit is not None and hit[0]() is old and hit[1] == old._version \
            else None
        if new is not None:
            module._buffers[key] = new
        else:
            converted = module._buffers[key]
            if converted is not None:
                memo[id(old)] = (weakref.ref(old), old._version, weakref.ref(converted))


class _Table(GroupParamBuffers, PackedMemory):
    """The packed [num_embeddings, embedding_dim] table both classes hold: codes along
    embedding_dim in groups of `group_size` (as WeightOnlyLinear along in_features)."""

    qweight: torch.Tensor
    scale: torch.Tensor | None  # None with param_bits > 0: read through group_params()
    offset: torch.Tensor | None
    cache = False  # always packed: a lookup or a block of rows is de-quantized per call

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, group_size: int,
                 symmetric: bool, scale_dtype: str, param_bits: int = 0) -> None:
        super().__init__()
        if bits not in BITS or scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"{type(self).__name__}: bits={bits!r} scale_dtype={scale_dtype!r} "
                             f"unsupported (bits in {BITS}, scale_dtype in {list(SCALE_DTYPES)})")
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError(f"{type(self).__name__}: num_embeddings={num_embeddings!r} and "
                             f"embedding_dim={embedding_dim!r} must be positive")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.bits = bits
        self.group_size = group_size
        self.symmetric = symmetric
        self.scale_dtype = scale_dtype
        groups = num_groups(embedding_dim, group_size)
        dtype = SCALE_DTYPES[scale_dtype]
        self.register_buffer("qweight", torch.zeros(
            num_embeddings, packed_width(embedding_dim, bits), dtype=torch.uint8))
        self._register_group_params(num_embeddings, groups, symmetric, dtype, param_bits)

    def table_spec(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric,
                "scale_dtype": self.scale_dtype,
                # Only when set: specs (and artifact manifests) of plain tables stay as they were.
                **({"param_bits": self.param_bits} if self.param_bits else {})}

    def set_codes(self, codes: torch.Tensor, scale: torch.Tensor | DoubleQuant,
                  offset: torch.Tensor | None = None) -> None:
        """Fill the table from codes [num_embeddings, embedding_dim] and group parameters
        (plain tensors, or a DoubleQuant holding scales and offsets when param_bits > 0)."""
        has_offset = scale.offset_codes is not None if isinstance(scale, DoubleQuant) \
            else offset is not None
        if has_offset == self.symmetric:
            raise ValueError(f"{type(self).__name__}: offsets given for symmetric={self.symmetric}")
        self._set_group_params(scale, offset)
        with torch.no_grad():
            self.qweight.copy_(pack_codes(codes, self.bits))

    def codes(self) -> torch.Tensor:
        return unpack_codes(self.qweight, self.bits, self.embedding_dim)

    def dequantized_rows(self, rows: slice) -> torch.Tensor:
        """Rows `rows` of the fp32 table; a row gives the same floats whether it is de-quantized
        here, in a lookup or in the whole table (the same per-weight ops)."""
        codes = unpack_codes(self.qweight[rows], self.bits, self.embedding_dim)
        scale, offset = self.group_params(rows)
        return dequantize_groups(codes, scale, offset, self.bits, self.group_size)

    def dense_shape(self) -> tuple[int, int]:
        return self.num_embeddings, self.embedding_dim

    def _apply(self, fn: Any, recurse: bool = True) -> _Table:
        _tie_keeping_apply(self, fn, recurse)
        return self

    def _table_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        dq = f", {self.param_bits}-bit params" if self.param_bits else ""
        return (f"{self.num_embeddings}, {self.embedding_dim}, int{self.bits}, "
                f"group={self.group_size}, {kind}{dq}, {self.memory_mode}")


@register_module_type
class WeightOnlyEmbedding(_Table):
    """nn.Embedding (plain lookup) over a group-wise quantized table; returns fp32 rows."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int = 4,
                 group_size: int = 128, symmetric: bool = False,
                 padding_idx: int | None = None, scale_dtype: str = "float16",
                 param_bits: int = 0) -> None:
        super().__init__(num_embeddings, embedding_dim, bits, group_size, symmetric, scale_dtype,
                         param_bits)
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"WeightOnlyEmbedding: padding_idx={padding_idx} out of range "
                                 f"for {num_embeddings} embeddings")
            padding_idx = padding_idx % num_embeddings  # as nn.Embedding stores it
        self.padding_idx = padding_idx

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, *, bits: int, group_size: int,
                       symmetric: bool = False, scale_dtype: str = "float16",
                       param_bits: int = 0) -> WeightOnlyEmbedding:
        """Round-to-nearest quantization of `embedding`'s table (against double-quantized group
        parameters when `param_bits` > 0)."""
        if embedding.max_norm is not None:
            raise ValueError("WeightOnlyEmbedding: an Embedding with max_norm renormalizes its "
                             "table on lookup; a packed table cannot")
        new = cls(embedding.num_embeddings, embedding.embedding_dim, bits, group_size, symmetric,
                  embedding.padding_idx, scale_dtype, param_bits)
        new.to(embedding.weight.device)
        dtype = SCALE_DTYPES[scale_dtype]
        if param_bits:
            codes, dq = quantize_groups_dq(embedding.weight, bits, group_size, symmetric,
                                           param_bits, dtype)
            new.set_codes(codes, dq)
        else:
            codes, scale, offset = quantize_groups(embedding.weight, bits, group_size, symmetric,
                                                   dtype)
            new.set_codes(codes, scale, offset)
        return new

    def spec(self) -> dict[str, Any]:
        return {**self.table_spec(), "padding_idx": self.padding_idx}

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        flat = index.reshape(-1)
        codes = unpack_codes(self.qweight[flat], self.bits, self.embedding_dim)
        scale, offset = self.group_params(flat)
        rows = dequantize_groups(codes, scale, offset, self.bits, self.group_size)
        return rows.reshape(*index.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return self._table_repr() + pad


@register_module_type
class TiedLowBitHead(_Table):
    """y = x W^T (no bias) with W the table of a WeightOnlyEmbedding, whose buffer objects it
    holds (`tie_to`); `in_features` / `out_features` as nn.Linear names them."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int = 4,
                 group_size: int = 128, symmetric: bool = False,
                 scale_dtype: str = "float16", param_bits: int = 0) -> None:
        super().__init__(num_embeddings, embedding_dim, bits, group_size, symmetric, scale_dtype,
                         param_bits)
        self.in_features = embedding_dim
        self.out_features = num_embeddings
        self.bias = None

    @classmethod
    def tied_to(cls, embedding: WeightOnlyEmbedding) -> TiedLowBitHead:
        """A head over `embedding`'s table (its buffer objects, not copies)."""
        head = cls(**embedding.table_spec())
        head.tie_to(embedding)
        return head

    def tie_to(self, embedding: WeightOnlyEmbedding) -> None:
        """Hold `embedding`'s buffer objects as this head's own."""
        if embedding.table_spec() != self.table_spec():
            raise ValueError(f"TiedLowBitHead: table {self.table_spec()} does not match the "
                             f"embedding's {embedding.table_spec()}")
        for key in TABLE:
            self._buffers[key] = embedding._buffers[key]

    def is_tied_to(self, embedding: WeightOnlyEmbedding) -> bool:
        return all(self._buffers[k] is embedding._buffers[k] for k in TABLE)

    def spec(self) -> dict[str, Any]:
        return self.table_spec()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blockwise_linear(x, self.num_embeddings, self._constant_rows, None,
                                block_rows(self.embedding_dim))

    def _constant_rows(self, rows: slice) -> torch.Tensor:
        with torch.no_grad():
            return self.dequantized_rows(rows)

    def extra_repr(self) -> str:
        return (f"in_features={self.embedding_dim}, out_features={self.num_embeddings}, "
                + self._table_repr() + ", tied")
