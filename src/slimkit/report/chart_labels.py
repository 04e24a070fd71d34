"""Label placement for the report charts without adjustText: each label tries candidate offsets
around its anchor and keeps the first whose box, as matplotlib computes it, stays inside the axes
and clear of every other text, the legend, the points and the other bars. `text_boxes` returns
those boxes so a test can assert that no two labels overlap."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in display pixels
Offset = tuple[float, float, str, str]  # dx, dy (points), ha, va
SLACK = 0.5  # px: boxes that merely touch do not overlap
BAR = "bar"  # gid of the bars labels keep clear of (other than their own)


@dataclasses.dataclass(frozen=True)
class Anchor:
    x: float
    y: float
    text: str
    style: dict[str, Any] = dataclasses.field(default_factory=dict)
    own: Any = None  # the artist the label belongs to (its bar): not an obstacle for it
    offsets: Sequence[Offset] = ()  # this label's own candidates, instead of place()'s
    marker: float = 0.0  # the anchor's marker size (points², as scatter's s): kept clear


def overlaps(a: Box, b: Box) -> bool:
    return (min(a[2], b[2]) - max(a[0], b[0]) > SLACK
            and min(a[3], b[3]) - max(a[1], b[1]) > SLACK)


def _box(extent: Any) -> Box:
    return (float(extent.x0), float(extent.y0), float(extent.x1), float(extent.y1))


def _text_box(text: Any, renderer: Any) -> Box:
    """The box of the words alone: an annotation's own extent includes its leader line."""
    from matplotlib.text import Annotation, Text

    if isinstance(text, Annotation):
        text.update_positions(renderer)
    return _box(Text.get_window_extent(text, renderer))


def freeze_layout(fig: Any) -> Any:
    """Lay the figure out once and fix it there: the boxes measured while placing labels stay
    true when the PNG is saved. Returns the renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    return canvas.get_renderer()


def _hidden_ticks(fig: Any) -> set[int]:
    """ids of tick labels outside their axis's view: matplotlib keeps those Text objects
    "visible" but never draws them."""
    hidden: set[int] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            eps = (hi - lo) * 1e-9
            for tick in [*axis.majorTicks, *axis.minorTicks]:
                if not lo - eps <= tick.get_loc() <= hi + eps:
                    hidden.update((id(tick.label1), id(tick.label2)))
    return hidden


def _visible_texts(fig: Any) -> list[Any]:
    from matplotlib.text import Text

    hidden = _hidden_ticks(fig)
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
            and t.figure is fig and id(t) not in hidden]


def text_boxes(fig: Any) -> list[tuple[str, Box]]:
    """(text, box) for every visible text of a laid-out figure: titles, tick and axis labels,
    legend entries and the placed labels."""
    renderer = fig.canvas.get_renderer()
    return [(t.get_text(), _text_box(t, renderer)) for t in _visible_texts(fig)]


def overlapping(boxes: Sequence[tuple[str, Box]]) -> list[tuple[str, str]]:
    """Every pair of texts whose boxes overlap."""
    return [(a[0], b[0]) for a, b in itertools.combinations(boxes, 2) if overlaps(a[1], b[1])]


def _point_box(ax: Any, anchor: Anchor) -> Box:
    px, py = ax.transData.transform((anchor.x, anchor.y))
    half = math.sqrt(anchor.marker) / 2 * ax.figure.dpi / 72
    return (px - half, py - half, px + half, py + half)


def _obstacles(fig: Any, ax: Any, renderer: Any,
               anchors: Sequence[Anchor]) -> list[tuple[Any, Box]]:
    found: list[tuple[Any, Box]] = [(t, _text_box(t, renderer))
                                    for t in _visible_texts(fig)]
    for legend in [*fig.legends, *([ax.get_legend()] if ax.get_legend() else [])]:
        found.append((legend, _box(legend.get_window_extent(renderer))))
    found += [(p, _box(p.get_window_extent(renderer))) for p in ax.patches
              if p.get_visible() and p.get_gid() == BAR]
    found += [(None, _point_box(ax, a)) for a in anchors if a.marker]
    return found


def _misleading(ax: Any, anchor: Anchor, anchors: Sequence[Anchor], box: Box) -> int:
    """1 when a scatter label's centre is nearer another point than its own: a reader would
    take it for that point's name."""
    if not anchor.marker:
        return 0
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2

    def dist(a: Anchor) -> float:
        px, py = ax.transData.transform((a.x, a.y))
        return math.hypot(px - cx, py - cy)

    def apart(a: Anchor) -> bool:  # points drawn on top of each other cannot be told apart
        ax_, ay_ = ax.transData.transform((a.x, a.y))
        bx_, by_ = ax.transData.transform((anchor.x, anchor.y))
        return math.hypot(ax_ - bx_, ay_ - by_) > 6.0

    own = dist(anchor) * 1.15  # clearly nearest, not by a hair
    return int(any(dist(a) < own for a in anchors
                   if a is not anchor and a.marker and apart(a)))


