"""Alerts: the conditions the watch detects, the ones the jobs report, and delivery.

An alert is a row in the state db first, one open row per ongoing condition (its dedupe
key): while the condition holds, each watch sees it again (``last_seen``); when it
clears, the alert gets ``resolved_at``; if it comes back later, that is a new alert. The
kinds (``state.AlertKind``) and who raises them:

- ``task_stalled``, ``round_stalled``, ``throughput_drop``: ``detect`` (the watch job);
- ``task_missing``: ``check_missing_tasks`` (the watch job asks Label Studio which open
  tasks still exist: one id-range query per window of task ids, so its cost follows the
  open batch, not the project);
- ``item_requeued``: the admin's ``items requeue`` (``rounds.commands``), and a push of an
  item that is already queued or labeled, which is refused (``rounds.phases.push``);
- ``phase_failed``: the round engine when a round goes to FAILED; resolved when it resumes;
- ``service_unreachable``: ``service_failed`` / ``service_ok``, from the daemon's jobs,
  when Label Studio or the bucket still fails after the retry policy;
- ``label_unknown``: ``detect``, while annotations choose a label that is not a class
  (items ``invalid`` for it); resolved when no item is invalid for that reason;
- ``stopped``: the round engine when a stopping criterion fires (``state.stop_round``,
  in the same transaction as the stop); resolved by ``al-connector round resume``.

Delivery (``deliver``): every alert is logged, then sent to the configured notifiers
(``ops.notifiers``) once when raised, again every ``alerts.renotify_minutes`` while a
condition holds, and once more when it is resolved; a notifier that fails is retried on
the next watch, alone, and never stops the loop.
"""

from __future__ import annotations

import ast
import logging
import re
from datetime import timedelta
from typing import Any

from connector.contracts.ports import LabelingBackend
from connector.labelstudio.resolve import UNKNOWN_LABEL
from connector.ops.notifiers import Notifier, NotifyError, text_of
from connector.settings import AlertSettings
from connector.state import AlertKind, Phase, StateDB, iso, utcnow
from connector.state.alerts import MAX_LISTED

log = logging.getLogger(__name__)

#: Conditions worth repeating while they hold; the others are sent when raised and
#: when resolved.
RENOTIFY_KINDS = frozenset(
    {
        AlertKind.TASK_STALLED.value,
        AlertKind.ROUND_STALLED.value,
        AlertKind.PHASE_FAILED.value,
        AlertKind.SERVICE_UNREACHABLE.value,
        AlertKind.THROUGHPUT_DROP.value,
        AlertKind.LABEL_UNKNOWN.value,
    }
)
_QUOTED = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
SERVICES = {"label_studio": "Label Studio", "storage": "the bucket"}


def age_text(hours: float) -> str:
    """An age ``items requeue --older-than`` accepts (2d, 12h, 30m, 45s)."""
    if hours >= 1 and float(hours).is_integer():
        return f"{int(hours)}h"
    if hours * 60 >= 1 and float(hours * 60).is_integer():
        return f"{int(hours * 60)}m"
    return f"{max(1, int(hours * 3600))}s"


