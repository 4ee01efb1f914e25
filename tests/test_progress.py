"""``run``'s progress: rich bars on a terminal, nothing (the phase log lines) elsewhere."""

from __future__ import annotations

import io

from rich.console import Console

from connector.cli.progress import terminal_progress


def test_bars_on_a_terminal_only() -> None:
    assert terminal_progress(Console(file=io.StringIO())) is None
    out = io.StringIO()
    shown = terminal_progress(Console(file=out, force_terminal=True, width=80))
    assert shown is not None
    bars, update = shown
    bars.start()
    for done in (10, 20, 30):
        update("training", done, 30)
    update("scoring", 100, 500)
    bars.refresh()
    bars.stop()
    assert [(t.description, t.completed) for t in bars.tasks] == [
        ("training", 30),
        ("scoring", 100),
    ]
    assert "scoring" in out.getvalue()
