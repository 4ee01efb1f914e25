"""Queries about alerts: one open row per ongoing condition (its dedupe key), seen again
while it holds, resolved when it clears, and the notifier bookkeeping; and the item
changes an alert comes with (a task deleted by hand, a re-push refused)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence
from enum import Enum
from typing import Any

from connector.state.base import Database
from connector.state.schema import DONE_STATUSES, iso, utcnow


class AlertKind(str, Enum):
    ITEM_REQUEUED = "item_requeued"
    TASK_MISSING = "task_missing"
    TASK_STALLED = "task_stalled"
    ROUND_STALLED = "round_stalled"
    PHASE_FAILED = "phase_failed"
    SERVICE_UNREACHABLE = "service_unreachable"
    THROUGHPUT_DROP = "throughput_drop"
    STOPPED = "stopped"
    LABEL_UNKNOWN = "label_unknown"


#: Statuses an item may be pushed from; any other push is an accidental re-queue.
PUSHABLE = ("discovered", "missing")
#: How many item ids an alert names (the count is in its message).
MAX_LISTED = 100


def alert_dict(row: sqlite3.Row) -> dict[str, Any]:
    """An alert as people and webhooks see it (``first_seen`` is when it was raised)."""
    out = dict(row)
    out["items"] = json.loads(out.get("items") or "[]")
    out["tasks"] = json.loads(out.get("tasks") or "[]")
    out["retry_notifiers"] = json.loads(out.get("retry_notifiers") or "[]")
    out["first_seen"] = out.pop("created_at")
    return out


class AlertQueries(Database):
    # ------------------------------------------------------------- conditions
    def stalled_tasks(self, queued_before: str) -> dict[int, list[tuple[str, int, str]]]:
        """Round -> ``(item_id, task_id, queued_at)`` of tasks queued before the cutoff,
        oldest first."""
        out: dict[int, list[tuple[str, int, str]]] = {}
        for r in self.query(
            "SELECT round, item_id, task_id, queued_at FROM items WHERE status = 'queued' "
            "AND queued_at < ? ORDER BY queued_at",
            (queued_before,),
        ):
            out.setdefault(int(r["round"]), []).append(
                (r["item_id"], int(r["task_id"] or 0), r["queued_at"])
            )
        return out

    def queued_tasks(self) -> dict[int, str]:
        """``task_id -> item_id`` of every queued item (the open tasks, all rounds)."""
        rows = self.query(
            "SELECT item_id, task_id FROM items WHERE status = 'queued' AND task_id IS NOT NULL"
        )
        return {int(r["task_id"]): r["item_id"] for r in rows}

    def labels_between(self, start: str, end: str) -> int:
        """Labels ingested in ``[start, end)`` (history rows; a re-label counts again)."""
        row = self.query(
            "SELECT COUNT(*) AS n FROM label_events WHERE status = 'labeled' AND at >= ? "
            "AND at < ?",
            (start, end),
        )[0]
        return int(row["n"])

    # ------------------------------------------------------------------- alerts
    def add_alert(
        self,
        kind: str,
        dedupe_key: str,
        message: str,
        *,
        severity: str = "warning",
        item_id: str | None = None,
        round_number: int | None = None,
        items: Sequence[str] | None = None,
        tasks: Sequence[int] | None = None,
    ) -> bool:
        """Raise an alert, or see its open one again (same ``dedupe_key``); True if new."""
        with self.tx() as c:
            return self._insert_alert(
                c,
                kind,
                dedupe_key,
                message,
                severity=severity,
                item_id=item_id,
                round_number=round_number,
                at=iso(utcnow()),
                items=items,
                tasks=tasks,
            )

    def resolve_alerts(
        self, kind: str, *, keep: Collection[str] = (), keys: Collection[str] | None = None
    ) -> int:
        """Resolve the open alerts of ``kind`` (only ``keys`` if given) whose key is not
        in ``keep``: their condition cleared. Returns how many."""
        now = iso(utcnow())
        rows = self.query(
            "SELECT id, dedupe_key FROM alerts WHERE kind = ? AND resolved_at IS NULL", (kind,)
        )
        ids = [
            r["id"]
            for r in rows
            if r["dedupe_key"] not in keep and (keys is None or r["dedupe_key"] in keys)
        ]
        with self.tx() as c:
            for alert_id in ids:
                c.execute("UPDATE alerts SET resolved_at = ? WHERE id = ?", (now, alert_id))
        return len(ids)

    def alerts(self, *, include_resolved: bool = False) -> list[dict[str, Any]]:
        """Open alerts (all with ``include_resolved``), newest first."""
        where = "" if include_resolved else "WHERE resolved_at IS NULL "
        return [alert_dict(r) for r in self.query(f"SELECT * FROM alerts {where}ORDER BY id DESC")]

    def unsent_alerts(self) -> list[sqlite3.Row]:
        """Alerts no notifier has had yet, or that a notifier still owes."""
        return self.query(
            "SELECT * FROM alerts WHERE notify_count = 0 OR retry_notifiers != '[]' ORDER BY id"
        )

    def open_alerts(self, limit: int = 10) -> tuple[dict[str, int], list[sqlite3.Row]]:
        """Open alerts by kind, and the ``limit`` newest open ones, for ``status``."""
        newest = self.query(
            "SELECT * FROM alerts WHERE resolved_at IS NULL ORDER BY id DESC LIMIT ?", (limit,)
        )
        return self.open_alert_counts(), newest

    def open_alert_counts(self) -> dict[str, int]:
        rows = self.query(
            "SELECT kind, COUNT(*) AS n FROM alerts WHERE resolved_at IS NULL GROUP BY kind"
        )
        return {r["kind"]: int(r["n"]) for r in rows}

    def alerts_to_notify(
        self, renotify_before: str, renotify_kinds: Collection[str]
    ) -> list[dict[str, Any]]:
        """Alerts a notifier owes a message: never sent; open, re-notifiable and last sent
        before the cutoff; resolved since their last message; or a notifier to retry."""
        kinds = list(renotify_kinds)
        marks = ",".join("?" * len(kinds)) or "''"
        rows = self.query(
            "SELECT * FROM alerts WHERE notify_count = 0 "
            "OR (resolved_at IS NULL AND sent_at < ? AND kind IN (" + marks + ")) "
            "OR (resolved_at IS NOT NULL AND resolve_sent_at IS NULL) "
            "OR retry_notifiers != '[]' ORDER BY id",
            (renotify_before, *kinds),
        )
        return [alert_dict(r) for r in rows]

    def mark_notified(self, alert_id: int, *, sent: bool, resolved: bool, retry: list[str]) -> None:
        """Record a notification round of an alert: ``sent`` when its message went out (to
        the notifiers that answered), ``retry`` the notifiers that failed."""
        now = iso(utcnow())
        with self.tx() as c:
            if sent:
                c.execute(
                    "UPDATE alerts SET sent_at = ?, notify_count = notify_count + 1 WHERE id = ?",
                    (now, alert_id),
                )
                if resolved:
                    c.execute("UPDATE alerts SET resolve_sent_at = ? WHERE id = ?", (now, alert_id))
            c.execute(
                "UPDATE alerts SET retry_notifiers = ? WHERE id = ?", (json.dumps(retry), alert_id)
            )

    # -------------------------------------------------------- with item changes
    def mark_missing(self, task_ids: Collection[int], fix: str) -> dict[int, list[str]]:
        """Queued items whose task is gone from Label Studio become ``missing``: out of
        their round's batch (the push is void) and back among the candidates. One
        ``task_missing`` alert per round, its items accumulated. Returns round -> items."""
        now = iso(utcnow())
        by_round: dict[int, list[tuple[str, int]]] = {}
        with self.tx() as c:
            for task_id in sorted(task_ids):
                row = c.execute(
                    "SELECT item_id, round FROM items WHERE task_id = ? AND status = 'queued'",
                    (task_id,),
                ).fetchone()
                if row is None:
                    continue
                item, number = row["item_id"], int(row["round"])
                c.execute(
                    "UPDATE items SET status = 'missing', task_id = NULL, queued_at = NULL, "
                    "updated_at = ? WHERE item_id = ?",
                    (now, item),
                )
                c.execute("DELETE FROM pushes WHERE round = ? AND item_id = ?", (number, item))
                why = f"task {task_id} was deleted in Label Studio"
                self._item_event(c, item, "missing", now, task_id=task_id, reason=why)
                by_round.setdefault(number, []).append((item, task_id))
            for number, found in by_round.items():
                key = f"task-missing:r{number}"
                old = c.execute(
                    "SELECT items, tasks FROM alerts WHERE dedupe_key = ? AND resolved_at IS NULL",
                    (key,),
                ).fetchone()
                items = json.loads(old["items"]) if old else []
                tasks = json.loads(old["tasks"]) if old else []
                items += [i for i, _ in found]
                tasks += [t for _, t in found]
                self._insert_alert(
                    c,
                    AlertKind.TASK_MISSING.value,
                    key,
                    f"round {number}: {len(items)} queued task(s) were deleted in Label "
                    f"Studio (e.g. task {tasks[0]}, item {items[0]}); the items are back in "
                    f"the pool and no longer count against the batch. {fix}",
                    severity="warning",
                    item_id=None,
                    round_number=number,
                    at=now,
                    items=items[:MAX_LISTED],
                    tasks=tasks[:MAX_LISTED],
                )
        return {n: [i for i, _ in found] for n, found in by_round.items()}

    def refuse_repush(self, number: int, item_ids: Sequence[str], fix: str) -> list[str]:
        """Of items about to be pushed in round ``number``, those already queued or done
        (an accidental re-queue): refused, with one ``item_requeued`` alert. Returns them."""
        statuses = self.column_by_item("status", item_ids)
        refused = [i for i in item_ids if statuses.get(i, "discovered") not in PUSHABLE]
        if not refused:
            return []
        done = [i for i in refused if statuses[i] in DONE_STATUSES]
        self.add_alert(
            AlertKind.ITEM_REQUEUED.value,
            f"repush-refused:r{number}",
            f"round {number}: push refused for {len(refused)} item(s) that are already "
            f"queued or labeled ({len(done)} labeled; e.g. {refused[0]}): an item is re-queued "
            f"only on purpose. {fix}",
            severity="error",
            round_number=number,
            items=refused[:MAX_LISTED],
        )
        return refused
