"""Admin commands that steer rounds: ``round start-now|pause|resume|skip|set|rollback``
and ``rounds list|show``.

A command that changes something is checked first (``rounds.admin``: a bad input exits
1 with the fix and changes nothing), then journaled in the state db; the daemon applies
it at its next safe point, or when it next starts. Reading commands read the db.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click

from connector.cli.main import _load, config_option, no_state
from connector.contracts.errors import BadCommand
from connector.settings import Settings
from connector.state import StateDB

if TYPE_CHECKING:
    from connector.rounds.admin import Checked


def rounds_admin() -> ModuleType:
    """``connector.rounds.admin``, imported when a command runs: a cold ``--help`` stays
    fast (the round code loads numpy and the strategies)."""
    from connector.rounds import admin

    return admin


def open_state(settings: Settings, *, create: bool = False) -> StateDB:
    """The state db; without ``create``, a missing one is an error naming the fix."""
    path = settings.db_path()
    if not create and not path.exists():
        click.echo(f"error: {no_state(path)}", err=True)
        sys.exit(1)
    return StateDB(path)


def fail(exc: BadCommand) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


def submit(
    config_path: Path | None,
    check: Callable[[Settings, StateDB], Checked],
    *,
    create: bool = False,
    confirm: bool = False,
    yes: bool = False,
) -> None:
    """Check a command, confirm it if destructive, journal it, and say what happens."""
    settings = _load(config_path)
    state = open_state(settings, create=create)
    try:
        checked = check(settings, state)
    except BadCommand as exc:
        fail(exc)
        return
    click.echo(f"{checked.command}: {checked.says}")
    for note in checked.notes:
        click.echo(f"note: {note}")
    if confirm and not yes:
        click.confirm("Go on?", abort=True)
    admin = rounds_admin()
    user = admin.current_user()
    number = admin.journal(state, checked, user)
    click.echo(
        f"journaled as command #{number} by {user}; the daemon applies it at its next safe "
        "point (`al-connector audit` shows when)"
    )


# ------------------------------------------------------------------ round
@click.group("round")
def round_group() -> None:
    """Steer rounds by hand: start, pause, resume, skip, change the plan, roll back."""


@round_group.command("start-now")
@config_option
def start_now(config_path: Path | None) -> None:
    """Start the next round now, without waiting for the batch to be labeled."""
    submit(config_path, lambda s, st: rounds_admin().check_start_now(st), create=True)


@round_group.command()
@config_option
def pause(config_path: Path | None) -> None:
    """Start no new round until `round resume` (labels are still ingested)."""
    submit(config_path, lambda s, st: rounds_admin().check_pause(st), create=True)


@round_group.command()
@config_option
def resume(config_path: Path | None) -> None:
    """Let rounds start again on their triggers."""
    submit(config_path, lambda s, st: rounds_admin().check_resume(st), create=True)


@round_group.command()
@config_option
def skip(config_path: Path | None) -> None:
    """Close the current round without waiting for its batch; the next one starts."""
    submit(config_path, lambda s, st: rounds_admin().check_skip(st))


@round_group.command("set")
@config_option
@click.option("--strategy", default=None, help="Strategy name, e.g. entropy, bald, typiclust.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A strategy parameter.")
@click.option("--batch-size", type=int, default=None, help="Items per batch (>= 1).")
@click.option("--persist", is_flag=True, help="From now on, not only for the next round.")
def set_cmd(
    config_path: Path | None,
    strategy: str | None,
    params: tuple[str, ...],
    batch_size: int | None,
    persist: bool,
) -> None:
    """Change the strategy, its parameters or the batch size of the next round (or of
    every round from now on with --persist)."""

    def check(settings: Settings, state: StateDB) -> Checked:
        admin = rounds_admin()
        return admin.check_set(
            settings,
            state,
            strategy=strategy,
            params=admin.parse_params(params),
            batch_size=batch_size,
            persist=persist,
        )

    submit(config_path, check, create=True)


@round_group.command()
@config_option
@click.argument("number", type=int)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def rollback(config_path: Path | None, number: int, yes: bool) -> None:
    """Withdraw round NUMBER's tasks that nobody annotated: deleted in Label Studio, their
    items back in the pool. Annotations already made are kept, as are validation tasks."""
    submit(
        config_path, lambda s, st: rounds_admin().check_rollback(st, number), confirm=True, yes=yes
    )


# ------------------------------------------------------------------ rounds
@click.group("rounds")
def rounds_group() -> None:
    """Look at rounds: their plan, batch, phase durations, metrics and reports."""


def _describe_all(config_path: Path | None) -> tuple[Settings, StateDB, list[dict[str, Any]]]:
    from connector.rounds.report import describe_round

    settings = _load(config_path)
    state = open_state(settings)
    rows = [describe_round(state, r, settings.rounds_dir()) for r in state.rounds()]
    return settings, state, rows


@rounds_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_rounds(config_path: Path | None, as_json: bool) -> None:
    """Every round: phase, strategy, batch, validation accuracy, time spent."""
    _, _, rows = _describe_all(config_path)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no rounds yet")
        return
    click.echo(f"{'round':>5}  {'phase':<6} {'strategy':<14} {'batch':>9}  {'val acc':>7}  time")
    for r in rows:
        acc = r["validation_accuracy"]
        spent = sum(v for k, v in r["phase_seconds"].items() if k != "WAIT")
        click.echo(
            f"{r['round']:>5}  {r['phase']:<6} {r['strategy']:<14} "
            f"{r['batch_done']:>4}/{r['batch_total']:<4}  {'-' if acc is None else f'{acc:.3f}':>7}"
            f"  {spent:.1f} s work"
            + (
                f", {r['phase_seconds']['WAIT']:.0f} s waiting"
                if "WAIT" in r["phase_seconds"]
                else ""
            )
        )


@rounds_group.command("show")
@config_option
@click.argument("number", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_round(config_path: Path | None, number: int, as_json: bool) -> None:
    """One round in full: plan, batch, phase durations, metrics, report."""
    _, _, rows = _describe_all(config_path)
    match = [r for r in rows if r["round"] == number]
    if not match:
        have = f"rounds {rows[0]['round']}..{rows[-1]['round']}" if rows else "no rounds yet"
        fail(BadCommand(f"round {number} does not exist ({have})"))
        return
    r = match[0]
    if as_json:
        click.echo(json.dumps(r, indent=2, default=str))
        return
    params = "".join(f" {k}={v}" for k, v in sorted(r["params"].items()))
    click.echo(f"round {r['round']}: {r['phase']} (started by {r['trigger']} at {r['started_at']})")
    click.echo(f"  strategy: {r['strategy']}{params}, batch size {r['batch_size']}")
    click.echo(f"  model version: {r['model_version'] or '-'}")
    click.echo(f"  batch: {r['batch_done']}/{r['batch_total']} done")
    if r["validation_accuracy"] is not None:
        click.echo(f"  validation accuracy: {r['validation_accuracy']:.3f}")
    times = ", ".join(f"{k} {v:.1f} s" for k, v in r["phase_seconds"].items())
    click.echo(f"  phases: {times or '-'}")
    for key in ("n_train", "labels", "pushed", "rolled_back", "skipped"):
        if key in r["metrics"]:
            click.echo(f"  {key}: {r['metrics'][key]}")
    if r["error"]:
        click.echo(f"  error: {r['error']}")
    click.echo(f"  report: {r['report']}")
