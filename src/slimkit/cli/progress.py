"""The terminal: progress bars handed to the library through Context.progress, a console for
what the user reads, and where each goes (results to stdout, progress and logs to stderr; with
--json, human text to stderr so stdout holds only the result object; with -q, only errors)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")
console = Console(stderr=True)  # progress, stage lines, notes
results = Console()  # tables and summaries the user asked for
for _c in (console, results):
    if not _c.is_terminal:  # logs and CI: wide enough that stage names are not cut
        _c.width = max(_c.width, 140)


def configure(*, quiet: bool = False, json_mode: bool = False) -> None:
    """-q silences both consoles; --json moves the human results to stderr."""
    console.quiet = results.quiet = quiet
    results.stderr = json_mode  # rich picks sys.stdout/sys.stderr at each write


def emit_json(data: Any) -> None:
    """The result object of a command, one JSON document on stdout."""
    sys.stdout.write(json.dumps(_finite(data), default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(data: Any) -> Any:
    """NaN and infinities as null: JSON has no literal for them."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def rich_progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    if console.quiet:
        yield from items
        return
    columns = (TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        yield from bar.track(items, total=total, description=desc)
