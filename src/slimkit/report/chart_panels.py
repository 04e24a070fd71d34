"""The two report charts with two measured axes: median latency per stage in one panel per batch
size and runtime (torch and ONNX Runtime side by side, the noise band around the baseline), and
quality change against artifact size with its labels kept clear of each other and the points."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .chart_base import (
    BACKING,
    BASE_COLOR,
    LABEL,
    RUNTIME_COLORS,
    STAGE_COLOR,
    figure,
    no_data,
    quality_span,
)
from .chart_labels import BAR, Anchor, ring, settle
from .speed import RUNTIMES, claim_text, noise_band
from .table import format_sig, latency_batches, quality_label, stage_rows
from .units import byte_unit


def _latency_panel(ax: Any, metrics: Mapping[str, Any], rows: list[dict[str, Any]],
                   runtime: str, label: str, batch: str) -> list[Anchor]:
    from matplotlib.ticker import MaxNLocator

    key = "latency" if runtime == "torch" else "ort_latency"
    medians = [(r[key].get(batch) or {}).get("median") for r in rows]
    bars = ax.barh(range(len(rows)), [m or 0.0 for m in medians], height=0.6,
                   color=[BASE_COLOR if r["is_baseline"] else RUNTIME_COLORS[runtime]
                          for r in rows])
    ref = next((m for r, m in zip(rows, medians, strict=True) if r["is_baseline"]), None)
    band = noise_band(metrics, runtime, batch)
    if ref is not None and band is not None and band > 0:
        # Ratios ref / m within [1 / (1 + band), 1 + band] are noise (eval/cost.py's verdict):
        # medians m within [ref / (1 + band), ref * (1 + band)].
        ax.axvspan(ref / (1 + band), ref * (1 + band), color="#9aa5b1", alpha=0.3, lw=0,
                   zorder=0.6,  # above the grid, below the bars
                   label="noise band of the run's probe")
    if ref is not None:
        ax.axvline(ref, color="#1f2933", linewidth=1, linestyle="--", label="baseline median")
    anchors = []
    for i, (r, m, bar) in enumerate(zip(rows, medians, bars, strict=True)):
        bar.set_gid(BAR)
        claim = "baseline" if r["is_baseline"] else claim_text(r["claims"][runtime].get(batch))
        text = "n/a" if m is None else f"{format_sig(m)} ms" + (f" · {claim}" if claim else "")
        # An opaque backing keeps the label readable where it crosses the band or the line.
        anchors.append(Anchor(m or 0.0, i, text, {**LABEL, "bbox": BACKING}, bar))
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the first stage on top
    ax.set_xlim(0, max((m or 0.0) for m in medians) * 1.15 or 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # half-width panels: room for 3-decimal ticks
    ax.set_title(f"{label}, batch {batch}", fontsize=10)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("median latency (ms)")
    return anchors


def draw_latency(metrics: Mapping[str, Any]) -> Any:
    """One panel per batch size (rows) and runtime (columns): torch and ONNX Runtime side by
    side; batch 1 and batch 512 differ by orders of magnitude, so each panel has its own axis."""
    rows = stage_rows(metrics)
    sizes = latency_batches(metrics)
    runtimes = [(rt, label) for rt, label in RUNTIMES
                if any(r["latency" if rt == "torch" else "ort_latency"] for r in rows)]
    nrows, ncols = max(1, len(sizes)), max(1, len(runtimes))
    fig, axes = figure(nrows * (0.3 * len(rows) + 1.2) + 0.8, ncols, nrows, sharey=True)
    fig.suptitle("Median latency per stage, torch and ONNX Runtime side by side",
                 fontweight="bold")
    if not sizes or not runtimes:
        no_data(axes[0][0], "latency")
        return fig
    placed = []
    for i, bs in enumerate(sizes):
        for j, (rt, label) in enumerate(runtimes):
            placed.append((axes[i][j], _latency_panel(axes[i][j], metrics, rows, rt, label, bs)))
    axes[0][0].set_yticks(range(len(rows)), [r["name"] for r in rows])
    handles = {h.get_label(): h for ax, _ in placed for h in ax.get_legend_handles_labels()[0]}
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=2)
    settle(fig, [(ax, anchors, [(4, 0, "left", "center")], "x") for ax, anchors in placed])
    return fig


def draw_quality_size(metrics: Mapping[str, Any]) -> Any:
    """Quality change against artifact size (log x), points joined in stage order, labelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = [r for r in stage_rows(metrics) if r["bytes"] and r["quality_delta"] is not None]
    label = quality_label(metrics)
    fig, axes = figure(4.6)
    ax = axes[0][0]
    ax.set_title(f"Change in {label} against artifact size")
    if not rows:
        no_data(ax, "quality or size")
        return fig
    unit, scale = byte_unit(max(r["bytes"] for r in rows))
    xs = [r["bytes"] / scale for r in rows]
    ys = [r["quality_delta"] for r in rows]
    ax.plot(xs, ys, color="#c5ccd4", linewidth=1, zorder=1)
    sizes = [220.0 if r["is_baseline"] else 60.0 for r in rows]
    for r, x, y, s in zip(rows, xs, ys, sizes, strict=True):
        ax.scatter([x], [y], s=s, marker="*" if r["is_baseline"] else "o", zorder=2,
                   color="#6b7580" if r["is_baseline"] else STAGE_COLOR, edgecolors="white")
    ax.axhline(0.0, color="#1f2933", linewidth=1, zorder=0)
    ax.set_xscale("log")
    lo, hi = min(xs), max(xs)
    ax.set_xlim(lo / 1.6, hi * 1.6)
    ax.set_ylim(*quality_span(rows, ys))
    # Within a decade a log axis may show no labelled tick at all: label 1-2-5 steps, and
    # every minor tick when the sizes span less than about 4x.
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain if hi / lo < 4 else NullFormatter())
    ax.set_xlabel(f"artifact size ({unit}, log scale)")
    better = "higher" if metrics.get("higher_is_better", True) else "lower"
    ax.set_ylabel(f"Δ {label} from the baseline ({better} is better)")
    # A thin leader line ties a label pushed away from a crowded point back to it.
    leader = {"arrowstyle": "-", "color": "#9aa5b1", "linewidth": 0.6, "shrinkA": 0,
              "shrinkB": 5}
    anchors = [Anchor(x, y, f"{r['name']} (baseline)" if r["is_baseline"] else r["name"],
                      {**LABEL, "arrowprops": leader}, marker=s)
               for r, x, y, s in zip(rows, xs, ys, sizes, strict=True)]
    settle(fig, [(ax, anchors, ring(), "none")])
    return fig
