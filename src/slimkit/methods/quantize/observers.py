"""Calibration observers (pure math): a mergeable histogram of activations accumulated over batches,
and the rules that turn it into per-tensor affine (scale, zero_point) for 8-bit activations:
min-max, percentile, MSE-optimal clipping and KL entropy (TensorRT, Migacz 2017)."""

from __future__ import annotations

import math

import torch

OBSERVERS = ("minmax", "percentile", "mse", "kl")
_EPS = float(torch.finfo(torch.float32).eps)


class Histogram:
    """Counts of values in bins of width `width` anchored at 0 (bin k covers [k w, (k+1) w)).

    Anchoring at 0 makes growing the range exact: when a later batch needs more than `max_bins`
    bins, the width doubles and neighbouring bins merge without re-spreading any counts.
    """

    def __init__(self, max_bins: int = 4096) -> None:
        self.max_bins = max_bins
        self.width = 0.0
        self.first = 0
        self.counts = torch.zeros(0, dtype=torch.float64)
        self.min = math.inf
        self.max = -math.inf

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1).double()
        x = x[torch.isfinite(x)]
        if x.numel() == 0:
            return
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        if self.width == 0.0:
            # Half the bins for the first batch's range leaves room to grow before merging.
            span = max(self.max, 0.0) - min(self.min, 0.0)
            self.width = max(span, 1e-12) / (self.max_bins // 2)
            self.first = math.floor(self.min / self.width)
        lo, hi = math.floor(self.min / self.width), math.floor(self.max / self.width)
        while hi - lo + 1 > self.max_bins:
            self._merge()
            lo, hi = math.floor(self.min / self.width), math.floor(self.max / self.width)
        lo, hi = min(lo, self.first), max(hi, self.first + len(self.counts) - 1)
        grown = torch.zeros(hi - lo + 1, dtype=torch.float64)
        grown[self.first - lo:self.first - lo + len(self.counts)] = self.counts
        self.counts, self.first = grown, lo
        idx = (torch.floor(x / self.width).long() - lo).clamp(0, len(grown) - 1)
        self.counts += torch.bincount(idx, minlength=len(grown)).double()

    def _merge(self) -> None:
        k = torch.arange(self.first, self.first + len(self.counts))
        new_first = self.first // 2
        merged = torch.zeros(int(k[-1]) // 2 - new_first + 1, dtype=torch.float64)
        merged.index_add_(0, torch.div(k, 2, rounding_mode="floor") - new_first, self.counts)
        self.counts, self.first, self.width = merged, new_first, self.width * 2

    def centers(self) -> torch.Tensor:
        k = torch.arange(self.first, self.first + len(self.counts), dtype=torch.float64)
        return (k + 0.5) * self.width

    def folded(self) -> torch.Tensor:
        """Counts of |x| in bins [j w, (j+1) w) from j = 0 (negative bin k folds onto -k-1)."""
        k = torch.arange(self.first, self.first + len(self.counts))
        j = torch.where(k >= 0, k, -k - 1)
        out = torch.zeros(int(j.max()) + 1, dtype=torch.float64)
        return out.index_add_(0, j, self.counts)


def qparams_from_range(lo: float, hi: float, qmin: int = 0, qmax: int = 255) -> tuple[float, int]:
    """Affine (scale, zero_point) mapping [lo, hi] (widened to hold 0 exactly) onto [qmin, qmax]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(torch.tensor(max((hi - lo) / (qmax - qmin), _EPS), dtype=torch.float32))
    zero_point = int(min(max(qmin - round(lo / scale), qmin), qmax))
    return scale, zero_point


def minmax_range(hist: Histogram) -> tuple[float, float]:
    return hist.min, hist.max


def percentile_range(hist: Histogram, percentile: float = 99.99) -> tuple[float, float]:
    """Clip both tails at `percentile` (e.g. 99.99 keeps all but 0.01% at each end)."""
    cdf = torch.cumsum(hist.counts, 0) / hist.total
    edges = (torch.arange(hist.first, hist.first + len(cdf) + 1, dtype=torch.float64)
             * hist.width)

    def value_at(q: float) -> float:
        i = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64))[0])
        i = min(i, len(cdf) - 1)
        below = float(cdf[i - 1]) if i > 0 else 0.0
        frac = (q - below) / max(float(cdf[i]) - below, 1e-300)
        return float(edges[i] + min(max(frac, 0.0), 1.0) * hist.width)

    tail = 1.0 - percentile / 100.0
    lo = hist.min if hist.min >= 0 else max(hist.min, value_at(tail))
    return lo, min(hist.max, value_at(1.0 - tail))


def mse_range(hist: Histogram, qmin: int = 0, qmax: int = 255,
              candidates: int = 200, rounds: int = 3) -> tuple[float, float]:
    """Clip range minimizing expected quantization MSE on the histogram: a proportional shrink
    of [min, max], then coordinate descent on each end (heavy tails are often one-sided).

    Error model (Banner et al. 2019, ACIQ): values inside the range get uniform rounding noise
    s^2 / 12, values outside are clipped to the nearest representable end.
    """
    a = torch.linspace(1.0 / candidates, 1.0, candidates, dtype=torch.float64)
    lo0, hi0 = min(hist.min, 0.0), max(hist.max, 0.0)
    errors = _mse(hist, lo0 * a, hi0 * a, qmin, qmax)
    best = int(torch.argmin(errors))
    lo, hi = lo0 * float(a[best]), hi0 * float(a[best])
    for _ in range(rounds if lo0 < 0 < hi0 else 0):
        his = hi0 * a
        hi = float(his[int(torch.argmin(_mse(hist, torch.full_like(a, lo), his, qmin, qmax)))])
        los = lo0 * a
        lo = float(los[int(torch.argmin(_mse(hist, los, torch.full_like(a, hi), qmin, qmax)))])
    return lo, hi


def _mse(hist: Histogram, lo: torch.Tensor, hi: torch.Tensor, qmin: int,
         qmax: int) -> torch.Tensor:
    """Expected squared error per candidate range (lo[i], hi[i]), summed over the histogram."""
    c = hist.centers()
    lo, hi = lo[:, None], hi[:, None]
    scale = ((hi - lo) / (qmax - qmin)).clamp(min=_EPS)
    zp = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    top, bottom = (qmax - zp) * scale, (qmin - zp) * scale
    err = torch.where(c > top, (c - top) ** 2,
                      torch.where(c < bottom, (bottom - c) ** 2, scale ** 2 / 12.0))
    return (err * hist.counts).sum(dim=1)


def kl_threshold(counts: torch.Tensor, levels: int, max_candidates: int = 512) -> int:
    """TensorRT's entropy calibration on a histogram of |x| from 0: the number of bins i
    (threshold = i bins) whose `levels`-level quantization diverges least (KL) from the clipped
    reference distribution."""
    n = len(counts)
    if n <= levels:
        return n
    stride = max(1, (n - levels) // max_candidates)
    best_i, best_kl = n, math.inf
    for i in list(range(levels, n, stride)) + [n]:
        p = counts[:i].clone()
        p[-1] += counts[i:].sum()  # outliers clipped into the last bin
        # Merge the i bins into `levels` groups; spread each group's mass over its non-empty bins.
        group = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")
        nonzero = (counts[:i] > 0).double()
        mass = torch.zeros(levels, dtype=torch.float64).index_add_(0, group, counts[:i])
        filled = torch.zeros(levels, dtype=torch.float64).index_add_(0, group, nonzero)
        q = nonzero * (mass / filled.clamp(min=1))[group]
        kl = _kl(p, q)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    p = p / p.sum()
    q = q / q.sum().clamp(min=1e-300)
    support = p > 0
    # Reference mass where the quantized distribution has none: smoothed, as TensorRT does.
    q = torch.where(support & (q == 0), torch.full_like(q, 1e-4 / max(int(support.sum()), 1)), q)
    return float((p[support] * torch.log(p[support] / q[support])).sum())


def kl_range(hist: Histogram, qmin: int = 0, qmax: int = 255) -> tuple[float, float]:
    levels = qmax - qmin + 1
    if hist.min < 0:
        levels //= 2  # a symmetric range spends half the levels on each side of 0
    folded, width = hist.folded(), hist.width
    while len(folded) > 2048:  # TensorRT's resolution; halves the cost of the threshold search
        folded = torch.nn.functional.pad(folded, (0, len(folded) % 2)).view(-1, 2).sum(dim=1)
        width *= 2
    t = kl_threshold(folded, levels) * width
    return max(hist.min, -t), min(hist.max, t)


def activation_qparams(hist: Histogram, observer: str, *, percentile: float = 99.99,
                       qmin: int = 0, qmax: int = 255) -> tuple[float, int]:
    """(scale, zero_point) for one activation tensor from its calibration histogram."""
    if hist.total == 0:
        raise ValueError("activation_qparams: no calibration values were observed")
    if observer == "minmax":
        lo, hi = minmax_range(hist)
    elif observer == "percentile":
        lo, hi = percentile_range(hist, percentile)
    elif observer == "mse":
        lo, hi = mse_range(hist, qmin, qmax)
    elif observer == "kl":
        lo, hi = kl_range(hist, qmin, qmax)
    else:
        raise ValueError(f"observer: expected one of {OBSERVERS}, got {observer!r}")
    return qparams_from_range(lo, hi, qmin, qmax)
