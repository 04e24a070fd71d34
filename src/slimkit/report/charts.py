"""Report charts as PNG bytes: quality change from the baseline, artifact size, run-time memory,
latency per stage (torch and ONNX Runtime side by side, with the noise band), and quality change
against size. Axes start at a meaningful origin (zero, or the baseline); labels are placed
clear of each other by chart_labels, and `label_boxes` exposes their boxes to the tests.

matplotlib is imported inside the functions (it is the optional `report` extra) and used through
Figure + the Agg canvas directly, so no pyplot global state or user backend is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .chart_base import (
    BAD_COLOR,
    BASE_COLOR,
    GOOD_COLOR,
    LABEL,
    MODEL_COLOR,
    STAGE_COLOR,
    STYLE,
    figure,
    no_data,
    png,
    quality_span,
)
from .chart_labels import BAR, Anchor, Box, settle, stacked, text_boxes
from .chart_panels import draw_latency, draw_quality_size
from .table import (
    format_delta,
    format_quality,
    format_ratio,
    format_sig,
    latency_batches,
    quality_label,
    stage_rows,
)
from .units import byte_unit, format_bytes


def _stage_ticks(ax: Any, rows: list[dict[str, Any]]) -> None:
    # Method names are dotted (quantize.dynamic_int8): break at the dot so neighbours never
    # overlap; past 7 stages even the halves do not fit side by side, so they stand upright.
    if len(rows) > 7:
        ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=90)
    else:
        ax.set_xticks(range(len(rows)), [r["name"].replace(".", ".\n", 1) for r in rows])
    ax.set_xlim(-0.6, max(len(rows), 3) - 0.4)  # a lone bar stays bar-sized
    ax.grid(axis="x", visible=False)


def _vbars(ax: Any, values: list[float | None], colors: list[str], labels: list[str],
           width: float = 0.6) -> list[Anchor]:
    """One bar per stage at 0..n-1 (categorical x would merge stages that share a name); the
    label anchors for place(): above a bar, below one that points down, "n/a" without one."""
    bars = ax.bar(range(len(values)), [v or 0.0 for v in values], color=colors, width=width)
    anchors = []
    for x, (v, bar, text) in enumerate(zip(values, bars, labels, strict=True)):
        bar.set_gid(BAR)
        down = v is not None and v < 0
        anchors.append(Anchor(x, v or 0.0, "n/a" if v is None else text,
                              {**LABEL, "color": "#8a939c" if v is None else "black"}, bar,
                              stacked(down=down)))
    return anchors


def draw_quality(metrics: Mapping[str, Any]) -> Any:
    rows = stage_rows(metrics)
    label = quality_label(metrics)
    fig, axes = figure(4.2)
    ax = axes[0][0]
    ax.set_title(f"Change in {label} from the baseline")
    base = next(r for r in rows if r["is_baseline"])
    deltas = [None if r["is_baseline"] else r["quality_delta"] for r in rows]
    if base["primary"] is None or all(d is None for d in deltas):
        no_data(ax, "quality")
        return fig
    colors = [BASE_COLOR if r["quality_better"] is None
              else GOOD_COLOR if r["quality_better"] else BAD_COLOR for r in rows]
    texts = ["baseline" if r["is_baseline"] else format_delta(d, base["primary"])
             for r, d in zip(rows, deltas, strict=True)]
    anchors = _vbars(ax, [0.0 if r["is_baseline"] else d for r, d in zip(rows, deltas,
                                                                          strict=True)],
                     colors, texts)
    ax.axhline(0.0, color="#1f2933", linewidth=1.2,
               label=f"zero = baseline {base['name']}: {label} {format_quality(base['primary'])}")
    ax.set_ylim(*quality_span(rows, [d for d in deltas if d is not None]))
    _stage_ticks(ax, rows)
    better = "higher" if metrics.get("higher_is_better", True) else "lower"
    ax.set_ylabel(f"Δ {label} ({better} is better)")
    fig.legend(loc="outside lower center")
    settle(fig, [(ax, anchors, stacked(), "y")])
    return fig


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


def draw_size(metrics: Mapping[str, Any]) -> Any:
    rows = stage_rows(metrics)
    fig, axes = figure(4.2)
    ax = axes[0][0]
    ax.set_title("Artifact size per stage")
    known = [r["bytes"] for r in rows if r["bytes"] is not None]
    if not known:
        no_data(ax, "size")
        return fig
    unit, scale = byte_unit(max(known))
    values = [None if r["bytes"] is None else r["bytes"] / scale for r in rows]
    anchors = _vbars(ax, values, [BASE_COLOR if r["is_baseline"] else STAGE_COLOR for r in rows],
                     [f"{format_bytes(r['bytes'])}\n{_size_note(r)}" for r in rows])
    ax.set_ylim(0, max(known) / scale * 1.2)
    _stage_ticks(ax, rows)
    ax.set_ylabel(f"artifact size ({unit}, 1 KiB = 1024 B)")
    settle(fig, [(ax, anchors, stacked(), "y")])
    return fig


def draw_memory(metrics: Mapping[str, Any]) -> Any:
    """Resident after one batch (bar) and the peak (label), MiB above the baseline of the fresh
    process that loaded the artifact; the model's own share drawn inside each bar."""
    rows = stage_rows(metrics)
    resident = [r["runtime_mb"]["resident"] for r in rows]
    peak = [r["runtime_mb"]["peak"] for r in rows]
    fig, axes = figure(4.2)
    ax = axes[0][0]
    ax.set_title("Run-time memory per stage (resident / peak)")
    known = [p for p in peak if p is not None]
    if not known:
        no_data(ax, "memory")
        return fig
    labels = [f"{format_sig(r)} / {format_sig(p)}" for r, p in zip(resident, peak, strict=True)]
    anchors = _vbars(ax, resident, [BASE_COLOR if r["is_baseline"] else STAGE_COLOR
                                    for r in rows], labels)
    own = [r["runtime_mb"].get("model") for r in rows]
    if any(v is not None for v in own):
        # For small models kernel code and workspace dominate the process figure; this keeps
        # the model's own tensors and packed kernels apart.
        ax.bar(range(len(rows)), [v or 0.0 for v in own], width=0.3, color=MODEL_COLOR,
               label="the model's tensors and packed kernels (est.)")
        fig.legend(loc="outside lower center")
    ax.set_ylim(0, max(known) * 1.2)
    _stage_ticks(ax, rows)
    ax.set_ylabel("MiB above the process baseline")
    settle(fig, [(ax, anchors, stacked(), "y")])
    return fig


