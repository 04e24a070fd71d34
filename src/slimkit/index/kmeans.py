"""Lloyd's k-means with k-means++ seeding (Arthur and Vassilvitskii 2007), seeded explicitly, for
product-quantization codebooks. Squared Euclidean distance; an empty cluster is re-seeded with
the point farthest from its centroid, so every centroid stays in use."""

from __future__ import annotations

import torch


def sq_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """[N, K] squared distances, via |x|^2 - 2 x.c + |c|^2 (clamped at 0 against rounding)."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centroids.T + (centroids * centroids).sum(1)
    return d.clamp_min(0)


def kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    centroids = [x[torch.randint(len(x), (1,), generator=gen)]]
    best = sq_distances(x, centroids[0]).squeeze(1)
    for _ in range(1, k):
        total = float(best.sum())
        if total <= 0:  # fewer distinct points than k: duplicates are harmless
            i = torch.randint(len(x), (1,), generator=gen)
        else:
            i = torch.multinomial(best / total, 1, generator=gen)
        centroids.append(x[i])
        best = torch.minimum(best, sq_distances(x, x[i]).squeeze(1))
    return torch.cat(centroids)


def kmeans(x: torch.Tensor, k: int, *, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """[k, dim] centroids of the rows of `x` (needs at least k rows)."""
    if not 1 <= k <= len(x):
        raise ValueError(f"k: expected 1..{len(x)} (the number of training rows), got {k!r}")
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    centroids = kmeans_pp(x, k, gen)
    for _ in range(iters):
        dist = sq_distances(x, centroids)
        assign = dist.argmin(1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        new = sums / counts.clamp_min(1)[:, None].float()
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            far = dist.gather(1, assign[:, None]).squeeze(1).topk(len(empty)).indices
            new[empty] = x[far]
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids
