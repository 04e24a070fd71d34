"""Weight sharing by 1-D k-means (Deep Compression, Han et al. 2016, section 3) and the layer that
stores it: cluster indices packed at `bits` bits each plus a float codebook, with index 0 reserved
for pruned zeros.

Forward gathers codebook[indices] into a dense weight. While the codebook trains, the gather is
differentiable, so each centroid's gradient is the sum of the gradients of the weights that share
it (the paper's grouped update). Afterwards the dense weight is rebuilt on every call (resident:
packed indices + codebook; linear layers a block of output rows at a time, see blockwise.py) or,
with `cache=True`, kept once built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..core.module_types import register_module_type
from .bitpack import pack_bits_rows, packed_row_bytes, unpack_bits_rows
from .blockwise import block_rows, blockwise_linear
from .int8_linear import untraced
from .runtime_memory import PackedMemory


def linear_init(values: torch.Tensor, k: int) -> torch.Tensor:
    """k centroids evenly spaced over [min, max]: the paper's best initialisation, since it keeps
    centroids at the rare large weights that matter most."""
    return torch.linspace(float(values.min()), float(values.max()), k, dtype=torch.float64)


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (centroids sorted ascending; ties go to the lower one)."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return torch.searchsorted(mids.to(values.dtype).contiguous(), values.contiguous())


def kmeans_1d(values: torch.Tensor, k: int,
              iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means in 1-D from linear initialisation: (centroids [k] float64, assignment).

    In 1-D each cluster is an interval of the sorted values, so an iteration needs only the k-1
    boundaries (binary search) and prefix sums: O(k log n) instead of O(n k). An empty cluster
    keeps its centroid, and the centroids stay sorted.
    """
    x = values.detach().double().reshape(-1)
    xs = torch.sort(x).values
    prefix = torch.cat([xs.new_zeros(1), torch.cumsum(xs, 0)])
    centroids = linear_init(x, k)
    bounds = None
    for _ in range(iters):
        # Same rule as `assign`: a value equal to a midpoint joins the lower cluster.
        inner = torch.searchsorted(xs, (centroids[1:] + centroids[:-1]) / 2, right=True)
        new = torch.cat([inner.new_zeros(1), inner, inner.new_full((1,), len(xs))])
        if bounds is not None and torch.equal(new, bounds):
            break
        bounds = new
        counts = bounds[1:] - bounds[:-1]
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids, assign(x, centroids)


