"""``al-connector alerts``: what the watch has raised, open ones first.

Reads the state db only (the daemon may be running or stopped); nothing is changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from connector.cli.admin import open_state
from connector.cli.main import _load, config_option


@click.group("alerts")
def alerts_group() -> None:
    """Alerts: re-queued items, deleted or stalled tasks, failed phases, outages."""


@alerts_group.command("list")
@config_option
@click.option("--all", "show_all", is_flag=True, help="Resolved alerts too.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(config_path: Path | None, show_all: bool, as_json: bool) -> None:
    """Open alerts, newest first (with --all, resolved ones too)."""
    state = open_state(_load(config_path))
    rows = state.alerts(include_resolved=show_all)
    if as_json:
        keep = ("retry_notifiers", "resolve_sent_at", "item_id")
        click.echo(
            json.dumps([{k: v for k, v in r.items() if k not in keep} for r in rows], indent=2)
        )
        return
    if not rows:
        click.echo("no open alerts" + ("" if show_all else " (--all shows resolved ones)"))
    for r in rows:
        where = f" round {r['round']}" if r["round"] is not None else ""
        state_text = f"resolved {r['resolved_at']}" if r["resolved_at"] else "open"
        click.echo(
            f"#{r['id']} {r['severity'].upper():<7} {r['kind']}{where} ({state_text}; first "
            f"seen {r['first_seen']}, last seen {r['last_seen']})\n    {r['message']}"
        )
        if r["items"]:
            more = f" (+{len(r['items']) - 5} more)" if len(r["items"]) > 5 else ""
            click.echo(f"    items: {', '.join(r['items'][:5])}{more}")
