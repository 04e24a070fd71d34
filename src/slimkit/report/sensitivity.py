"""Per-layer sensitivity chart as PNG bytes: horizontal bars of the quality drop when one layer
alone is compressed, one colour per method, the most sensitive layer on top. Layers the method
failed on are drawn as a labelled "failed" entry with the reason; `sensitivity_markdown` lists
every layer, measured or not, as a table.

matplotlib is imported inside the function (the optional `report` extra), through Figure and the
Agg canvas, as in chart_base.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .chart_base import DPI, STYLE, WIDTH_IN, png

COLORS = ("#2f6db5", "#d9822b", "#3a9d5d", "#9b59b6", "#c0392b", "#7f8c8d")

Rows = Sequence[Mapping[str, Any]]


def _label(drop: float) -> str:
    text = f"{drop:+.4f}"
    return "0.0000" if float(text) == 0 else text  # no "-0.0000" for a drop below the precision


def _failures(groups: Mapping[str, Rows]) -> dict[str, str]:
    """layer -> "method: reason" for every failed layer of every series (rows from
    `layer_sensitivity` carry them in `.skipped`)."""
    failed: dict[str, str] = {}
    for rows in groups.values():
        for s in getattr(rows, "skipped", ()):
            if s.get("status") == "failed":
                failed.setdefault(s["layer"], f"{s['method']}: {s['reason']}")
    return failed


def sensitivity_markdown(series: Mapping[str, Rows] | Rows) -> str:
    """A Markdown table: one line per measured layer (drop, bytes) and per skipped layer
    (status and reason), so a failure is visible next to the numbers."""
    groups = dict(series) if isinstance(series, Mapping) else {"": series}
    lines = ["| series | layer | method | drop | bytes before → after | status |",
             "|---|---|---|---|---|---|"]
    for label, rows in groups.items():
        for r in rows:
            lines.append(f"| {label} | {r['layer']} | {r['method']} | {_label(float(r['drop']))}"
                         f" | {r['bytes_before']} → {r['bytes_after']} | measured |")
        for s in getattr(rows, "skipped", ()):
            reason = str(s["reason"]).replace("|", "\\|")
            lines.append(f"| {label} | {s['layer']} | {s['method']} | – | – | "
                         f"{s['status']}: {reason} |")
    return "\n".join(lines) + "\n"


def sensitivity_chart(series: Mapping[str, Rows] | Rows, *, title: str | None = None) -> bytes:
    """`series`: rows from `layer_sensitivity` (keys layer, drop, metric), or a mapping from a
    label (the method) to such rows. Positive drop = worse quality."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    groups = dict(series) if isinstance(series, Mapping) else {"": series}
    worst: dict[str, float] = {}
    for rows in groups.values():
        for r in rows:
            worst[r["layer"]] = max(worst.get(r["layer"], float("-inf")), float(r["drop"]))
    # Most sensitive at the top: barh draws index 0 at the bottom.
    layers = sorted(worst, key=lambda n: worst[n])
    failed = {n: why for n, why in _failures(groups).items() if n not in worst}
    metric = next((str(r.get("metric")) for rows in groups.values() for r in rows), "quality")
    height = max(2.6, 0.9 + len(layers) * (0.22 + 0.16 * len(groups)) + 0.3 * len(failed))
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        ax.set_title(title or f"Per-layer sensitivity: {metric} drop with one layer compressed")
        if not layers:
            lines = ["no layer measured", *(f"{n}: failed ({why[:90]})"
                                            for n, why in failed.items())]
            ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center",
                    transform=ax.transAxes, color="#b42318" if failed else "#666666")
            ax.set_axis_off()
            return png(fig)
        bar = 0.8 / len(groups)
        for g, (label, rows) in enumerate(groups.items()):
            drops = {r["layer"]: float(r["drop"]) for r in rows}
            # The first series sits on top within each layer's group, in legend order.
            ys = [i + 0.4 - bar * (g + 0.5) for i, n in enumerate(layers) if n in drops]
            xs = [drops[n] for n in layers if n in drops]
            ax.barh(ys, xs, height=bar * 0.9, color=COLORS[g % len(COLORS)], label=label or None)
            for y, x in zip(ys, xs, strict=True):
                ax.annotate(_label(x), (x, y), xytext=(3 if x >= 0 else -3, 0),
                            textcoords="offset points", va="center",
                            ha="left" if x >= 0 else "right", fontsize=7)
        ax.axvline(0.0, color="#1f2933", linewidth=0.8)
        # Failed layers go below the bars (negative rows) with their reason instead of a bar.
        for i, why in enumerate(failed.values()):
            ax.annotate(f"failed: {why[:90]}", (0.0, -1 - i), xytext=(3, 0),
                        textcoords="offset points", va="center", ha="left", fontsize=7,
                        color="#b42318")
        ax.set_yticks([*range(len(layers)), *(-1 - i for i in range(len(failed)))],
                      [*layers, *(f"{n} (failed)" for n in failed)])
        ax.set_ylim(-len(failed) - 0.6, len(layers) - 0.4)
        ax.grid(axis="y", visible=False)
        lo = min(0.0, *(float(r["drop"]) for rows in groups.values() for r in rows))
        hi = max(0.0, *(float(r["drop"]) for rows in groups.values() for r in rows))
        span = (hi - lo) or 1e-3
        ax.set_xlim(lo - 0.18 * span, hi + 0.25 * span)  # room for the value labels
        ax.set_xlabel(f"{metric} drop (positive = worse)")
        if len(groups) > 1:
            ax.legend(loc="lower right", frameon=True, framealpha=0.9, edgecolor="none")
        return png(fig)
