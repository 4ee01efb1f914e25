"""Queries for admin commands: the journal (the audit trail too), and the state changes
the daemon makes when it applies a command.

A command is journaled ``pending`` by the CLI, claimed (``applying``) by the daemon at
its next safe point, and ends ``applied`` or ``failed`` with a result a person can read.
Each state change below commits together with the command's new status, so a command is
either applied with its effect or still pending, never half of each.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from connector.state.base import Database
from connector.state.schema import iso, utcnow

#: Statuses of a journaled command.
PENDING, APPLYING, APPLIED, FAILED = "pending", "applying", "applied", "failed"


def _command(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "command": row["command"],
        "args": json.loads(row["args"]),
        "user": row["user"],
        "created_at": row["created_at"],
        "status": row["status"],
        "applied_at": row["applied_at"],
        "result": row["result"],
    }


class AdminQueries(Database):
    # ------------------------------------------------------------------ journal
    def journal_command(self, command: str, args: Mapping[str, Any], user: str) -> int:
        """Record a command for the daemon to apply; returns its id."""
        with self.tx() as c:
            cur = c.execute(
                "INSERT INTO admin_commands (command, args, user, created_at, status) "
                "VALUES (?, ?, ?, ?, 'pending')",
                (command, json.dumps(dict(args), sort_keys=True), user, iso(utcnow())),
            )
            return int(cur.lastrowid or 0)

    def commands(self, status: str | None = None) -> list[dict[str, Any]]:
        """Journaled commands in order, all or those with ``status``."""
        if status is None:
            rows = self.query("SELECT * FROM admin_commands ORDER BY id")
        else:
            rows = self.query(
                "SELECT * FROM admin_commands WHERE status = ? ORDER BY id", (status,)
            )
        return [_command(r) for r in rows]

    def command(self, command_id: int) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM admin_commands WHERE id = ?", (command_id,))
        return _command(rows[0]) if rows else None

    def claim_command(self, command_id: int) -> bool:
        """pending -> applying; False if someone else claimed it first."""
        with self.tx() as c:
            cur = c.execute(
                "UPDATE admin_commands SET status = 'applying' WHERE id = ? AND status = 'pending'",
                (command_id,),
            )
            return cur.rowcount == 1

    def release_command(self, command_id: int, why: str) -> None:
        """applying -> pending: a transient error; the next safe point tries again."""
        with self.tx() as c:
            c.execute(
                "UPDATE admin_commands SET status = 'pending', result = ? WHERE id = ?",
                (why, command_id),
            )

    def reset_applying(self) -> int:
        """At start-up: commands a stopped daemon was applying go back to pending."""
        with self.tx() as c:
            return c.execute(
                "UPDATE admin_commands SET status = 'pending' WHERE status = 'applying'"
            ).rowcount

    def _finish(self, c: sqlite3.Connection, command_id: int, status: str, result: str) -> None:
        c.execute(
            "UPDATE admin_commands SET status = ?, result = ?, applied_at = ? WHERE id = ?",
            (status, result, iso(utcnow()), command_id),
        )

    def finish_command(
        self,
        command_id: int,
        result: str,
        *,
        ok: bool = True,
        set_meta: Mapping[str, str] | None = None,
        delete_meta: Iterable[str] = (),
    ) -> None:
        """Mark a command applied (or failed), with the meta changes it makes, at once."""
        with self.tx() as c:
            for key, value in (set_meta or {}).items():
                self.set_meta(key, value, conn=c)
            for key in delete_meta:
                c.execute("DELETE FROM meta WHERE key = ?", (key,))
            self._finish(c, command_id, APPLIED if ok else FAILED, result)

    # ------------------------------------------------------------------ items
    def items_by_key(self, keys: Sequence[str]) -> dict[str, sqlite3.Row]:
        """The ``items`` rows of these keys (absent keys are not in the pool)."""
        sql = "SELECT * FROM items WHERE item_id IN ({marks})"
        rows = self.query_items(sql, list(dict.fromkeys(keys)))
        return {row["item_id"]: row for row in rows}

    def pin_items(self, command_id: int, keys: Sequence[str], result: str) -> int:
        """Pin items into the next batch, after those pinned before; an excluded item is
        taken back into the pool (the undo of an exclusion). Returns how many were pinned."""
        now = iso(utcnow())
        n = 0
        with self.tx() as c:
            seq = int(c.execute("SELECT COALESCE(MAX(pinned), 0) FROM items").fetchone()[0])
            for key in keys:
                seq += 1
                cur = c.execute(
                    "UPDATE items SET pinned = ?, status = 'discovered', reason = NULL, "
                    "updated_at = ? WHERE item_id = ? AND pinned = 0 "
                    "AND status IN ('discovered', 'excluded')",
                    (seq, now, key),
                )
                if cur.rowcount:
                    n += 1
                    self._item_event(c, key, "included", now, reason=f"command {command_id}")
            self._finish(c, command_id, APPLIED, result.format(n=n))
        return n

    def exclude_items(self, command_id: int, keys: Sequence[str], reason: str, result: str) -> int:
        """Candidates (discovered or missing) become ``excluded`` (never selected); returns
        how many."""
        now = iso(utcnow())
        n = 0
        with self.tx() as c:
            for key in keys:
                cur = c.execute(
                    "UPDATE items SET status = 'excluded', pinned = 0, reason = ?, "
                    "updated_at = ? WHERE item_id = ? AND status IN ('discovered', 'missing')",
                    (reason, now, key),
                )
                if cur.rowcount:
                    n += 1
                    self._item_event(c, key, "excluded", now, reason=reason)
            self._finish(c, command_id, APPLIED, result.format(n=n))
        return n

    def stalled_items(self, queued_before: str) -> list[str]:
        """Keys of items whose task has been open since before the cutoff."""
        rows = self.query(
            "SELECT item_id FROM items WHERE status = 'queued' AND queued_at < ? ORDER BY item_id",
            (queued_before,),
        )
        return [r["item_id"] for r in rows]

    # ------------------------------------------------------------------ rounds
    def skip_round(self, command_id: int, number: int, start_key: str, result: str) -> None:
        """Close a round without waiting for its batch: DONE, and the next one starts."""
        now = iso(utcnow())
        with self.tx() as c:
            self._merge_round_metrics(c, number, lambda _: {"skipped": True})
            c.execute(
                "UPDATE rounds SET phase = 'DONE', finished_at = ?, failed_phase = NULL, "
                "retry_at = NULL WHERE round = ?",
                (now, number),
            )
            self.set_meta(start_key, "1", conn=c)
            self._finish(c, command_id, APPLIED, result)

    def withdrawable(self, number: int) -> list[tuple[str, int]]:
        """``(item_id, task_id)`` of round ``number``'s training tasks nobody annotated (as
        far as the last poll knows): what a rollback withdraws."""
        rows = self.query(
            "SELECT i.item_id, i.task_id FROM pushes p JOIN items i ON i.item_id = p.item_id "
            "WHERE p.round = ? AND i.round = ? AND i.status = 'queued' AND i.split = 'train' "
            "AND i.task_id = p.task_id ORDER BY i.item_id",
            (number, number),
        )
        return [(r["item_id"], int(r["task_id"])) for r in rows]

    def withdraw_items(
        self, command_id: int, number: int, item_ids: Sequence[str], result: str
    ) -> int:
        """Items whose tasks were deleted go back to the pool; the round's pushes forget
        them. Returns how many went back."""
        now = iso(utcnow())
        n = 0
        with self.tx() as c:
            why = f"round {number} rolled back (command {command_id})"
            for item in item_ids:
                n += self._back_to_pool(c, item, number, now, why)
            self._merge_round_metrics(
                c, number, lambda m: {"rolled_back": int(m.get("rolled_back") or 0) + n}
            )
            self._finish(c, command_id, APPLIED, result.format(n=n))
        return n

    def record_requeue(
        self,
        number: int,
        item_id: str,
        task_id: int,
        *,
        alert_key: str,
        message: str,
    ) -> None:
        """An item re-pushed on purpose: a new task in round ``number``, and an alert."""
        now = iso(utcnow())
        with self.tx() as c:
            c.execute(
                "INSERT INTO pushes (round, item_id, task_id, pushed_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(round, item_id) DO UPDATE SET task_id = excluded.task_id, "
                "pushed_at = excluded.pushed_at",
                (number, item_id, task_id, now),
            )
            c.execute(
                "UPDATE items SET status = 'queued', round = ?, task_id = ?, label = NULL, "
                "annotation_id = NULL, annotator = NULL, reason = NULL, done_at = NULL, "
                "queued_at = ?, requeue_count = requeue_count + 1, updated_at = ? "
                "WHERE item_id = ?",
                (number, task_id, now, now, item_id),
            )
            self._item_event(c, item_id, "requeued", now, task_id=task_id, reason=message)
            self._insert_alert(
                c,
                "item_requeued",
                alert_key,
                message,
                severity="warning",
                item_id=item_id,
                round_number=number,
                at=now,
            )

    def alert_recorded(self, dedupe_key: str) -> bool:
        return bool(self.query("SELECT 1 FROM alerts WHERE dedupe_key = ?", (dedupe_key,)))

    # ------------------------------------------------------------------ reading
    def item_history(self, item_id: str) -> dict[str, Any] | None:
        """One item's lifecycle: its row, the rounds that pushed it, its label events."""
        rows = self.query("SELECT * FROM items WHERE item_id = ?", (item_id,))
        if not rows:
            return None
        pushes = self.query(
            "SELECT round, task_id, pushed_at FROM pushes WHERE item_id = ? ORDER BY pushed_at",
            (item_id,),
        )
        events = self.query(
            "SELECT task_id, status, label, annotator, reason, at FROM label_events "
            "WHERE item_id = ? ORDER BY id",
            (item_id,),
        )
        return {
            **dict(rows[0]),
            "pushes": [dict(r) for r in pushes],
            "events": [dict(r) for r in events],
        }

    def labeled_export(self) -> list[dict[str, Any]]:
        """The labeled set: key, label, split, round, annotator, labeled_at, in key order."""
        rows = self.query(
            "SELECT item_id AS key, label, split, round, annotator, done_at AS labeled_at "
            "FROM items WHERE status = 'labeled' ORDER BY item_id"
        )
        return [dict(r) for r in rows]

    def phase_seconds(self, number: int, phase: str, seconds: float) -> None:
        """Add a phase's wall time to the round's ``metrics.phase_seconds``."""
        with self.tx() as c:
            row = c.execute("SELECT metrics FROM rounds WHERE round = ?", (number,)).fetchone()
            if row is None:
                return
            metrics = json.loads(row["metrics"])
            times = dict(metrics.get("phase_seconds") or {})
            times[phase] = round(float(times.get(phase, 0.0)) + seconds, 3)
            metrics["phase_seconds"] = times
            c.execute(
                "UPDATE rounds SET metrics = ? WHERE round = ?",
                (json.dumps(metrics, sort_keys=True), number),
            )
