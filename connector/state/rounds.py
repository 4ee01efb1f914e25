"""Queries about rounds: phases, frozen selections, pushes, label snapshots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from connector.state.base import Database
from connector.state.schema import Phase, Round, SelectedItem, iso, row_to_round, utcnow


class RoundQueries(Database):
    # ------------------------------------------------------------------- rounds
    def current_round(self) -> Round | None:
        rows = self.query("SELECT * FROM rounds ORDER BY round DESC LIMIT 1")
        return row_to_round(rows[0]) if rows else None

    def get_round(self, number: int) -> Round | None:
        rows = self.query("SELECT * FROM rounds WHERE round = ?", (number,))
        return row_to_round(rows[0]) if rows else None

    def rounds(self) -> list[Round]:
        return [row_to_round(r) for r in self.query("SELECT * FROM rounds ORDER BY round")]

    def start_round(self, *, trigger: str, plan: dict[str, Any]) -> Round:
        """Open the next round at INGEST with its plan as resolved now; the previous one
        (if any) becomes DONE."""
        now = iso(utcnow())
        with self.tx() as c:
            row = c.execute("SELECT MAX(round) AS r FROM rounds").fetchone()
            number = 0 if row["r"] is None else int(row["r"]) + 1
            c.execute(
                "UPDATE rounds SET phase = 'DONE', finished_at = ? WHERE phase = 'WAIT'",
                (now,),
            )
            c.execute(
                "INSERT INTO rounds (round, phase, trigger, strategy, params, batch_size, "
                "plan, started_at, phase_at) VALUES (?, 'INGEST', ?, ?, ?, ?, ?, ?, ?)",
                (
                    number,
                    trigger,
                    plan["strategy"],
                    json.dumps(plan["params"], sort_keys=True),
                    plan["batch_size"],
                    json.dumps(plan, sort_keys=True),
                    now,
                    now,
                ),
            )
        started = self.get_round(number)
        assert started is not None
        return started

    def set_plan(self, number: int, plan: dict[str, Any]) -> None:
        """Record the plan as re-resolved (before the selection is frozen)."""
        with self.tx() as c:
            c.execute(
                "UPDATE rounds SET plan = ?, strategy = ?, params = ?, batch_size = ? "
                "WHERE round = ?",
                (
                    json.dumps(plan, sort_keys=True),
                    plan["strategy"],
                    json.dumps(plan["params"], sort_keys=True),
                    plan["batch_size"],
                    number,
                ),
            )

    def phase_attempt_failed(self, number: int, error: str, retry_at: str | None) -> int:
        """Count one failed attempt of the round's current phase; returns the count."""
        with self.tx() as c:
            c.execute(
                "UPDATE rounds SET attempts = attempts + 1, error = ?, retry_at = ? "
                "WHERE round = ?",
                (error, retry_at, number),
            )
            row = c.execute("SELECT attempts FROM rounds WHERE round = ?", (number,)).fetchone()
        return int(row["attempts"])

    def defer_phase(self, number: int, retry_at: str) -> None:
        """Run the round's current phase again at ``retry_at``, not as a failed attempt."""
        with self.tx() as c:
            c.execute("UPDATE rounds SET retry_at = ? WHERE round = ?", (retry_at, number))

    def fail_round(self, number: int, phase: Phase, error: str) -> None:
        """The round gives up: FAILED, remembering the phase it failed in."""
        with self.tx() as c:
            c.execute(
                "UPDATE rounds SET phase = 'FAILED', failed_phase = ?, error = ?, retry_at = NULL,"
                " phase_at = ? WHERE round = ?",
                (phase.value, error, iso(utcnow()), number),
            )

    def stop_round(self, number: int, meta_key: str, record: dict[str, Any]) -> bool:
        """A stopping criterion fired: the round goes to STOPPED, the stop ``record`` is
        kept in the round's metrics and under ``meta_key``, and a ``stopped`` alert is
        raised, in one transaction. True if the alert is new."""
        now = iso(utcnow())
        with self.tx() as c:
            self.set_meta(meta_key, json.dumps(record, sort_keys=True), conn=c)
            self._merge_round_metrics(c, number, lambda _: {"stopped": record})
            c.execute(
                "UPDATE rounds SET phase = 'STOPPED', phase_at = ?, retry_at = NULL "
                "WHERE round = ?",
                (now, number),
            )
            return self._insert_alert(
                c,
                "stopped",
                f"stopped:r{number}:{record['criterion']}:{record['at']}",
                str(record["message"]),
                severity="warning",
                item_id=None,
                round_number=number,
                at=now,
            )

    def resume_failed(self, number: int) -> Phase | None:
        """Put a FAILED round back at the phase it failed in, with a fresh attempt budget.
        Returns that phase, or None if the round is not FAILED."""
        with self.tx() as c:
            row = c.execute(
                "SELECT phase, failed_phase FROM rounds WHERE round = ?", (number,)
            ).fetchone()
            if row is None or row["phase"] != Phase.FAILED.value or not row["failed_phase"]:
                return None
            c.execute(
                "UPDATE rounds SET phase = failed_phase, failed_phase = NULL, attempts = 0, "
                "retry_at = NULL, phase_at = ? WHERE round = ?",
                (iso(utcnow()), number),
            )
            return Phase(row["failed_phase"])

    def set_phase(
        self,
        number: int,
        phase: Phase,
        *,
        metrics: dict[str, Any] | None = None,
        model_version: str | None = None,
        error: str | None = None,
    ) -> None:
        """Commit a phase change (with what the finished phase produced)."""
        now = iso(utcnow())
        with self.tx() as c:
            if metrics is not None:
                self._merge_round_metrics(c, number, lambda _: metrics)
            if model_version is not None:
                c.execute(
                    "UPDATE rounds SET model_version = ? WHERE round = ?", (model_version, number)
                )
            # A committed phase change is a success: the failure count starts over.
            finished = now if phase is Phase.DONE else None
            c.execute(
                "UPDATE rounds SET phase = ?, phase_at = ?, error = ?, attempts = 0, "
                "retry_at = NULL, finished_at = COALESCE(?, finished_at) WHERE round = ?",
                (phase.value, now, error, finished, number),
            )

    def snapshot_labels(self, number: int) -> int:
        """Record which labels this round trains and evaluates on (reproducibility)."""
        with self.tx() as c:
            c.execute("DELETE FROM round_labels WHERE round = ?", (number,))
            cur = c.execute(
                "INSERT INTO round_labels (round, item_id, split, label) "
                "SELECT ?, item_id, split, label FROM items WHERE status = 'labeled' "
                # As ``labeled_items``: a task of an item this db never pushed (a db
                # restored from a backup) has no split, and trains nothing.
                "AND split IS NOT NULL",
                (number,),
            )
            return cur.rowcount

    # --------------------------------------------------------------- selections
    def freeze_selection(
        self, number: int, selected: Sequence[SelectedItem], clear_meta: Sequence[str] = ()
    ) -> None:
        """Write the round's selection with its scores, and move the round to PUSH.

        One transaction: either the whole selection is frozen and the phase is PUSH, or
        nothing is, so a restart never re-scores a frozen round. ``clear_meta`` keys are
        deleted in the same transaction (admin overrides meant for this round only).
        """
        now = iso(utcnow())
        with self.tx() as c:
            for key in clear_meta:
                c.execute("DELETE FROM meta WHERE key = ?", (key,))
            c.execute("DELETE FROM selections WHERE round = ?", (number,))
            c.executemany(
                "INSERT INTO selections (round, rank, item_id, split, score, predicted_label, "
                "confidence) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (number, s.rank, s.item_id, s.split, s.score, s.predicted_label, s.confidence)
                    for s in selected
                ],
            )
            c.execute(
                "UPDATE rounds SET phase = 'PUSH', phase_at = ?, error = NULL, attempts = 0, "
                "retry_at = NULL WHERE round = ?",
                (now, number),
            )

    def selection(self, number: int) -> list[SelectedItem]:
        rows = self.query(
            "SELECT rank, item_id, split, score, predicted_label, confidence FROM selections "
            "WHERE round = ? ORDER BY rank",
            (number,),
        )
        return [SelectedItem(**dict(r)) for r in rows]

    def unpushed(self, number: int) -> list[SelectedItem]:
        rows = self.query(
            "SELECT s.rank, s.item_id, s.split, s.score, s.predicted_label, s.confidence "
            "FROM selections s LEFT JOIN pushes p ON p.round = s.round AND p.item_id = s.item_id"
            " WHERE s.round = ? AND p.item_id IS NULL ORDER BY s.rank",
            (number,),
        )
        return [SelectedItem(**dict(r)) for r in rows]

    def polled_before_recorded(self, item_ids: Sequence[str]) -> list[str]:
        """Of these items, those whose task the poll found (and maybe ingested an annotation
        of) before any push of it was recorded: an import that landed, then a crash before
        its chunk was recorded. PUSH records them; they are not re-queues."""
        sql = (
            "SELECT i.item_id FROM items i WHERE i.item_id IN ({marks}) "
            "AND i.task_id IS NOT NULL AND i.status NOT IN ('discovered', 'missing') "
            "AND NOT EXISTS (SELECT 1 FROM pushes p WHERE p.item_id = i.item_id "
            "AND p.task_id = i.task_id)"
        )
        return [r["item_id"] for r in self.query_items(sql, item_ids)]

    def record_push(self, number: int, pushed: dict[str, int], splits: dict[str, str]) -> None:
        """Commit one pushed chunk: the items become ``queued`` with their task ids."""
        now = iso(utcnow())
        with self.tx() as c:
            for item_id, task_id in pushed.items():
                c.execute(
                    "INSERT INTO pushes (round, item_id, task_id, pushed_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(round, item_id) DO NOTHING",
                    (number, item_id, task_id, now),
                )
                c.execute(
                    "UPDATE items SET status = CASE WHEN status IN ('discovered', 'missing')"
                    " THEN 'queued' ELSE status END, round = ?, task_id = ?, split = ?,"
                    " queued_at = ?, pinned = 0, updated_at = ? WHERE item_id = ?",
                    (number, task_id, splits[item_id], now, now, item_id),
                )

    def stale_open_tasks(self, number: int) -> list[tuple[str, int]]:
        """``(item_id, task_id)`` of training tasks of rounds before ``number`` that nobody
        annotated (as far as the last poll knows): what pushing round ``number`` withdraws."""
        rows = self.query(
            "SELECT item_id, task_id FROM items WHERE status = 'queued' AND split = 'train' "
            "AND round < ? AND task_id IS NOT NULL ORDER BY round, item_id",
            (number,),
        )
        return [(r["item_id"], int(r["task_id"])) for r in rows]

    def release_stale(self, number: int, item_ids: Sequence[str]) -> int:
        """Items whose earlier-round tasks were withdrawn go back to the pool (their round's
        pushes forget them); returns how many."""
        now = iso(utcnow())
        n = 0
        why = f"still open when round {number} was pushed; back in the pool"
        with self.tx() as c:
            for item in item_ids:
                row = c.execute(
                    "SELECT round, task_id FROM items WHERE item_id = ? AND status = 'queued' "
                    "AND round < ?",
                    (item, number),
                ).fetchone()
                if row is not None:
                    n += self._back_to_pool(c, item, int(row[0]), now, why, task_id=row[1])
        return n

    def batch_progress(self, number: int) -> tuple[int, int]:
        """``(done, total)`` of the items pushed in a round (done = labeled/skipped/invalid)."""
        row = self.query(
            "SELECT COUNT(*) AS total, SUM(CASE WHEN i.status IN ('labeled','skipped','invalid')"
            " THEN 1 ELSE 0 END) AS done FROM pushes p JOIN items i ON i.item_id = p.item_id "
            "WHERE p.round = ?",
            (number,),
        )[0]
        return int(row["done"] or 0), int(row["total"] or 0)

    def labels_since(self, number: int) -> int:
        """Labels that exist now but were not in round ``number``'s training snapshot."""
        row = self.query(
            "SELECT COUNT(*) AS n FROM items i WHERE i.status = 'labeled' AND NOT EXISTS "
            "(SELECT 1 FROM round_labels r WHERE r.round = ? AND r.item_id = i.item_id "
            "AND r.label = i.label)",
            (number,),
        )[0]
        return int(row["n"])
