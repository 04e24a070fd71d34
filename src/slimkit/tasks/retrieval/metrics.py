"""Pure ranking metrics over a full catalogue (torch only): masked top-k, recall@k and nDCG@k
with binary relevance. Queries without a relevant item are left out of the means."""

from __future__ import annotations

import torch

KS = (10, 50)


def top_k(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Ids [Q, k] of the highest scores per row; `exclude` (bool, same shape) drops items (those
    already seen). Ties go to the lower id, so a ranking does not depend on the sort kernel."""
    s = scores.detach().to(torch.float64)
    if exclude is not None:
        if exclude.shape != s.shape:
            raise ValueError(f"exclude: expected shape {tuple(s.shape)}, "
                             f"got {tuple(exclude.shape)}")
        s = s.masked_fill(exclude, float("-inf"))
    k = min(k, s.shape[1])
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    return order[:, :k]


def _hits(ids: torch.Tensor, relevant: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    if relevant.dim() != 2 or ids.shape[0] != relevant.shape[0]:
        raise ValueError(f"relevant: expected [{ids.shape[0]}, items] bool, "
                         f"got {tuple(relevant.shape)}")
    if k > ids.shape[1]:
        raise ValueError(f"k: {k} exceeds the {ids.shape[1]} ranked ids")
    hits = relevant.gather(1, ids[:, :k].long()).to(torch.float64)
    n_rel = relevant.sum(1).to(torch.float64)
    return hits, n_rel, n_rel > 0


def recall_at_k(ids: torch.Tensor, relevant: torch.Tensor, k: int) -> float:
    """Mean over queries of (relevant items in the top k) / (relevant items)."""
    hits, n_rel, has = _hits(ids, relevant, k)
    return float((hits.sum(1)[has] / n_rel[has]).mean()) if bool(has.any()) else 0.0


def ndcg_at_k(ids: torch.Tensor, relevant: torch.Tensor, k: int) -> float:
    """Mean nDCG@k: gain 1 per relevant item, discount log2(rank + 1), ideal = all relevant
    items first (min(k, relevant) of them)."""
    hits, n_rel, has = _hits(ids, relevant, k)
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    dcg = (hits * discount).sum(1)
    ideal = torch.cumsum(discount, 0)[(n_rel.clamp(1, k) - 1).long()]
    return float((dcg[has] / ideal[has]).mean()) if bool(has.any()) else 0.0


def ranking_metrics(ids: torch.Tensor, relevant: torch.Tensor) -> dict[str, float]:
    """recall@10, recall@50 and nDCG@10 of rankings `ids` [Q, >= 50]."""
    out = {f"recall@{k}": recall_at_k(ids, relevant, k) for k in KS}
    out["ndcg@10"] = ndcg_at_k(ids, relevant, 10)
    return out
