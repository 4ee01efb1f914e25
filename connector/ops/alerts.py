"""Stall detection (tasks open too long, a round waiting too long), and the notifiers
that deliver alerts. (``phase_failed`` is raised by the round engine when a round goes
to FAILED; ``item_requeued`` by the admin command that re-sends a task,
``rounds.commands``.)

Alerts are rows in the state db first (deduplicated by key), then delivered: always to
the log, and to a webhook when one is configured. A webhook that fails keeps the alert
unsent; the next watch run delivers it (Label Studio-style fire-once webhooks would lose
it).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

from connector.settings import AlertSettings
from connector.state import Phase, StateDB, utcnow

log = logging.getLogger(__name__)


def detect(state: StateDB, settings: AlertSettings) -> int:
    """Record alerts for stalled tasks and rounds; returns how many are new.

    (A phase that keeps failing is alerted by the round engine when the round goes to
    FAILED, with the error and the fix.)
    """
    now = utcnow()
    new = 0
    task_cutoff = (now - timedelta(hours=settings.task_stall_hours)).isoformat()
    rows = state.stalled_tasks_by_round(task_cutoff)
    for number, n_open, oldest in rows:
        key = f"task-stall:r{number}:{n_open}"
        new += state.add_alert(
            "task_stalled",
            key,
            f"round {number}: {n_open} task(s) open for more than "
            f"{settings.task_stall_hours:g} h (oldest queued {oldest}); check that "
            "annotators have the project, or re-send the tasks with "
            f"`al-connector items requeue --stalled --older-than {settings.task_stall_hours:g}h`",
            round_number=number,
        )
    current = state.current_round()
    if current is not None:
        age_h = (now - current.phase_at).total_seconds() / 3600
        if current.phase is Phase.WAIT and age_h > settings.round_stall_hours:
            new += state.add_alert(
                "round_stalled",
                f"round-stall:r{current.round}",
                f"round {current.round} ({current.model_version}) has waited {age_h:.0f} h for "
                "labels; lower rounds.min_labeled_fraction or start the next round with "
                "`al-connector round start-now`",
                round_number=current.round,
            )
    return new


def deliver(state: StateDB, webhook_url: str | None, timeout_s: float = 10.0) -> int:
    """Send unsent alerts to the log and the webhook; returns how many were delivered."""
    sent = 0
    for row in state.unsent_alerts():
        payload: dict[str, Any] = {
            "kind": row["kind"],
            "severity": row["severity"],
            "message": row["message"],
            "item_id": row["item_id"],
            "round": row["round"],
            "created_at": row["created_at"],
        }
        level = logging.ERROR if row["severity"] == "error" else logging.WARNING
        log.log(level, "ALERT %s: %s", row["kind"], row["message"])
        if webhook_url:
            try:
                _post(webhook_url, payload, timeout_s)
            except (OSError, urllib.error.URLError) as exc:
                log.warning("alert webhook failed (%s); will retry on the next watch", exc)
                return sent
        state.mark_alert_sent(int(row["id"]))
        sent += 1
    return sent


def _post(url: str, payload: dict[str, Any], timeout_s: float) -> None:
    body = json.dumps(payload).encode()
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        if resp.status >= 300:
            raise OSError(f"webhook answered HTTP {resp.status}")
