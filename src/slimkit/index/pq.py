"""Product quantization (Jegou, Douze and Schmid 2011): the vector is cut into `m` sub-vectors,
each replaced by the id of its nearest of 2^`nbits` centroids (k-means per subspace, `kmeans.py`).
Search is asymmetric (ADC): the float query's inner product with every centroid is tabulated
once per query, [m, 2^nbits], and an item's score is the sum of its m table entries, equal to
the query's inner product with the item's reconstruction. Stored: one byte per sub-vector code
and the codebooks (float32, or float16 with `codebook_dtype`)."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .base import as_matrix, check_exclude, tensor_bytes, top_k
from .kmeans import kmeans, sq_distances

DTYPES = {"float32": torch.float32, "float16": torch.float16}
SPARSE_FROM = 16  # queries per search from which the sparse-matmul ADC is faster


class PQIndex:
    kind = "pq"

    def __init__(self, codes: torch.Tensor, codebooks: torch.Tensor) -> None:
        if codebooks.dim() != 3 or codebooks.dtype not in DTYPES.values():
            raise ValueError(f"codebooks: expected float [m, centroids, sub_dim], got "
                             f"{codebooks.dtype} {tuple(codebooks.shape)}")
        m, ksub, _ = codebooks.shape
        if codes.dtype != torch.uint8 or codes.dim() != 2 or codes.shape[1] != m:
            raise ValueError(f"codes: expected uint8 [items, {m}], got {codes.dtype} "
                             f"{tuple(codes.shape)}")
        if len(codes) and int(codes.max()) >= ksub:
            raise ValueError(f"codes: a code {int(codes.max())} exceeds the {ksub} centroids")
        self.codes, self.codebooks = codes.contiguous(), codebooks.contiguous()

    @classmethod
    def build(cls, vectors: torch.Tensor, *, m: int = 8, nbits: int = 8, iters: int = 25,
              seed: int = 0, codebook_dtype: str = "float32",
              train: torch.Tensor | None = None) -> PQIndex:
        """Codebooks from k-means on `train` (default: the vectors), then every vector coded."""
        x = as_matrix(vectors, "vectors")
        if m < 1 or x.shape[1] % m:
            raise ValueError(f"m: expected a divisor of the dimension {x.shape[1]}, got {m!r}")
        if not 1 <= nbits <= 8:
            raise ValueError(f"nbits: expected 1..8 (codes are bytes), got {nbits!r}")
        if codebook_dtype not in DTYPES:
            raise ValueError(f"codebook_dtype: expected one of {sorted(DTYPES)}, "
                             f"got {codebook_dtype!r}")
        ref = x if train is None else as_matrix(train, "train", x.shape[1])
        sub = x.shape[1] // m
        books = torch.stack([kmeans(ref[:, i * sub:(i + 1) * sub], 2 ** nbits, iters=iters,
                                    seed=seed + i) for i in range(m)])
        books = books.to(DTYPES[codebook_dtype])
        codes = torch.stack([sq_distances(x[:, i * sub:(i + 1) * sub], books[i].float())
                             .argmin(1) for i in range(m)], dim=1).to(torch.uint8)
        return cls(codes, books)

    @property
    def m(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def dim(self) -> int:
        return self.m * int(self.codebooks.shape[2])

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.codes, self.codebooks)

    def reconstruct(self) -> torch.Tensor:
        books = self.codebooks.float()
        return torch.cat([books[i][self.codes[:, i].long()] for i in range(self.m)], dim=1)

    def tables(self, queries: torch.Tensor) -> torch.Tensor:
        """[Q, m, centroids]: each query sub-vector's inner product with every centroid."""
        q = as_matrix(queries, "queries", self.dim).view(len(queries), self.m, -1)
        return torch.einsum("qms,mks->qmk", q, self.codebooks.float())

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """ADC scores [Q, items]: the sum of each item's m table entries.

        A few queries: one gather of the tables per subspace. Many: the codes as a 0/1 sparse
        [items, m * centroids] matrix (m ones per row) times the tables, one sparse matmul
        instead of m passes over [Q, items] (256 queries, 1682 items, m = 32: 4 ms, not 38)."""
        tables = self.tables(queries)
        if len(tables) < SPARSE_FROM:
            codes = self.codes.long()
            out = tables[:, 0, codes[:, 0]]
            for i in range(1, self.m):
                out = out + tables[:, i, codes[:, i]]
            return out
        n, k = len(self), int(self.codebooks.shape[1])
        cols = (self.codes.int() + torch.arange(self.m, dtype=torch.int32) * k).reshape(-1)
        rows = torch.arange(0, n * self.m + 1, self.m, dtype=torch.int32)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            onehot = torch.sparse_csr_tensor(rows, cols, torch.ones(n * self.m),
                                             (n, self.m * k), check_invariants=False)
            return (onehot @ tables.reshape(len(tables), -1).T).T

    def search(self, queries: torch.Tensor, k: int, *,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        exclude = check_exclude(exclude, len(queries), len(self))
        return top_k(self.scores(queries), k, exclude)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"codes": self.codes, "codebooks": self.codebooks}

    def config(self) -> dict[str, Any]:
        return {"m": self.m, "centroids": int(self.codebooks.shape[1])}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> PQIndex:
        return cls(tensors["codes"], tensors["codebooks"])
