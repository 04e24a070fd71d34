"""render_markdown: the headline, the stage and speed tables as GitHub Markdown tables, the extras
folded in <details>, plus links to chart PNG files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .charts import CAPTIONS, render_charts
from .details import stage_details
from .headline import headline
from .speed import speed_note
from .stage_tables import MARK, Table, extra_tables, regression_lines, speed_table, stages_table
from .units import UNIT_NOTE


def _cell(text: str) -> str:
    """Escape what would break a table row: pipes split cells and newlines end the row (a
    cell's second line joins the first after a middle dot)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " · ")


def _text(text: str) -> str:
    """Escape Markdown punctuation in free text (title, stage names) so it renders literally."""
    for ch in "\\`*_[]<>#|":
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def markdown_table(table: Table) -> str:
    # Text columns left-aligned, numbers right-aligned, as in the HTML table.
    align = [":---" if table.is_text(i) else "---:" for i in range(len(table.headers))]
    lines = [
        "| " + " | ".join(_cell(h) for h in table.headers) + " |",
        "| " + " | ".join(align) + " |",
    ]
    for i, cells in enumerate(table.cells):
        shown = [_cell(c) for c in cells]
        if i == table.baseline:
            shown[0] = f"**{shown[0]}**"
        lines.append("| " + " | ".join(shown) + " |")
    return "\n".join(lines)


def _headline_md(metrics: Mapping[str, Any]) -> list[str]:
    lines = []
    for item in headline(metrics):
        value = _text(item.value.replace("\n", "; "))
        detail = f" ({_text(item.detail)})" if item.detail else ""
        lines.append(f"- **{_text(item.label)}**: {value}{detail}")
    return lines


def render_markdown(
    metrics: Mapping[str, Any],
    chart_dir_name: str = "charts",
    *,
    charts: Mapping[str, bytes] | None = None,
) -> tuple[str, dict[str, bytes]]:
    """The report text and the PNG files it links to, keyed by path relative to the report
    (`<chart_dir_name>/<chart>.png`). Pass `charts` to reuse PNGs already drawn."""
    if charts is None:
        charts = render_charts(metrics)
    title = str(metrics.get("title") or "slimkit report")
    parts = [f"# {_text(title)}", "", *_headline_md(metrics), "",
             _text(f"{UNIT_NOTE} {speed_note(metrics)}"), "",
             "## Stages", "", markdown_table(stages_table(metrics)), ""]
    speed = speed_table(metrics)
    if speed is not None:
        parts += ["## Speed", "", markdown_table(speed), ""]
    flagged = regression_lines(metrics)
    if flagged:
        parts += ["## Regressions", ""]
        parts += [f"- {MARK} **{_text(name)}**: {_text(text)}" for name, text in flagged]
        parts.append("")
    parts += ["<details><summary>More numbers per stage</summary>", ""]
    for name, table in extra_tables(metrics):
        parts += [f"### {name}", "", markdown_table(table), ""]
    parts += ["</details>", ""]
    files: dict[str, bytes] = {}
    if charts:
        parts += ["## Charts", ""]
    for name, png in charts.items():
        rel = f"{chart_dir_name}/{name}.png"
        files[rel] = png
        parts += [f"![{CAPTIONS.get(name, name)}]({rel})", ""]
    details = stage_details(metrics)
    if details:
        parts += ["## Stage details", "", "| Stage | Reported |", "|---|---|"]
        parts += [f"| {_cell(name)} | {_cell('; '.join(f'{k}: {v}' for k, v in pairs))} |"
                  for name, pairs in details]
        parts.append("")
    return "\n".join(parts), files