def place(ax: Any, anchors: Sequence[Anchor], offsets: Sequence[Offset], *,
          grow: str = "y", tries: int = 6) -> list[Any]:
    """Annotate every anchor at the first offset whose box fits; when some label fits nowhere,
    widen the axis named by `grow` ("y": both ends, "x": the right end; "none" for scatter
    points, whose crowding more room does not undo) and place all again."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    texts: list[Any] = []
    for attempt in range(tries):
        for t in texts:
            t.remove()
        texts, fits = [], True
        blocked = _obstacles(fig, ax, renderer, anchors)
        frame = _box(ax.get_window_extent(renderer))
        for anchor in anchors:
            best: tuple[float, Any, Box] | None = None
            for dx, dy, ha, va in anchor.offsets or offsets:
                t = ax.annotate(anchor.text, (anchor.x, anchor.y), xytext=(dx, dy),
                                textcoords="offset points", ha=ha, va=va, **anchor.style)
                box = _text_box(t, renderer)
                inside = (box[0] >= frame[0] - SLACK and box[2] <= frame[2] + SLACK
                          and box[1] >= frame[1] - SLACK and box[3] <= frame[3] + SLACK)
                hits = sum(1 for owner, other in blocked
                           if owner is not anchor.own and overlaps(box, other))
                # Outside the axes is worst, then covering another text, then naming the
                # wrong point.
                cost = 10 * hits + (0 if inside else 100) + _misleading(ax, anchor, anchors, box)
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, t, box)
                else:
                    t.remove()
                if cost == 0:
                    break
            assert best is not None
            fits = fits and best[0] == 0
            texts.append(best[1])
            blocked.append((best[1], best[2]))
        if fits or attempt == tries - 1 or grow == "none":
            return texts
        if grow == "y":
            lo, hi = ax.get_ylim()
            pad = 0.12 * (hi - lo)
            ax.set_ylim(lo - (pad if lo < 0 else 0.0), hi + pad)
        else:
            lo, hi = ax.get_xlim()
            ax.set_xlim(lo, hi + 0.15 * (hi - lo))
    return texts


Job = tuple[Any, Sequence[Anchor], Sequence[Offset], str]  # axes, anchors, offsets, grow


def settle(fig: Any, jobs: Sequence[Job], rounds: int = 3) -> None:
    """Lay out, place every job's labels, and when placing widened an axis (new tick labels,
    perhaps wider ones) lay out again and re-place, until the limits hold."""
    for _ in range(rounds):
        freeze_layout(fig)
        placed, changed = [], False
        for ax, anchors, offsets, grow in jobs:
            before = (ax.get_xlim(), ax.get_ylim())
            placed += place(ax, anchors, offsets, grow=grow)
            changed = changed or before != (ax.get_xlim(), ax.get_ylim())
        if not changed:
            return
        for t in placed:
            t.remove()
        fig.set_layout_engine("constrained")
    freeze_layout(fig)
    for ax, anchors, offsets, grow in jobs:
        place(ax, anchors, offsets, grow=grow)


def ring(radii: Sequence[float] = (5, 12, 22, 34, 50, 70, 95)) -> list[Offset]:
    """Offsets around a point, nearest first: centred above (a long name then sits over its
    own point), the right diagonals, below, the left diagonals, then level on either side."""
    out: list[Offset] = []
    for r in radii:
        out += [(0, r, "center", "bottom"), (r, r * 0.6, "left", "bottom"),
                (r, -r * 0.6, "left", "top"), (0, -r, "center", "top"),
                (-r, r * 0.6, "right", "bottom"), (-r, -r * 0.6, "right", "top"),
                (r, 0, "left", "center"), (-r, 0, "right", "center")]
    return out


def stacked(step: float = 10.0, levels: int = 5, *, down: bool = False) -> list[Offset]:
    """Above a bar (below one that points down), then further out one text line at a time
    (a staggered neighbour)."""
    if down:
        return [(0, -3 - step * k, "center", "top") for k in range(levels)]
    return [(0, 3 + step * k, "center", "bottom") for k in range(levels)]
