"""``al-connector demo``: the command's options here, the demo itself in
``connector.devtools.demo``, imported only when the command runs (devtools are never
imported by production modules)."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click


@click.command()
@click.option("--rounds", default=4, show_default=True, help="Rounds after the cold start.")
@click.option("--batch-size", default=20, show_default=True)
@click.option("--validation-size", default=100, show_default=True)
@click.option("--strategy", default="badge", show_default=True)
@click.option("--images", default=600, show_default=True, help="Digits in the pool.")
@click.option("--skip-rate", default=0.05, show_default=True, help="Tasks the annotator skips.")
@click.option("--delay", default=0.05, show_default=True, help="Seconds per annotation.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the pool, state and reports go (default: a temp folder).",
)
@click.option(
    "--label-studio-bin",
    type=click.Path(path_type=Path),
    default=None,
    help="The label-studio executable (make demo passes .venv-ls/bin/label-studio).",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="Leave the servers up at the end and print the URL and login.",
)
@click.option("--verbose", is_flag=True, help="Show the daemon's log, not only the table.")
def demo_cmd(**options: Any) -> None:
    """Run the loop end to end on a local Label Studio and S3 server with digits."""
    from connector.devtools.demo import run_demo

    # The options above are run_demo's keyword arguments, named and typed there.
    try:
        run_demo(**options)
    except KeyboardInterrupt:  # before the rounds: the servers started so far are stopped
        click.echo("\nstopped by Ctrl-C", err=True)
        # A server interrupted while it started is stopped by the exit handler it
        # registered (``devtools.s3_server``, ``labelstudio_server``): run them, then exit
        # with os._exit. With sys.exit(130), one demo in ten stopped this early died by
        # SIGINT (-2) instead (a Ctrl-C-delay sweep; the cause inside CPython not found).
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(130)
