"""An embedding table stored as a tensor train (Oseledets 2011, "Tensor-Train Decomposition";
TT-Rec, Yin et al. 2021, "TT-Rec: Tensor Train Compression for Deep Learning Recommendation Model
Embeddings"): the [rows, dim] table is read as a tensor of shape (n_1 d_1, ..., n_K d_K) with
rows = prod n_k (padded up) and dim = prod d_k, and held as K cores G_k, stored [n_k, r_{k-1},
d_k, r_k] so a digit's slice is one contiguous gather (r_0 = r_K = 1). Row i, with mixed-radix
digits (i_1, ..., i_K), is the product G_1[i_1] G_2[i_2] ... G_K[i_K], computed only for the
rows looked up: a batch costs
K-1 small batched matrix products and no row of the full table is ever materialised. Each
distinct id of a call is computed once (ids are Zipf-distributed: a batch repeats its hot ids)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..core.module_types import register_module_type
from .bags import MODES, bag_lookup


def balanced_factors(value: int, count: int) -> list[int]:
    """`count` integers whose product is at least `value` and as equal as possible (row
    factors: the padded rows are never looked up)."""
    factors = []
    left = value
    for k in range(count, 0, -1):
        f = max(1, math.ceil(left ** (1.0 / k) - 1e-9))
        factors.append(f)
        left = math.ceil(left / f)
    return factors


def exact_factors(value: int, count: int) -> list[int]:
    """`count` integers whose product is exactly `value`, as equal as possible (the width must
    come out exact): the prime factors dealt largest first to the smallest running product."""
    primes, n, p = [], value, 2
    while n > 1 and p * p <= n:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    if n > 1:
        primes.append(n)
    factors = [1] * count
    for prime in sorted(primes, reverse=True):
        factors[factors.index(min(factors))] *= prime
    return sorted(factors)


def core_bytes(row_factors: list[int], dim_factors: list[int], ranks: list[int]) -> int:
    """fp32 bytes of the cores; `ranks` are the K-1 inner ranks."""
    full = [1, *ranks, 1]
    return 4 * sum(full[k] * n * d * full[k + 1]
                   for k, (n, d) in enumerate(zip(row_factors, dim_factors, strict=True)))


@register_module_type
class TTEmbedding(nn.Module):
    """`mode="none"` behaves as nn.Embedding; "sum"/"mean" as nn.EmbeddingBag (2-D bags, or 1-D
    ids and offsets). The padding row reads zeros (as a trained table's padding row is)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, row_factors: list[int],
                 dim_factors: list[int], ranks: list[int], mode: str = "none",
                 padding_idx: int | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"TTEmbedding: mode={mode!r} unsupported (one of {MODES})")
        if len(row_factors) != len(dim_factors) or len(ranks) != len(row_factors) - 1:
            raise ValueError("TTEmbedding: K row factors, K dim factors and K-1 ranks expected")
        if math.prod(row_factors) < num_embeddings or math.prod(dim_factors) != embedding_dim:
            raise ValueError(f"TTEmbedding: factors {row_factors} x {dim_factors} do not cover "
                             f"{num_embeddings} x {embedding_dim}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.row_factors, self.dim_factors = list(row_factors), list(dim_factors)
        self.ranks, self.mode, self.padding_idx = list(ranks), mode, padding_idx
        full = [1, *ranks, 1]
        self.cores = nn.ParameterList(
            nn.Parameter(torch.zeros(n, full[k], d, full[k + 1]))
            for k, (n, d) in enumerate(zip(row_factors, dim_factors, strict=True)))
        # Place values of each digit (most significant first), for the mixed-radix split.
        places = [math.prod(row_factors[k + 1:]) for k in range(len(row_factors))]
        self.places = places

    def spec(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "row_factors": self.row_factors, "dim_factors": self.dim_factors,
                "ranks": self.ranks, "mode": self.mode, "padding_idx": self.padding_idx}

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows for `index` of any shape -> [*index.shape, dim]."""
        flat = index.reshape(-1).long()
        if torch.onnx.is_in_onnx_export():
            rows = self._product(flat)
        else:
            ids, inverse = torch.unique(flat, return_inverse=True)
            rows = self._product(ids)[inverse]
        if self.padding_idx is not None:
            rows = rows * (flat != self.padding_idx).unsqueeze(-1).to(rows.dtype)
        return rows.reshape(*index.shape, self.embedding_dim)

    def _product(self, ids: torch.Tensor) -> torch.Tensor:
        """[len(ids), dim]: the cores' slices for each id's digits, multiplied out."""
        if ids.numel() == 0:
            return torch.zeros(0, self.embedding_dim, device=ids.device)
        out: torch.Tensor | None = None
        cores: list[torch.Tensor] = list(self.cores)
        for core, place, n in zip(cores, self.places, self.row_factors, strict=True):
            digit = torch.remainder(torch.div(ids, place, rounding_mode="floor"), n)
            g = core[digit]  # [B, r_{k-1}, d_k, r_k]
            if out is None:
                out = g.reshape(ids.shape[0], -1, core.shape[3])  # r_0 = 1: [B, d_1, r_1]
                continue
            # [B, D, r_{k-1}] x [B, r_{k-1}, d_k r_k] -> [B, D d_k, r_k]
            out = torch.bmm(out, g.reshape(ids.shape[0], core.shape[1], -1))
            out = out.reshape(ids.shape[0], -1, core.shape[3])
        assert out is not None
        return out.reshape(ids.shape[0], self.embedding_dim)

    def forward(self, index: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        return bag_lookup(self.rows, index, offsets, per_sample_weights, dim=self.embedding_dim,
                          mode=self.mode, padding_idx=self.padding_idx, include_last_offset=False)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, rows={self.row_factors}, "
                f"dims={self.dim_factors}, ranks={self.ranks}, mode={self.mode!r}")


def tt_svd(weight: torch.Tensor, row_factors: list[int], dim_factors: list[int],
           max_rank: int) -> list[torch.Tensor]:
    """Cores [n_k, r_{k-1}, d_k, r_k] of `weight` [rows, dim] by sequential truncated SVD
    (TT-SVD, Oseledets 2011): the best rank-r cut at each step, ranks at most `max_rank`.
    Rows beyond `weight`'s are zeros."""
    k_count = len(row_factors)
    padded = torch.zeros(math.prod(row_factors), weight.shape[1], dtype=torch.float64)
    padded[:weight.shape[0]] = weight.detach().double()
    # [n_1..n_K, d_1..d_K] -> [n_1, d_1, n_2, d_2, ...]
    t = padded.reshape(*row_factors, *dim_factors)
    order = [i for k in range(k_count) for i in (k, k_count + k)]
    rest = t.permute(*order).contiguous()
    cores, rank = [], 1
    for k in range(k_count - 1):
        n, d = row_factors[k], dim_factors[k]
        matrix = rest.reshape(rank * n * d, -1)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        new_rank = max(1, min(max_rank, int((s > s[0] * 1e-12).sum()) if s.numel() else 1))
        cores.append(u[:, :new_rank].reshape(rank, n, d, new_rank).transpose(0, 1).float())
        rest = s[:new_rank, None] * vh[:new_rank]
        rank = new_rank
    cores.append(rest.reshape(rank, row_factors[-1], dim_factors[-1], 1).transpose(0, 1).float())
    return cores
