"""The report charts' shared look and axis rules: figure size and style, PNG output, and the
quality axis (a change from the baseline, at least 1% of the baseline's value wide)."""

from __future__ import annotations

import io
from typing import Any

WIDTH_IN, DPI = 8.0, 150  # 1200 px, shown at 800 px in the HTML: sharp on high-density screens
BASE_COLOR, STAGE_COLOR = "#9aa3ad", "#2f6db5"
GOOD_COLOR, BAD_COLOR = "#3a9d5d", "#c0392b"
RUNTIME_COLORS = {"torch": "#2f6db5", "onnxruntime": "#d9822b"}
MODEL_COLOR = "#173a63"  # the model's own share inside a memory bar
STYLE = {
    "font.size": 10, "axes.titlesize": 12, "axes.titleweight": "bold", "axes.labelsize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "axes.axisbelow": True,
    "grid.color": "#e3e7eb", "grid.linewidth": 0.8, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 9, "legend.frameon": False,
}
LABEL = {"fontsize": 8}
BACKING = {"boxstyle": "square,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}


def figure(height: float, ncols: int = 1, nrows: int = 1, **kw: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No "Software" chunk: the same metrics give byte-identical files across matplotlib versions.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} measured", ha="center", va="center", transform=ax.transAxes,
            color="#666666")
    ax.set_axis_off()


def quality_span(rows: list[dict[str, Any]], deltas: list[float]) -> tuple[float, float]:
    """The change axis: zero and every change, widened to at least 1% of the baseline's value,
    so that a change of 0.0009 AUC reads as the small thing it is rather than filling the
    chart."""
    base = next((r["primary"] for r in rows if r["is_baseline"]), None)
    floor = max(abs(base or 0.0) * 0.01, 1e-3)
    lo, hi = min([0.0, *deltas]), max([0.0, *deltas])
    missing = max(floor - (hi - lo), 0.0)
    lo, hi = lo - missing / 2, hi + missing / 2
    pad = 0.1 * (hi - lo)
    return lo - pad, hi + pad
