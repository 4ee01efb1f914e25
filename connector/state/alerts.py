"""Queries about alerts: recorded once per condition, then delivered."""

from __future__ import annotations

import sqlite3

from connector.state.base import Database
from connector.state.schema import iso, utcnow


class AlertQueries(Database):
    def stalled_tasks_by_round(self, queued_before: str) -> list[tuple[int, int, str]]:
        """``(round, open tasks, oldest queued_at)`` of tasks queued before the cutoff."""
        rows = self.query(
            "SELECT round, COUNT(*) AS n, MIN(queued_at) AS oldest FROM items "
            "WHERE status = 'queued' AND queued_at < ? GROUP BY round",
            (queued_before,),
        )
        return [(int(r["round"]), int(r["n"]), str(r["oldest"])) for r in rows]

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
    ) -> bool:
        """Record an alert once per ``dedupe_key``; True if it is new."""
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
            )

    def open_alerts(self, limit: int = 10) -> tuple[dict[str, int], list[sqlite3.Row]]:
        """Alerts by kind, and the ``limit`` newest, for ``status``. Every recorded alert
        counts as open until alerts can be resolved."""
        kinds = {
            str(r["kind"]): int(r["n"])
            for r in self.query("SELECT kind, COUNT(*) AS n FROM alerts GROUP BY kind")
        }
        return kinds, self.query("SELECT * FROM alerts ORDER BY id DESC LIMIT ?", (limit,))

    def unsent_alerts(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM alerts WHERE sent_at IS NULL ORDER BY id")

    def mark_alert_sent(self, alert_id: int) -> None:
        with self.tx() as c:
            c.execute("UPDATE alerts SET sent_at = ? WHERE id = ?", (iso(utcnow()), alert_id))