CHARTS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "quality": draw_quality,
    "size": draw_size,
    "memory": draw_memory,
    "latency": draw_latency,
    "quality_vs_size": draw_quality_size,
}
CAPTIONS = {
    "quality": "Change in quality from the baseline (the zero line), on the split named; the "
               "axis spans at least 1% of the baseline's value. No noise band: quality is "
               "measured once on a fixed split, so the run has no estimate of its noise.",
    "size": "Artifact size per stage, from zero (binary units: 1 KiB = 1024 bytes)",
    "memory": "Run-time memory per stage: resident after one batch / peak, MiB above the "
              "baseline of a fresh process that loads the artifact; the narrow dark bar is "
              "the model's own share (tensors, exact; fbgemm's packed weights, estimated)",
    "latency": "Median latency per stage from zero, torch and ONNX Runtime side by side. The "
               "grey band is the run's noise probe around the baseline's median (dashed); each "
               "label's verdict is the run's own, which widens the band for calls faster than "
               "the probe, so a bar just outside the band may still read \"within noise\"",
    "quality_vs_size": "Change in quality from the baseline against artifact size",
}


def chart_figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Every chart that has data to show, as laid-out matplotlib Figures, by name."""
    from matplotlib import rc_context

    rows = stage_rows(metrics)
    has = {
        "quality": any(r["quality_delta"] is not None and not r["is_baseline"] for r in rows),
        "size": any(r["bytes"] is not None for r in rows),
        "memory": any(r["runtime_mb"]["peak"] is not None for r in rows),
        "latency": bool(latency_batches(metrics)),
        "quality_vs_size": any(r["bytes"] and r["quality_delta"] is not None
                               and not r["is_baseline"] for r in rows),
    }
    with rc_context(STYLE):
        return {name: draw(metrics) for name, draw in CHARTS.items() if has[name]}


def label_boxes(metrics: Mapping[str, Any]) -> dict[str, list[tuple[str, Box]]]:
    """chart name -> (text, box in pixels) of every visible text: what a test checks for
    overlap."""
    from matplotlib import rc_context

    # Ticks made while measuring take their font from rcParams: measure in the charts' style.
    with rc_context(STYLE):
        return {name: text_boxes(fig) for name, fig in chart_figures(metrics).items()}


def render_charts(metrics: Mapping[str, Any]) -> dict[str, bytes]:
    """Every chart that has data to show, as PNG bytes by name; empty charts are left out."""
    from matplotlib import rc_context

    with rc_context(STYLE):  # saved in the style they were laid out in (see label_boxes)
        return {name: png(fig) for name, fig in chart_figures(metrics).items()}


def latency_chart(metrics: Mapping[str, Any]) -> bytes:
    """The latency chart alone (a "no data" placeholder when nothing was timed)."""
    from matplotlib import rc_context

    with rc_context(STYLE):
        return png(draw_latency(metrics))