def detect(state: StateDB, settings: AlertSettings) -> int:
    """Raise or resolve the conditions the state db shows; returns how many are new."""
    now = utcnow()
    new = 0
    cutoff = iso(now - timedelta(hours=settings.task_stall_hours)) or ""
    stalled = state.stalled_tasks(cutoff)
    age = age_text(settings.task_stall_hours)
    keys = []
    for number, rows in stalled.items():
        keys.append(f"task-stall:r{number}")
        new += state.add_alert(
            AlertKind.TASK_STALLED.value,
            keys[-1],
            f"round {number}: {len(rows)} task(s) open for more than {age} (oldest queued "
            f"{rows[0][2]}); check that annotators have the project, or re-send them with "
            f"`al-connector items requeue --stalled --older-than {age}`",
            round_number=number,
            items=[r[0] for r in rows[:MAX_LISTED]],
            tasks=[r[1] for r in rows[:MAX_LISTED]],
        )
    state.resolve_alerts(AlertKind.TASK_STALLED.value, keep=keys)

    current = state.current_round()
    keys = []
    if current is not None and current.phase is Phase.WAIT:
        age_h = (now - current.phase_at).total_seconds() / 3600
        if age_h > settings.round_stall_hours:
            keys.append(f"round-stall:r{current.round}")
            new += state.add_alert(
                AlertKind.ROUND_STALLED.value,
                keys[-1],
                f"round {current.round} ({current.model_version}) has waited {age_h:.1f} h "
                "for labels; lower rounds.min_labeled_fraction or start the next round with "
                "`al-connector round start-now`",
                round_number=current.round,
            )
    state.resolve_alerts(AlertKind.ROUND_STALLED.value, keep=keys)
    if current is None or current.phase is not Phase.FAILED:
        state.resolve_alerts(AlertKind.PHASE_FAILED.value)
    new += _throughput(state, settings, current)
    new += _unknown_labels(state)
    _resolve_by_items(state)
    return new


def _unknown_labels(state: StateDB) -> int:
    """``label_unknown``: annotations whose choice is not a class (e.g. the label config
    was edited) leave their items ``invalid``, out of training, until a person acts."""
    rows = state.invalid_with_reason(UNKNOWN_LABEL)
    keys: list[str] = []
    new = 0
    if rows:
        labels = sorted({lab for _, _, r in rows if (lab := _quoted_label(r)) is not None})
        keys.append("label-unknown")
        new += state.add_alert(
            AlertKind.LABEL_UNKNOWN.value,
            keys[-1],
            f"{len(rows)} annotation(s) chose a label that is not a class "
            f"({', '.join(map(repr, labels)) or 'unreadable'}), e.g. on {rows[0][0]}; their "
            "items are left out of training. If it is a class, add it to labels.classes (or "
            "map it in [labels] map) and to the project's label config, restart al-connector, "
            "then press Update on each task listed; otherwise relabel those tasks in Label "
            "Studio with a known class. `al-connector items show KEY` shows an item's "
            "annotations",
            items=[r[0] for r in rows[:MAX_LISTED]],
            tasks=[r[1] for r in rows[:MAX_LISTED] if r[1] is not None],
        )
    state.resolve_alerts(AlertKind.LABEL_UNKNOWN.value, keep=keys)
    return new


def _quoted_label(reason: str) -> str | None:
    """The label an unknown-label reason quotes (``resolve.annotation_label`` writes it
    with ``repr``)."""
    match = _QUOTED.match(reason[len(UNKNOWN_LABEL) :].lstrip())
    if match is None:
        return None
    value = ast.literal_eval(match.group(1))
    return value if isinstance(value, str) else None


def _throughput(state: StateDB, settings: AlertSettings, current: Any) -> int:
    """``throughput_drop``: labels per hour over the recent window far below the rate of
    the baseline window before it, while the current round's batch is open."""
    keys: list[str] = []
    new = 0
    if current is not None and current.phase is Phase.WAIT:
        done, total = state.batch_progress(current.round)
        now = utcnow()
        window = settings.throughput_window_hours
        baseline = max(settings.throughput_baseline_hours, 2 * window)
        split = now - timedelta(hours=window)
        recent = state.labels_between(iso(split) or "", iso(now) or "")
        before = state.labels_between(iso(now - timedelta(hours=baseline)) or "", iso(split) or "")
        base_rate = before / (baseline - window)
        rate = recent / window
        if (
            done < total
            and before >= settings.throughput_min_labels
            and rate < settings.throughput_drop_fraction * base_rate
        ):
            keys.append(f"throughput:r{current.round}")
            new += state.add_alert(
                AlertKind.THROUGHPUT_DROP.value,
                keys[-1],
                f"round {current.round}: {rate:.1f} labels/h over the last {window:g} h against "
                f"{base_rate:.1f} labels/h before, with {total - done} of {total} tasks open; "
                "check that annotators can reach Label Studio and see the tasks "
                "(`al-connector status`)",
                round_number=current.round,
            )
    state.resolve_alerts(AlertKind.THROUGHPUT_DROP.value, keep=keys)
    return new