def cluster_weight(weight: torch.Tensor, bits: int,
                   iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices uint8 shaped like `weight`, codebook float32 [2**bits - 1]).

    Zeros (pruned weights) are not clustered: they keep index 0, which always decodes to 0.
    """
    k = (1 << bits) - 1
    w = weight.detach().float()
    nonzero = w != 0
    indices = torch.zeros(w.shape, dtype=torch.uint8)
    codebook = torch.zeros(k, dtype=torch.float32)
    if bool(nonzero.any()):
        centroids, labels = kmeans_1d(w[nonzero], k, iters)
        codebook = centroids.float()
        indices[nonzero] = (labels + 1).to(torch.uint8)
    return indices, codebook


def centroid_gradient(weight_grad: torch.Tensor, indices: torch.Tensor, k: int) -> torch.Tensor:
    """Sum of the weight gradients per cluster (index 0, the zeros, gets none)."""
    idx = indices.reshape(-1).long()
    sums = torch.zeros(k + 1, dtype=weight_grad.dtype).index_add_(0, idx, weight_grad.reshape(-1))
    return sums[1:]


@register_module_type
class ClusteredLayer(PackedMemory, nn.Module):
    """A Linear or Conv2d whose weight is codebook[indices] (index 0 = exact zero).

    `indices` holds each output row's codes as one packed bit stream ([out, ceil(n * bits / 8)]
    bytes), while the state dict carries them unpacked, a byte an index shaped like the weight:
    the artifact's Huffman coder works per byte, and on packed 3/5/6/7-bit streams (codes
    straddling bytes) it measured 7-34% more bits a weight. Loading packs them again.
    `weight` (and `in_features`/`out_features` or `in_channels`/`out_channels`/`kernel_size`)
    are read-only views for code written against torch's layers; `weight` is gathered on each
    access.
    """

    indices: torch.Tensor
    codebook: torch.Tensor
    bias: nn.Parameter | None

    def __init__(self, kind: str, weight_shape: list[int], bits: int, bias: bool = True,
                 stride: list[int] | None = None, padding: list[int] | str | None = None,
                 dilation: list[int] | None = None, groups: int = 1,
                 cache: bool = False) -> None:
        super().__init__()
        if kind not in ("linear", "conv2d") or not 1 <= bits <= 8:
            raise ValueError(f"ClusteredLayer: kind={kind!r} bits={bits!r} unsupported")
        self.kind, self.bits, self.groups = kind, bits, groups
        self.cache = bool(cache)
        self.weight_shape = [int(d) for d in weight_shape]
        self.stride = tuple(stride or (1, 1))
        self.padding = padding if isinstance(padding, str) else tuple(padding or (0, 0))
        self.dilation = tuple(dilation or (1, 1))
        rows, row_len = self._rows()
        self.register_buffer("indices", torch.zeros(rows, packed_row_bytes(row_len, bits),
                                                    dtype=torch.uint8))
        self.register_buffer("codebook", torch.zeros((1 << bits) - 1))
        self.bias = nn.Parameter(torch.zeros(self.weight_shape[0])) if bias else None
        self._weight: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _keys: module._invalidate())

    def _rows(self) -> tuple[int, int]:
        rows = self.weight_shape[0]
        numel = 1
        for d in self.weight_shape:
            numel *= d
        return rows, numel // max(rows, 1)

    @classmethod
    def from_module(cls, module: nn.Linear | nn.Conv2d, bits: int,
                    iters: int = 100, cache: bool = False) -> ClusteredLayer:
        kw: dict[str, Any] = {}
        if isinstance(module, nn.Conv2d):
            kw = {"stride": list(module.stride), "dilation": list(module.dilation),
                  "groups": module.groups, "padding": module.padding
                  if isinstance(module.padding, str) else list(module.padding)}
        kind = "conv2d" if isinstance(module, nn.Conv2d) else "linear"
        new = cls(kind, list(module.weight.shape), bits, module.bias is not None, cache=cache,
                  **kw)
        indices, codebook = cluster_weight(module.weight, bits, iters)
        new.set_codes(indices)
        new.codebook.copy_(codebook)
        if module.bias is not None and new.bias is not None:
            new.bias.data.copy_(module.bias.detach())
        return new

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": self.kind, "weight_shape": self.weight_shape,
                                "bits": self.bits, "bias": self.bias is not None,
                                "cache": self.cache}
        if self.kind == "conv2d":
            spec.update(stride=list(self.stride), dilation=list(self.dilation),
                        groups=self.groups, padding=self.padding
                        if isinstance(self.padding, str) else list(self.padding))
        return spec

    def codes(self) -> torch.Tensor:
        """Unpacked uint8 cluster indices shaped like the weight (0 = pruned zero)."""
        rows, row_len = self._rows()
        return unpack_bits_rows(self.indices, self.bits, row_len).reshape(self.weight_shape)

    def set_codes(self, codes: torch.Tensor) -> None:
        """Pack uint8 indices shaped like the weight into the `indices` buffer."""
        rows, row_len = self._rows()
        with torch.no_grad():
            self.indices.copy_(pack_bits_rows(codes.reshape(rows, row_len), self.bits))
        self._invalidate()

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "indices"] = self.codes()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # load_state_dict works on its own copy of the caller's dict: safe to replace in.
        codes = state_dict.get(prefix + "indices")
        if isinstance(codes, torch.Tensor) and list(codes.shape) == self.weight_shape:
            rows, row_len = self._rows()
            state_dict[prefix + "indices"] = pack_bits_rows(codes.reshape(rows, row_len),
                                                            self.bits)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def set_trainable(self, flag: bool) -> None:
        """Make the codebook a Parameter (centroid fine-tuning) or a plain buffer again."""
        value = self.codebook.detach().clone()
        if flag and "codebook" in self._buffers:
            del self._buffers["codebook"]
            self.codebook = nn.Parameter(value)
        elif not flag and "codebook" in self._parameters:
            del self._parameters["codebook"]
            self.register_buffer("codebook", value)
        self._invalidate()

    def _invalidate(self) -> None:
        self._weight = None

    def _apply(self, fn: Any, recurse: bool = True) -> ClusteredLayer:
        self._invalidate()  # .to(device) / .half() must not leave a stale cached weight behind
        return super()._apply(fn, recurse)  # type: ignore[no-any-return,no-untyped-call]

    def dense_weight(self) -> torch.Tensor:
        return self.dense_rows(slice(None)).view(self.weight_shape)

    def dense_rows(self, rows: slice) -> torch.Tensor:
        """Output rows `rows` of the weight, flattened to [rows, fan-in]."""
        table = torch.cat([self.codebook.new_zeros(1), self.codebook])
        _, row_len = self._rows()
        codes = unpack_bits_rows(self.indices[rows], self.bits, row_len)
        # int32 positions: a quarter of the transient of .long(), and a uint8 index would be
        # read as a boolean mask.
        flat = torch.index_select(table, 0, codes.reshape(-1).to(torch.int32))
        return flat.view(codes.shape)

    def _constant_rows(self, rows: slice) -> torch.Tensor:
        with torch.no_grad():
            return self.dense_rows(rows)

    @property
    def weight(self) -> torch.Tensor:
        with torch.no_grad():
            return self.dense_weight()

    @property
    def in_features(self) -> int:
        return self.weight_shape[1]

    @property
    def out_features(self) -> int:
        return self.weight_shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight_shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0]

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.weight_shape[2:])

    def dense_numel(self) -> int:
        rows, row_len = self._rows()
        return rows * row_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed_linear = not (self.cache or self.codebook.requires_grad
                             or torch.onnx.is_in_onnx_export())
        if packed_linear and self.kind == "linear":
            return blockwise_linear(x, self.weight_shape[0], self._constant_rows, self.bias,
                                    block_rows(self.weight_shape[1]))
        if self.codebook.requires_grad:
            weight = self.dense_weight()
        elif self._weight is not None:
            weight = self._weight
        else:
            # Outside inference mode, so a cache can also serve later training forwards.
            # Untraced: ONNX has no bitwise AND on bytes to unpack with, so an export holds the
            # gathered weight as a constant.
            with torch.inference_mode(False), torch.no_grad(), untraced():
                weight = self.dense_weight()
            if self.cache:
                self._weight = weight
        if self.kind == "linear":
            return F.linear(x, weight, self.bias)
        # Convolutions gather their whole (usually small) weight per call in packed mode.
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        return f"{self.kind}, {tuple(self.weight_shape)}, {self.bits} bits, {self.memory_mode}"
