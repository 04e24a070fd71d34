"""render_html: one self-contained report page (inline CSS, charts as data: URIs, no network),
headline first, tables that fit a 1280 px window, the rest folded."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape
from typing import Any

from .charts import CAPTIONS, render_charts
from .details import stage_details
from .headline import headline
from .speed import speed_note
from .stage_tables import MARK, Table, extra_tables, regression_lines, speed_table, stages_table
from .units import UNIT_NOTE

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2933; background: #f7f8fa; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; background: #fff;
       box-sizing: border-box; }
h1 { font-size: 24px; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 18px; margin: 32px 0 10px; border-bottom: 1px solid #e3e7eb; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 8px; }
.meta, .note { color: #616e7c; font-size: 13px; margin: 0 0 12px; }
.summary { font-size: 16px; background: #eef4fb; border-left: 4px solid #2f6db5;
           padding: 10px 14px; margin: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; white-space: nowrap; }
th, td { padding: 6px 10px; border-bottom: 1px solid #e3e7eb; vertical-align: top; }
th { background: #f0f2f5; text-align: left; font-weight: 600; vertical-align: bottom;
     white-space: normal; min-width: 60px; }
th.group { text-align: center; border-bottom: 2px solid #c5ccd4; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.report td.txt { white-space: normal; overflow-wrap: anywhere; max-width: 320px; }
tr.baseline td { background: #f7f8fa; }
td .sub { display: block; font-size: 12px; color: #616e7c; font-weight: 400; }
td.good, td.good .sub { color: #1e7b34; font-weight: 600; }
td.bad, td.bad .sub { color: #b42318; font-weight: 600; }
td.noise .sub { color: #7b8794; font-style: italic; }
.headline { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr));
            gap: 10px; margin: 8px 0 14px; }
.card { border: 1px solid #e3e7eb; border-left: 4px solid #9aa5b1; border-radius: 4px;
        padding: 8px 12px; min-width: 0; }
.card.good { border-left-color: #1e7b34; }
.card.bad { border-left-color: #b42318; }
.card .label { font-size: 12px; color: #616e7c; text-transform: uppercase; letter-spacing: .03em; }
.card .value { font-size: 19px; font-weight: 650; line-height: 1.3; overflow-wrap: anywhere; }
.card .value span { display: block; }
.card.noise .value { color: #52606d; }
.card .detail { font-size: 12px; color: #616e7c; margin-top: 2px; overflow-wrap: anywhere; }
ul.regressions { color: #b42318; font-size: 14px; padding-left: 20px; }
details { margin: 18px 0; }
details > summary { cursor: pointer; font-weight: 600; font-size: 15px; }
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


def _cell(text: str) -> str:
    """First line as the value, further lines (a verdict, a note) small underneath."""
    first, *rest = text.split("\n")
    return escape(first) + "".join(f'<span class="sub">{escape(line)}</span>' for line in rest)


def table_html(table: Table, table_id: str = "") -> str:
    def cls(column: int) -> str:
        return "txt" if table.is_text(column) else "num"

    head = ""
    headers = table.headers
    if table.groups:
        head = "<tr>" + "".join(f'<th class="group" colspan="{span}">{escape(label)}</th>'
                                for label, span in table.groups) + "</tr>"
        headers = table.short_headers or headers
    head += "<tr>" + "".join(f'<th class="{cls(i)}">{escape(h)}</th>'
                             for i, h in enumerate(headers)) + "</tr>"
    body = []
    for i, (cells, tones) in enumerate(zip(table.cells, table.tones, strict=True)):
        row_class = ' class="baseline"' if i == table.baseline else ""
        tds = "".join(f'<td class="{cls(j)} {tone}">{_cell(text)}</td>'
                      for j, (text, tone) in enumerate(zip(cells, tones, strict=True)))
        body.append(f"<tr{row_class}>{tds}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return (f'<div class="scroll"><table class="report"{ident}><thead>{head}</thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _headline_html(metrics: Mapping[str, Any]) -> str:
    cards = "".join(
        f'<div class="card {item.tone}"><div class="label">{escape(item.label)}</div>'
        f'<div class="value">'
        + "".join(f"<span>{escape(line)}</span>" for line in item.value.split("\n"))
        + "</div>" + (f'<div class="detail">{escape(item.detail)}</div>' if item.detail else "")
        + "</div>"
        for item in headline(metrics))
    return f'<section class="headline" id="headline" aria-label="headline">{cards}</section>'


def _tables_html(metrics: Mapping[str, Any]) -> list[str]:
    parts = ["<h2>Stages</h2>", table_html(stages_table(metrics), "stages")]
    speed = speed_table(metrics)
    if speed is not None:
        parts += ["<h2>Speed</h2>", table_html(speed, "speed")]
    flagged = regression_lines(metrics)
    if flagged:
        items = "".join(f"<li>{MARK} <b>{escape(name)}</b>: {escape(text)}</li>"
                        for name, text in flagged)
        parts += ["<h2>Regressions</h2>", f'<ul class="regressions">{items}</ul>']
    extras = "".join(f"<h3>{escape(title)}</h3>{table_html(table)}"
                     for title, table in extra_tables(metrics))
    parts.append(f'<details id="more"><summary>More numbers per stage</summary>{extras}'
                 "</details>")
    return parts


def _details_html(metrics: Mapping[str, Any]) -> list[str]:
    rows = stage_details(metrics)
    if not rows:
        return []
    items = "".join(
        f'<tr><td class="txt">{escape(name)}</td><td class="txt">'
        + "; ".join(f"{escape(k)}: {escape(v)}" for k, v in pairs) + "</td></tr>"
        for name, pairs in rows)
    return ['<details id="stage-details"><summary>Stage details</summary>'
            '<table class="report"><thead><tr><th>Stage</th><th>Reported</th></tr></thead>'
            f"<tbody>{items}</tbody></table></details>"]


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
        _headline_html(metrics),
        f'<p class="note">{escape(UNIT_NOTE)} {escape(speed_note(metrics))}</p>',
        *_tables_html(metrics),
        *(["<h2>Charts</h2>", *figures] if figures else []),
        *_details_html(metrics),
        "</main></body>",
        "</html>",
        "",
    ])
