"""Admin commands on pool items (``items include|exclude|requeue|show``), the labeled set
(``export``) and the journal of admin commands (``audit``).

Like ``round ...``: a changing command is checked, then journaled for the daemon; the
reading ones read the state db.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import click

from connector.cli.admin import fail, open_state, rounds_admin, submit
from connector.cli.main import _load, config_option
from connector.contracts.errors import BadCommand
from connector.settings import Settings
from connector.state import StateDB

keys_argument = click.argument("keys", nargs=-1)
from_file_option = click.option(
    "--from-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A file of keys, one a line (# starts a comment).",
)


def _keys(keys: tuple[str, ...], from_file: Path | None) -> list[str]:
    text = from_file.read_text() if from_file is not None else None
    keys_read: list[str] = rounds_admin().read_keys(
        keys, str(from_file) if from_file else None, text
    )
    return keys_read


@click.group("items")
def items_group() -> None:
    """Steer single pool items: force them in, keep them out, re-send their tasks."""


@items_group.command()
@config_option
@keys_argument
@from_file_option
def include(config_path: Path | None, keys: tuple[str, ...], from_file: Path | None) -> None:
    """Put items into the next batch, ahead of the strategy's picks."""
    submit(config_path, lambda s, st: rounds_admin().check_include(st, _keys(keys, from_file)))


@items_group.command()
@config_option
@keys_argument
@from_file_option
def exclude(config_path: Path | None, keys: tuple[str, ...], from_file: Path | None) -> None:
    """Never select these items (junk, duplicates, out of scope)."""
    submit(config_path, lambda s, st: rounds_admin().check_exclude(st, _keys(keys, from_file)))


@items_group.command()
@config_option
@keys_argument
@from_file_option
@click.option("--stalled", is_flag=True, help="Every item whose task is open too long.")
@click.option("--older-than", default="2d", show_default=True, help="With --stalled: 2d, 12h…")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def requeue(
    config_path: Path | None,
    keys: tuple[str, ...],
    from_file: Path | None,
    stalled: bool,
    older_than: str,
    yes: bool,
) -> None:
    """Re-send items on purpose: each open task is deleted and a new one pushed in the
    current round, served after its other open tasks, with an item_requeued alert."""

    def check(settings: Settings, state: StateDB) -> Any:
        admin = rounds_admin()
        if stalled:
            if keys or from_file:
                raise BadCommand("give keys or --stalled, not both")
            return admin.check_requeue(state, admin.stalled_keys(state, older_than))
        return admin.check_requeue(state, _keys(keys, from_file))

    submit(config_path, check, confirm=True, yes=yes)


@items_group.command("show")
@config_option
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_item(config_path: Path | None, key: str, as_json: bool) -> None:
    """One item's lifecycle: status, rounds, task ids, labels, annotator, history."""
    state = open_state(_load(config_path))
    item = state.item_history(key)
    if item is None:
        fail(BadCommand(f"{key!r} is not in the pool (keys are relative to storage.prefix)"))
        return
    if as_json:
        click.echo(json.dumps(item, indent=2, default=str))
        return
    click.echo(f"{key}: {item['status']}" + (f" ({item['reason']})" if item["reason"] else ""))
    for name in ("split", "round", "task_id", "label", "annotator", "requeue_count"):
        if item[name] is not None:
            click.echo(f"  {name}: {item[name]}")
    if item["pinned"]:
        click.echo("  pinned into the next batch")
    for p in item["pushes"]:
        click.echo(f"  pushed in round {p['round']} as task {p['task_id']} at {p['pushed_at']}")
    for e in item["events"]:
        extra = " ".join(
            str(v) for v in (e["label"], e["annotator"] and f"by {e['annotator']}") if v
        )
        click.echo(f"  {e['at']} {e['status']} {extra}".rstrip())


@click.command("export")
@config_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def export_cmd(config_path: Path | None, fmt: str, out: Path | None) -> None:
    """The labeled set: key, label, split (validation marked), round, annotator, labeled_at."""
    state = open_state(_load(config_path))
    rows = state.labeled_export()
    for row in rows:
        row["validation"] = row["split"] == "validation"
    if fmt == "json":
        text = json.dumps(rows, indent=2, default=str) + "\n"
    else:
        buf = io.StringIO()
        fields = ["key", "label", "split", "validation", "round", "annotator", "labeled_at"]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if out is None:
        click.echo(text, nl=False)
        return
    from connector.files import atomic_write_text

    atomic_write_text(out, text)
    click.echo(f"{len(rows)} labeled items written to {out}", err=True)


@click.command("audit")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def audit_cmd(config_path: Path | None, as_json: bool) -> None:
    """Every admin command: who (OS user), when, what, and whether it was applied."""
    state = open_state(_load(config_path))
    rows = state.commands()
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no admin commands yet")
    for r in rows:
        args = " ".join(f"{k}={v}" for k, v in sorted(r["args"].items()) if v not in (None, False))
        click.echo(
            f"#{r['id']} {r['created_at']} {r['user']}: {r['command']} {args}".rstrip()
            + f" -> {r['status']}"
            + (f" at {r['applied_at']}" if r["applied_at"] else "")
            + (f": {r['result']}" if r["result"] else "")
        )
