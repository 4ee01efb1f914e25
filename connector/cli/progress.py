"""Progress of long phases (training steps, pool scoring, pushes) for ``run``: rich bars
on a terminal; elsewhere nothing, since the engine logs one line per phase."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def terminal_progress(
    console: Console | None = None,
) -> tuple[Any, Callable[[str, int, int], None]] | None:
    """``(rich Progress to start and stop, callback)`` on a terminal, else None."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        return None
    bars = Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(what: str, done: int, total: int) -> None:
        if what not in tasks or (done <= 1 and bars.tasks[tasks[what]].finished):
            tasks[what] = bars.add_task(what, total=total or None)
        bars.update(tasks[what], completed=done, total=total or None)

    return bars, update
