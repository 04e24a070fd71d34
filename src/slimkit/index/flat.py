"""The exact index: float32 item vectors, brute-force inner product, top-k. The reference every
compressed index is compared with."""

from __future__ import annotations

from typing import Any

import torch

from .base import as_matrix, check_exclude, tensor_bytes, top_k


class FlatIndex:
    kind = "flat"

    def __init__(self, vectors: torch.Tensor) -> None:
        self.vectors = as_matrix(vectors, "vectors").contiguous()

    @classmethod
    def build(cls, vectors: torch.Tensor) -> FlatIndex:
        return cls(vectors.clone())

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.vectors)

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        return as_matrix(queries, "queries", self.dim) @ self.vectors.T

    def search(self, queries: torch.Tensor, k: int, *,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        exclude = check_exclude(exclude, len(queries), len(self))
        return top_k(self.scores(queries), k, exclude)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors}

    def config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> FlatIndex:
        return cls(tensors["vectors"])