def _resolve_by_items(state: StateDB) -> None:
    """A re-queue clears when none of its items waits in a task any more; a missing task
    when none of its items is still missing (re-pushed, or excluded)."""
    for kind, waiting in (
        (AlertKind.ITEM_REQUEUED.value, "queued"),
        (AlertKind.TASK_MISSING.value, "missing"),
    ):
        done = []
        for alert in state.alerts():
            if alert["kind"] != kind:
                continue
            statuses = state.statuses(alert["items"])
            if waiting not in statuses.values():
                done.append(alert["dedupe_key"])
        if done:
            state.resolve_alerts(kind, keys=done)


def check_missing_tasks(state: StateDB, labeling: LabelingBackend) -> dict[int, list[str]]:
    """Queued items whose task was deleted in Label Studio become ``missing`` (back in
    the pool, out of the batch) with a ``task_missing`` alert. Returns round -> items."""
    queued = state.queued_tasks()
    if not queued:
        return {}
    gone = labeling.missing_tasks(queued)
    if not gone:
        return {}
    found = state.mark_missing(
        gone,
        "Nothing to do unless they were deleted on purpose: then keep them out with "
        "`al-connector items exclude KEY`",
    )
    for number, items in found.items():
        log.warning("round %d: %d task(s) deleted in Label Studio: %s", number, len(items), items)
    return found


def service_failed(state: StateDB, service: str, error: str) -> bool:
    """``service_unreachable``: a call to ``service`` failed after the retry policy."""
    name = SERVICES[service]
    fix = (
        "check label_studio.url and that the server is up (`al-connector check`)"
        if service == "label_studio"
        else "check storage.endpoint_url, the bucket and the network (`al-connector check`)"
    )
    return state.add_alert(
        AlertKind.SERVICE_UNREACHABLE.value,
        f"unreachable:{service}",
        f"{name} is unreachable after retries ({error[:300]}); {fix}",
        severity="error",
    )


def service_ok(state: StateDB, service: str) -> int:
    return state.resolve_alerts(
        AlertKind.SERVICE_UNREACHABLE.value, keys=[f"unreachable:{service}"]
    )


def deliver(state: StateDB, notifiers: list[Notifier], settings: AlertSettings) -> int:
    """Log and send what is owed (new, due again, resolved, or a notifier to retry);
    returns how many alerts went out. A failing notifier is logged and retried later."""
    cutoff = iso(utcnow() - timedelta(minutes=settings.renotify_minutes)) or ""
    sent = 0
    for alert in state.alerts_to_notify(cutoff, RENOTIFY_KINDS):
        retry_only = set(alert["retry_notifiers"])
        owed = not retry_only or alert["notify_count"] == 0 or _due_again(alert, cutoff)
        targets = notifiers if owed else [n for n in notifiers if n.name in retry_only]
        if owed:
            level = logging.ERROR if alert["severity"] == "error" else logging.WARNING
            log.log(level, "ALERT %s", text_of(alert))
        failed = []
        for notifier in targets:
            try:
                notifier.send(alert)
            except NotifyError as exc:
                failed.append(notifier.name)
                log.warning(
                    "alert %d not delivered (%s); retried on the next watch", alert["id"], exc
                )
        resolved = alert["resolved_at"] is not None
        state.mark_notified(int(alert["id"]), sent=owed, resolved=resolved, retry=failed)
        sent += owed
    return sent


def _due_again(alert: dict[str, Any], cutoff: str) -> bool:
    if alert["resolved_at"] is not None:
        return alert["resolve_sent_at"] is None
    return alert["kind"] in RENOTIFY_KINDS and (alert["sent_at"] or "") < cutoff
