"""Pure quality metrics for sentence embeddings (torch only, no scipy or sklearn): correlation
with human ratings, graded retrieval nDCG, a linear-probe AUC, and agreement with a reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...eval.metrics import auc


def _flat(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to(torch.float64).reshape(-1)
    if x.numel() < 2:
        raise ValueError(f"{name}: expected at least 2 values, got {x.numel()}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson's correlation coefficient in float64; 0.0 when either side is constant."""
    a, b = _flat(x, "x"), _flat(y, "y")
    if a.numel() != b.numel():
        raise ValueError(f"y: expected {a.numel()} values to match x, got {b.numel()}")
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else 0.0


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks; tied values share the mean of the ranks they span (as scipy's rankdata)."""
    v = _flat(x, "x")
    _, inverse, counts = torch.unique(v, sorted=True, return_inverse=True, return_counts=True)
    upper = torch.cumsum(counts, 0).to(torch.float64)
    return (upper - (counts.to(torch.float64) - 1) / 2.0)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks (exact with ties)."""
    return pearson(average_ranks(x), average_ranks(y))


def cosine_matrix(emb: torch.Tensor) -> torch.Tensor:
    """All-pairs cosine similarity [n, n] in float64."""
    e = F.normalize(emb.detach().to(torch.float64), dim=-1)
    return e @ e.T


def ndcg_at_k(scores: torch.Tensor, relevance: torch.Tensor, k: int = 10) -> float:
    """Mean nDCG@k over queries (rows), linear gain `relevance`, log2(rank + 1) discount.

    `scores` and `relevance` are [queries, candidates]; a NaN score marks a candidate to skip
    (the query itself). Ties in `scores` are broken by candidate index, deterministically.
    """
    s, rel = scores.detach().to(torch.float64), relevance.detach().to(torch.float64)
    if s.shape != rel.shape or s.dim() != 2:
        raise ValueError(f"relevance: expected shape {tuple(s.shape)}, got {tuple(rel.shape)}")
    skip = torch.isnan(s)
    k = min(k, int((~skip).sum(1).min()))
    if k < 1:
        raise ValueError("scores: every query needs at least one candidate")
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    ranked = torch.sort(s.masked_fill(skip, float("-inf")), dim=1, descending=True, stable=True)
    dcg = (rel.gather(1, ranked.indices[:, :k]) * discount).sum(1)
    ideal = (torch.sort(rel.masked_fill(skip, float("-inf")), dim=1,
                        descending=True).values[:, :k] * discount).sum(1)
    keep = ideal > 0  # a query with nothing relevant has no defined nDCG
    if not bool(keep.any()):
        raise ValueError("relevance: no query has a relevant candidate")
    return float((dcg[keep] / ideal[keep]).mean())


def lee_scores(emb: torch.Tensor, ratings: torch.Tensor, k: int = 10) -> dict[str, float]:
    """The Lee benchmark on 50 document embeddings: Pearson and Spearman of cosine against the
    1225 rated pairs (upper triangle), and nDCG@k of each document as a query against the other
    49, relevance = the symmetrised rating."""
    n = ratings.shape[0]
    if emb.shape[0] != n:
        raise ValueError(f"emb: expected {n} rows to match the ratings, got {emb.shape[0]}")
    cos = cosine_matrix(emb)
    iu = torch.triu_indices(n, n, offset=1)
    human, model = ratings[iu[0], iu[1]], cos[iu[0], iu[1]]
    upper = torch.triu(ratings.to(torch.float64), diagonal=1)
    relevance = upper + upper.T
    eye = torch.eye(n, dtype=torch.bool)
    return {"lee_pearson": pearson(model, human), "lee_spearman": spearman(model, human),
            "lee_ndcg10": ndcg_at_k(cos.masked_fill(eye, float("nan")), relevance, k)}


def probe_auc(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
              test_y: torch.Tensor, *, l2: float = 0.1, max_iter: int = 200) -> float:
    """ROC AUC on the test rows of an L2-regularised logistic regression fitted on the train
    rows (full-batch L-BFGS from zero weights in float64: deterministic, no random init).

    Features are standardised with the training rows' mean and deviation, so `l2` means the
    same for embeddings of any scale; the bias is not penalised. l2 = 0.1 (on the mean loss)
    reproduces DATA.md's 0.884 for all-MiniLM-L6-v2; 1e-3 gives 0.866 and 1.0 gives 0.867.
    """
    # Callers may evaluate under inference_mode, whose tensors autograd refuses: fit outside
    # it, on clones made there.
    with torch.inference_mode(False), torch.enable_grad():
        x = train_x.detach().to(torch.float64).clone()
        y = train_y.detach().to(torch.float64).reshape(-1).clone()
        mean, std = x.mean(0), x.std(0).clamp(min=1e-12)
        x = (x - mean) / std
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                tolerance_change=1e-12, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * l2 * (w @ w)
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        scores = ((test_x.detach().to(torch.float64) - mean) / std) @ w + b
    return auc(test_y, scores)


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                   test_y: torch.Tensor, *, l2: float = 0.1, max_iter: int = 200) -> float:
    """Accuracy on the test rows of an L2-regularised multinomial logistic regression fitted
    on the train rows (labels 0..C-1), fitted as `probe_auc` fits its binary one."""
    classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    with torch.inference_mode(False), torch.enable_grad():
        x = train_x.detach().to(torch.float64).clone()
        y = train_y.detach().reshape(-1).long().clone()
        mean, std = x.mean(0), x.std(0).clamp(min=1e-12)
        x = (x - mean) / std
        w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                tolerance_change=1e-12, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        pred = (((test_x.detach().to(torch.float64) - mean) / std) @ w + b).argmax(1)
    return float((pred == test_y.reshape(-1)).double().mean())


def cv_probe_accuracy(x: torch.Tensor, y: torch.Tensor, folds: int = 5) -> float:
    """Mean `probe_accuracy` over `folds` folds (row i in fold i % folds): every row is tested
    once by a probe that never saw it, for a labelled set too small to split once."""
    rows = torch.arange(len(x))
    scores = [probe_accuracy(x[rows % folds != f], y[rows % folds != f],
                             x[rows % folds == f], y[rows % folds == f]) for f in range(folds)]
    return sum(scores) / folds


def title_retrieval(queries: torch.Tensor, docs: torch.Tensor, owner: torch.Tensor,
                    k: int = 10) -> dict[str, float]:
    """Short queries against documents: query i's relevant documents are those with
    owner == i. Returns precision@1 (the top document is relevant) and recall@k (the share of
    the query's relevant documents in its top k, out of at most k)."""
    sims = F.normalize(queries.float(), dim=-1) @ F.normalize(docs.float(), dim=-1).T
    top = sims.topk(min(k, docs.shape[0]), dim=1).indices
    rel = owner[top] == torch.arange(len(queries)).unsqueeze(1)
    size = torch.bincount(owner, minlength=len(queries)).clamp(max=top.shape[1]).clamp(min=1)
    return {"p1": float(rel[:, 0].double().mean()),
            f"r{k}": float((rel.sum(1).double() / size.double()).mean())}


def mean_cosine(emb: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean cosine similarity between row i of `emb` and row i of `ref` (the same texts)."""
    if emb.shape[0] != ref.shape[0]:
        raise ValueError(f"ref: expected {emb.shape[0]} rows, got {ref.shape[0]}")
    a, b = emb.detach().to(torch.float64), ref.detach().to(torch.float64)
    return float(F.cosine_similarity(a, b, dim=-1).mean())


def top_k_neighbours(emb: torch.Tensor, queries: torch.Tensor, k: int = 10,
                     chunk: int = 1024) -> torch.Tensor:
    """Indices [len(queries), k] of each query row's k most cosine-similar corpus rows, the
    query itself excluded; chunked so a 20k corpus needs no 20k x 20k matrix."""
    e = F.normalize(emb.detach().float(), dim=-1)
    out = []
    for part in queries.split(chunk):
        sims = e[part] @ e.T
        sims[torch.arange(len(part)), part] = float("-inf")
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


def neighbour_overlap(emb: torch.Tensor, ref: torch.Tensor, queries: torch.Tensor,
                      k: int = 10) -> float:
    """Mean |A ∩ B| / k, where A and B are a query's k nearest corpus rows under `emb` and under
    `ref` (rows are the same texts in both)."""
    if emb.shape[0] != ref.shape[0]:
        raise ValueError(f"ref: expected {emb.shape[0]} rows, got {ref.shape[0]}")
    a, b = top_k_neighbours(emb, queries, k), top_k_neighbours(ref, queries, k)
    hits = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).sum(1)
    return float(hits.double().mean()) / k
