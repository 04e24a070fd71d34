"""render_html: one self-contained report page (inline CSS, charts as data: URIs, no network)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape
from typing import Any

from .charts import CAPTIONS, render_charts
from .details import stage_details
from .table import Table, build_table, summary

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2933; background: #f7f8fa; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 10px; border-bottom: 1px solid #e3e7eb; padding-bottom: 4px; }
.meta { color: #616e7c; font-size: 13px; margin: 0 0 16px; }
.summary { font-size: 16px; background: #eef4fb; border-left: 4px solid #2f6db5;
           padding: 10px 14px; margin: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; white-space: nowrap; }
th, td { padding: 6px 10px; border-bottom: 1px solid #e3e7eb; }
th { background: #f0f2f5; text-align: left; font-weight: 600; vertical-align: bottom;
     white-space: normal; min-width: 60px; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.baseline td { background: #f7f8fa; }
td.good { color: #1e7b34; font-weight: 600; }
td.bad { color: #b42318; font-weight: 600; }
figure { margin: 0 0 28px; }
figure img { width: 100%; max-width: 800px; height: auto; display: block; }
figcaption { color: #616e7c; font-size: 13px; margin-top: 4px; }
"""


def _meta_line(metrics: Mapping[str, Any]) -> str:
    task = metrics.get("task") or {}
    parts = []
    if task.get("name"):
        parts.append(f"task {task['name']}")
    rows = task.get("rows") or {}
    if rows:
        parts.append(", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                               for k, v in rows.items()) + " rows")
    if metrics.get("primary_metric"):
        better = "higher" if metrics.get("higher_is_better", True) else "lower"
        parts.append(f"primary metric {metrics['primary_metric']} ({better} is better)")
    if metrics.get("created"):
        parts.append(f"created {metrics['created']}")
    return " · ".join(parts)


def _table_html(table: Table) -> str:
    head = "".join(
        f'<th class="{"txt" if table.is_text(i) else "num"}">{escape(h)}</th>'
        for i, h in enumerate(table.headers)
    )
    body = []
    for i, (cells, tones) in enumerate(zip(table.cells, table.tones, strict=True)):
        row_class = ' class="baseline"' if i == table.baseline else ""
        tds = "".join(
            f'<td class="{"txt" if table.is_text(j) else "num"} {tone}">{escape(text)}</td>'
            for j, (text, tone) in enumerate(zip(cells, tones, strict=True))
        )
        body.append(f"<tr{row_class}>{tds}</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _tables_html(metrics: Mapping[str, Any]) -> list[str]:
    """Two tables, quality, size and memory then speed: one table of every column is too wide
    to read without scrolling sideways."""
    table = build_table(metrics)
    parts = ["<h2>Quality, size and memory</h2>", _table_html(table.columns(1, table.speed_from))]
    if table.speed_from < len(table.headers):
        parts += ["<h2>Speed</h2>", _table_html(table.columns(table.speed_from))]
    return parts


def _details_html(metrics: Mapping[str, Any]) -> list[str]:
    rows = stage_details(metrics)
    if not rows:
        return []
    items = "".join(
        f"<tr><td>{escape(name)}</td><td>"
        + "; ".join(f"{escape(k)}: {escape(v)}" for k, v in pairs) + "</td></tr>"
        for name, pairs in rows)
    return ["<h2>Stage details</h2>",
            f"<table><thead><tr><th>Stage</th><th>Reported</th></tr></thead>"
            f"<tbody>{items}</tbody></table>"]


def render_html(metrics: Mapping[str, Any], *, charts: Mapping[str, bytes] | None = None) -> str:
    """The full page as a string. Pass `charts` (from charts.render_charts) to reuse PNGs already
    drawn, e.g. for the Markdown report; otherwise they are drawn here."""
    if charts is None:
        charts = render_charts(metrics)
    title = str(metrics.get("title") or "slimkit report")
    figures = []
    for name, png in charts.items():
        caption = CAPTIONS.get(name, name)
        data = base64.b64encode(png).decode("ascii")
        figures.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body><main>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{escape(_meta_line(metrics))}</p>',
        f'<p class="summary">{escape(summary(metrics))}</p>',
        *_tables_html(metrics),
        *(["<h2>Charts</h2>", *figures] if figures else []),
        *_details_html(metrics),
        "</main></body>",
        "</html>",
        "",
    ])
