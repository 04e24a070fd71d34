"""Report charts as PNG bytes: quality, artifact size, run-time memory, latency per stage, and
quality against size.

matplotlib is imported inside the functions (it is the optional `report` extra) and used through
Figure + the Agg canvas directly, so no pyplot global state or user backend is touched.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

from .table import batch_sizes, format_bytes, format_metric, format_ratio, format_sig, stage_rows

WIDTH_IN, DPI = 8.0, 150  # 1200 px, shown at 800 px in the HTML: sharp on high-density screens
BASE_COLOR, STAGE_COLOR, P90_COLOR = "#9aa3ad", "#2f6db5", "#1f2933"
MODEL_COLOR = "#173a63"  # the model's own share inside a memory bar
STYLE = {
    "font.size": 10, "axes.titlesize": 12, "axes.titleweight": "bold", "axes.labelsize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "axes.axisbelow": True,
    "grid.color": "#e3e7eb", "grid.linewidth": 0.8, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 9, "legend.frameon": False,
}


def _figure(height: float, ncols: int = 1, nrows: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No "Software" chunk: the same metrics give byte-identical files across matplotlib versions.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} measured", ha="center", va="center", transform=ax.transAxes,
            color="#666666")
    ax.set_axis_off()


def _bars(ax: Any, rows: list[dict[str, Any]], values: list[float | None], labels: list[str],
          *, bottom: float = 0.0, upper: list[float] | None = None, fontsize: float = 9) -> None:
    """One labelled bar per stage, every stage in every chart so positions line up across charts;
    a stage without a value gets an "n/a" mark instead of a bar. Bars sit at positions 0..n-1
    (categorical x would merge stages that share a name); labels go above the p90 whisker."""
    upper = upper or [0.0] * len(rows)
    heights = [0.0 if v is None else v - bottom for v in values]
    colors = [BASE_COLOR if r["is_baseline"] else STAGE_COLOR for r in rows]
    ax.bar(range(len(rows)), heights, bottom=bottom, color=colors, width=0.6,
           yerr=[[0.0] * len(rows), upper], capsize=4 if any(upper) else 0,
           error_kw={"ecolor": P90_COLOR, "elinewidth": 1})
    # Method names are dotted (quantize.dynamic_int8): break at the dot so neighbours never overlap.
    ax.set_xticks(range(len(rows)), [r["name"].replace(".", ".\n", 1) for r in rows])
    for x, (v, u, text) in enumerate(zip(values, upper, labels, strict=True)):
        ax.annotate("n/a" if v is None else text, (x, bottom if v is None else v + u),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                    fontsize=fontsize if len(rows) <= 6 else fontsize - 1,
                    color="#8a939c" if v is None else "black")
    ax.set_xlim(-0.6, max(len(rows), 3) - 0.4)  # a lone bar stays bar-sized
    ax.grid(axis="x", visible=False)


def _metric_label(metrics: Mapping[str, Any]) -> str:
    better = "higher" if metrics.get("higher_is_better", True) else "lower"
    return f"{metrics.get('primary_metric') or 'quality'} ({better} is better)"


def quality_chart(metrics: Mapping[str, Any]) -> bytes:
    """Primary metric per stage; the axis is zoomed around the values, since the differences
    that matter (0.001 AUC) vanish on an axis from 0."""
    from matplotlib import rc_context

    rows = stage_rows(metrics)
    with rc_context(STYLE):
        fig, axes = _figure(4.2)
        ax = axes[0][0]
        ax.set_title(f"Quality per stage: {_metric_label(metrics)}")
        values = [r["primary"] for r in rows]
        known = [v for v in values if v is not None]
        if not known:
            _no_data(ax, "quality")
            return _png(fig)
        lo, hi = min(known), max(known)
        span = (hi - lo) or max(abs(hi) * 0.02, 1e-3)
        bottom = lo - 0.6 * span
        if lo >= 0 and bottom < 0:
            bottom = 0.0  # metrics such as AUC or perplexity are never negative
        _bars(ax, rows, values, [format_metric(v) for v in values], bottom=bottom)
        # Headroom above the tallest label for the legend box.
        ax.set_ylim(bottom, hi + 0.6 * span)
        base = next((r for r in rows if r["is_baseline"]), None)
        if base is not None and base["primary"] is not None:
            ax.axhline(base["primary"], color="#c0392b", linestyle="--", linewidth=1.2,
                       label=f"baseline {base['name']}: {format_metric(base['primary'])}")
            ax.legend(loc="upper right", frameon=True, framealpha=0.9, edgecolor="none")
        ax.set_xlabel("stage")
        ax.set_ylabel(str(metrics.get("primary_metric") or "quality"))
        return _png(fig)


def _byte_unit(largest: float) -> tuple[str, float]:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if largest >= scale:
            return unit, scale
    return "B", 1.0


def _size_note(row: dict[str, Any]) -> str:
    ratio = row["size_ratio"]
    if row["is_baseline"]:
        return "baseline"
    if ratio is None:
        return ""
    if ratio >= 1.05:
        return f"{format_ratio(ratio)} smaller"
    # "0.8x smaller" reads as a shrink; say the stage grew.
    return "same size" if ratio > 0.95 else f"{format_ratio(1 / ratio)} larger"


def size_chart(metrics: Mapping[str, Any]) -> bytes:
    """Artifact bytes per stage with "N.Nx smaller" against the baseline above each bar."""
    from matplotlib import rc_context

    rows = stage_rows(metrics)
    with rc_context(STYLE):
        fig, axes = _figure(4.2)
        ax = axes[0][0]
        ax.set_title("Artifact size per stage")
        known = [r["bytes"] for r in rows if r["bytes"] is not None]
        if not known:
            _no_data(ax, "size")
            return _png(fig)
        unit, scale = _byte_unit(max(known))
        values = [None if r["bytes"] is None else r["bytes"] / scale for r in rows]
        _bars(ax, rows, values, [f"{format_bytes(r['bytes'])}\n{_size_note(r)}" for r in rows])
        ax.set_ylim(0, max(known) / scale * 1.25)
        ax.set_xlabel("stage")
        ax.set_ylabel(f"artifact size ({unit})")
        return _png(fig)


def memory_chart(metrics: Mapping[str, Any]) -> bytes:
    """Run-time memory per stage: resident after one batch (bar) and the peak (whisker), MiB
    above the baseline of the fresh process that loaded the artifact."""
    from matplotlib import rc_context

    rows = stage_rows(metrics)
    resident = [r["runtime_mb"]["resident"] for r in rows]
    peak = [r["runtime_mb"]["peak"] for r in rows]
    with rc_context(STYLE):
        fig, axes = _figure(4.2)
        ax = axes[0][0]
        ax.set_title("Run-time memory per stage (resident, whisker = peak)")
        known = [p for p in peak if p is not None]
        if not known:
            _no_data(ax, "memory")
            return _png(fig)
        upper = [0.0 if r is None or p is None else max(p - r, 0.0)
                 for r, p in zip(resident, peak, strict=True)]
        labels = [f"{format_sig(r)} / {format_sig(p)}" for r, p in zip(resident, peak,
                                                                       strict=True)]
        _bars(ax, rows, resident, labels, upper=upper)
        # The model's own share, inside each bar: for small models kernel code and workspace
        # dominate the process figure, and this keeps the two apart.
        own = [r["runtime_mb"].get("model") for r in rows]
        if any(v is not None for v in own):
            ax.bar(range(len(rows)), [0.0 if v is None else v for v in own], width=0.3,
                   color=MODEL_COLOR, label="the model's tensors and packed kernels (est.)")
            ax.legend(loc="upper left", fontsize=8, frameon=False)
        ax.set_ylim(0, max(known) * 1.25)
        ax.set_xlabel("stage")
        ax.set_ylabel("MiB above the process baseline")
        return _png(fig)


def latency_chart(metrics: Mapping[str, Any]) -> bytes:
    """Median latency per stage with p90 whiskers, one panel per batch size: batch 1 and batch
    512 differ by orders of magnitude, so a shared axis would flatten the small batches."""
    from matplotlib import rc_context

    rows = stage_rows(metrics)
    sizes = batch_sizes(metrics)
    # Side by side only while the labels of a few stages still fit in half the width.
    ncols = 2 if len(sizes) > 1 and len(rows) <= 4 else 1
    nrows = max(1, math.ceil(len(sizes) / ncols))
    with rc_context(STYLE):
        fig, axes = _figure((3.6 if ncols == 2 else 3.0) * nrows + 0.4, ncols, nrows)
        fig.suptitle("Latency per stage (bars: median, whiskers: p90)", fontweight="bold")
        if not sizes:
            _no_data(axes[0][0], "latency")
        flat = [ax for line in axes for ax in line]
        for ax in flat[len(sizes):]:
            ax.set_axis_off()
        for ax, bs in zip(flat, sizes, strict=False):
            medians = [(r["latency"].get(bs) or {}).get("median") for r in rows]
            # A missing p90 draws no whisker rather than failing the chart.
            upper = [0.0 if m is None else max((r["latency"][bs]["p90"] or m) - m, 0.0)
                     for r, m in zip(rows, medians, strict=True)]
            labels = [
                "" if m is None else format_sig(m) + (
                    "" if r["is_baseline"] or r["speedup"].get(bs) is None
                    else f"\n{format_ratio(r['speedup'][bs])} faster")
                for r, m in zip(rows, medians, strict=True)
            ]
            _bars(ax, rows, medians, labels, upper=upper, fontsize=8 if ncols == 2 else 9)
            top = max((m or 0.0) + u for m, u in zip(medians, upper, strict=True)) or 1.0
            ax.set_ylim(0, top * 1.3)
            ax.set_title(f"batch size {bs}", fontsize=10)
            ax.set_ylabel("latency (ms)")
            if ncols == 2:
                ax.tick_params(axis="x", labelrotation=20)
        return _png(fig)


def quality_size_chart(metrics: Mapping[str, Any]) -> bytes:
    """Quality against artifact size (log x), points joined in stage order and labelled."""
    from matplotlib import rc_context
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = [r for r in stage_rows(metrics) if r["bytes"] and r["primary"] is not None]
    with rc_context(STYLE):
        fig, axes = _figure(4.6)
        ax = axes[0][0]
        ax.set_title("Quality against artifact size")
        if not rows:
            _no_data(ax, "quality or size")
            return _png(fig)
        unit, scale = _byte_unit(max(r["bytes"] for r in rows))
        xs = [r["bytes"] / scale for r in rows]
        ys = [r["primary"] for r in rows]
        ax.plot(xs, ys, color="#c5ccd4", linewidth=1, zorder=1)
        for r, x, y in zip(rows, xs, ys, strict=True):
            base = r["is_baseline"]
            ax.scatter([x], [y], s=220 if base else 60, marker="*" if base else "o", zorder=2,
                       color="#6b7580" if base else STAGE_COLOR, edgecolors="white")
            label = f"{r['name']} (baseline)" if base else r["name"]
            ax.annotate(label, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=9)
        ax.set_xscale("log")
        lo, hi = min(xs), max(xs)
        ax.set_xlim(lo / 1.35, hi * 1.6)  # room on the right for the labels
        span = (max(ys) - min(ys)) or max(abs(max(ys)) * 0.02, 1e-3)
        ax.set_ylim(min(ys) - 0.25 * span, max(ys) + 0.35 * span)
        # Within a decade a log axis may show no labelled tick at all: label 1-2-5 steps, and
        # every minor tick when the sizes span less than about 4x.
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain if hi / lo < 4 else NullFormatter())
        ax.set_xlabel(f"artifact size ({unit}, log scale)")
        ax.set_ylabel(_metric_label(metrics))
        return _png(fig)


CHARTS = {
    "quality": quality_chart,
    "size": size_chart,
    "memory": memory_chart,
    "latency": latency_chart,
    "quality_vs_size": quality_size_chart,
}
CAPTIONS = {
    "quality": "Quality per stage",
    "size": "Artifact size per stage",
    "memory": "Run-time memory per stage: resident after one batch / peak, MiB above the "
              "baseline of a fresh process that loads the artifact; the narrow dark bar is "
              "the model's own share (tensors, exact; fbgemm's packed weights, estimated)",
    "latency": "Latency per stage and batch size",
    "quality_vs_size": "Quality against artifact size",
}


def render_charts(metrics: Mapping[str, Any]) -> dict[str, bytes]:
    """Every chart that has data to show, by name; charts with nothing to plot are left out."""
    rows = stage_rows(metrics)
    has = {
        "quality": any(r["primary"] is not None for r in rows),
        "size": any(r["bytes"] is not None for r in rows),
        "memory": any(r["runtime_mb"]["peak"] is not None for r in rows),
        "latency": bool(batch_sizes(metrics)),
        "quality_vs_size": any(r["bytes"] and r["primary"] is not None for r in rows),
    }
    return {name: draw(metrics) for name, draw in CHARTS.items() if has[name]}
