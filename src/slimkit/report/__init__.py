"""Reports of a run: HTML page, Markdown page and chart PNGs built from its metrics dict.

Light to import: matplotlib (the `report` extra) loads only when a chart is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..rundir import write_atomic
from .charts import render_charts
from .headline import headline, summary
from .html import render_html
from .markdown import render_markdown
from .stage_tables import speed_table, stages_table
from .table import stage_rows
from .units import format_bytes

__all__ = ["format_bytes", "headline", "render_charts", "render_html", "render_markdown",
           "speed_table", "stage_rows", "stages_table", "summary", "write_report"]


def write_report(run_dir: str | os.PathLike[str], metrics: Mapping[str, Any]) -> dict[str, Path]:
    """Write report.html, report.md and charts/*.png into `run_dir`; returns the written paths
    keyed by their path relative to run_dir ("report.html", "charts/quality.png", ...)."""
    root = Path(run_dir)
    charts = render_charts(metrics)  # drawn once, shared by both pages
    text, files = render_markdown(metrics, "charts", charts=charts)
    page = render_html(metrics, charts=charts)
    written: dict[str, Path] = {}
    # Charts first, so report.md never links to a file that is not there yet.
    for rel, png in files.items():
        write_atomic(root / rel, png)
        written[rel] = root / rel
    for rel, data in (("report.md", text), ("report.html", page)):
        write_atomic(root / rel, data.encode("utf-8"))
        written[rel] = root / rel
    return written
