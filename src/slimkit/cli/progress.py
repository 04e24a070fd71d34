"""Progress bars for the terminal, handed to the library through Context.progress."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")
console = Console(stderr=True)
if not console.is_terminal:  # logs and CI: wide enough that stage names are not cut
    console.width = max(console.width, 140)


def rich_progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    columns = (TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        yield from bar.track(items, total=total, description=desc)
