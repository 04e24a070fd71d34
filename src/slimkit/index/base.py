"""What every index shares: masked top-k over a [queries, items] score matrix, and input checks.

An index is any object with `kind`, `dim`, `__len__`, `search(queries, k, exclude=None)`,
`nbytes`, `tensors()`, `config()` and a classmethod `from_tensors(tensors, config)` (used by
`io.load_index`). `exclude` is a bool [queries, items] mask of items never returned (those a
user has already seen)."""

from __future__ import annotations

import torch

NEG = float("-inf")


def as_matrix(x: torch.Tensor, name: str, dim: int | None = None) -> torch.Tensor:
    """`x` as a finite float32 [rows, dim] matrix; ValueError naming `name` otherwise."""
    x = torch.as_tensor(x).detach()
    if x.dim() != 2 or (dim is not None and x.shape[1] != dim):
        want = f"[rows, {dim}]" if dim is not None else "[rows, dim]"
        raise ValueError(f"{name}: expected a {want} matrix, got shape {tuple(x.shape)}")
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


def check_exclude(exclude: torch.Tensor | None, queries: int, items: int) -> torch.Tensor | None:
    if exclude is None:
        return None
    if exclude.shape != (queries, items) or exclude.dtype != torch.bool:
        raise ValueError(f"exclude: expected bool [{queries}, {items}], got "
                         f"{exclude.dtype} {tuple(exclude.shape)}")
    return exclude


def top_k(scores: torch.Tensor, k: int,
          exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, ids) [Q, k] of the highest scores, excluded items never among them unless a row
    has fewer than k others (their score is then -inf)."""
    if k < 1:
        raise ValueError(f"k: expected an int >= 1, got {k!r}")
    if exclude is not None:
        scores = scores.masked_fill(exclude, NEG)
    values, ids = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    return values, ids


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
