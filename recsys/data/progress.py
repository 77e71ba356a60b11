"""Rich progress for row-streaming jobs (rows done and rows/s), quiet when not on a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

_console = Console(stderr=True)


@contextlib.contextmanager
def row_progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a live bar on a terminal, nothing in logs or CI."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    columns = [
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed:,.0f} rows"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=_console, transient=True) as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)
            speed = progress.tasks[0].speed
            progress.update(task, rate=f"{speed:,.0f} rows/s" if speed else "")

        yield advance
