"""The state db: pool items and their lifecycle, rounds and their phases, frozen
selections, pushes, label history, alerts and admin commands.

SQLite in WAL mode is the embedded default. Every write happens in a short transaction
(``BEGIN IMMEDIATE``), so a crash leaves the db at the last committed phase or push
chunk, and a restart resumes from there. The schema is versioned with
``PRAGMA user_version`` and migrated forward on open.

An item's lifecycle (one row in ``items``)::

    discovered -> queued (round, task id) -> labeled | skipped | invalid
    queued/labeled/... -> discovered only by an explicit re-queue (with an alert)
    any -> excluded (admin), corrupt (unreadable object, quarantined)
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from connector.contracts.ports import ObjectInfo, TaskLabelState
from connector.state.schema import (
    DONE_STATUSES,
    ITEM_STATUSES,
    MIGRATIONS,
    Item,
    Phase,
    Round,
    SelectedItem,
    iso,
    row_to_item,
    row_to_round,
    utcnow,
)

log = logging.getLogger(__name__)


class StateDB:
    """Thread-safe access to the state db: one SQLite connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._migrate()

    # ----------------------------------------------------------------- plumbing
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any error."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(self._conn().execute(sql, params))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _migrate(self) -> None:
        conn = self._conn()
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"state db {self.path} has schema version {version}, newer than this "
                f"al-connector ({len(MIGRATIONS)}); upgrade al-connector"
            )
        for target in range(version + 1, len(MIGRATIONS) + 1):
            log.info("migrating state db %s to schema version %d", self.path, target)
            with self.tx() as c:
                for statement in MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        c.execute(statement)
                c.execute(f"PRAGMA user_version = {target}")

    @property
    def schema_version(self) -> int:
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    # --------------------------------------------------------------------- meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else default

    def set_meta(self, key: str, value: str, conn: sqlite3.Connection | None = None) -> None:
        sql = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?"
        if conn is not None:
            conn.execute(sql, (key, value, value))
            return
        with self.tx() as c:
            c.execute(sql, (key, value, value))

    # -------------------------------------------------------------------- items
    def upsert_discovered(self, objects: Iterable[ObjectInfo]) -> int:
        """Record listed objects; a new key is ``discovered``. Returns how many were new.

        An object whose ETag changed keeps its lifecycle (its label refers to the key) but
        the new ETag is stored so the cache re-fetches it.
        """
        now = iso(utcnow())
        new = 0
        with self.tx() as c:
            for obj in objects:
                cur = c.execute(
                    "INSERT INTO items (item_id, etag, size, discovered_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(item_id) DO NOTHING",
                    (obj.key, obj.etag, obj.size, now, now),
                )
                if cur.rowcount:
                    new += 1
                else:
                    c.execute(
                        "UPDATE items SET etag = ?, size = ?, updated_at = ? "
                        "WHERE item_id = ? AND etag != ?",
                        (obj.etag, obj.size, now, obj.key, obj.etag),
                    )
        return new

    def item(self, item_id: str) -> Item | None:
        rows = self.query("SELECT * FROM items WHERE item_id = ?", (item_id,))
        return row_to_item(rows[0]) if rows else None

    def count_items(self) -> dict[str, int]:
        counts = dict.fromkeys(ITEM_STATUSES, 0)
        for row in self.query("SELECT status, COUNT(*) AS n FROM items GROUP BY status"):
            counts[row["status"]] = row["n"]
        return counts

    def iter_candidate_ids(self, batch: int = 10_000) -> Iterator[str]:
        """Ids of items a strategy may choose: discovered, never queued, not excluded.

        Streams in key order with keyset pagination, so a million items never sit in
        memory at once.
        """
        last = ""
        while True:
            rows = self.query(
                "SELECT item_id FROM items WHERE status = 'discovered' AND item_id > ? "
                "ORDER BY item_id LIMIT ?",
                (last, batch),
            )
            if not rows:
                return
            for row in rows:
                yield row["item_id"]
            last = rows[-1]["item_id"]

    def pinned_candidates(self) -> list[str]:
        """Items an admin asked to include in the next batch, oldest request first."""
        rows = self.query(
            "SELECT item_id FROM items WHERE pinned > 0 AND status = 'discovered' ORDER BY pinned"
        )
        return [r["item_id"] for r in rows]

    def labeled_items(self, split: str) -> list[tuple[str, str, str]]:
        """``(item_id, etag, label)`` of labeled items of a split, in key order."""
        rows = self.query(
            "SELECT item_id, etag, label FROM items WHERE status = 'labeled' AND split = ? "
            "ORDER BY item_id",
            (split,),
        )
        return [(r["item_id"], r["etag"], r["label"]) for r in rows]

    def etags(self, item_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(item_ids), 500):
            chunk = list(item_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for r in self.query(
                f"SELECT item_id, etag FROM items WHERE item_id IN ({marks})", chunk
            ):
                out[r["item_id"]] = r["etag"]
        return out

    def mark_corrupt(self, failures: Iterable[tuple[str, str]]) -> int:
        """Quarantine unreadable items with their reason; they are never offered again."""
        now = iso(utcnow())
        n = 0
        with self.tx() as c:
            for item_id, reason in failures:
                n += c.execute(
                    "UPDATE items SET status = 'corrupt', reason = ?, updated_at = ? "
                    "WHERE item_id = ? AND status = 'discovered'",
                    (reason, now, item_id),
                ).rowcount
        return n

    def apply_label_states(self, states: Iterable[TaskLabelState]) -> dict[str, int]:
        """Apply polled task states; idempotent, so an overlap window costs nothing.

        Returns counts of what changed, by new status. A state equal to what is stored
        changes nothing and writes no history.
        """
        changed: dict[str, int] = {}
        now = iso(utcnow())
        with self.tx() as c:
            for st in states:
                row = c.execute(
                    "SELECT status, label, annotation_id, task_id FROM items WHERE item_id = ?",
                    (st.item_id,),
                ).fetchone()
                if row is None:
                    # A task for an item this db never saw (e.g. a db restored from backup):
                    # record it so it is never pushed again.
                    c.execute(
                        "INSERT INTO items (item_id, discovered_at, updated_at, status, task_id)"
                        " VALUES (?, ?, ?, 'queued', ?)",
                        (st.item_id, now, now, st.task_id),
                    )
                    row = {
                        "status": "queued",
                        "label": None,
                        "annotation_id": None,
                        "task_id": st.task_id,
                    }
                if row["status"] in ("excluded", "corrupt") and st.status == "unlabeled":
                    continue
                new_status = "queued" if st.status == "unlabeled" else st.status
                same = (
                    row["status"] == new_status
                    and row["label"] == st.label
                    and row["annotation_id"] == st.annotation_id
                    and row["task_id"] == st.task_id
                )
                if same:
                    continue
                done_at = now if new_status in DONE_STATUSES else None
                c.execute(
                    "UPDATE items SET status = ?, label = ?, annotation_id = ?, annotator = ?, "
                    "reason = ?, task_id = ?, done_at = ?, updated_at = ? WHERE item_id = ?",
                    (
                        new_status,
                        st.label,
                        st.annotation_id,
                        st.annotator,
                        st.reason,
                        st.task_id,
                        done_at,
                        now,
                        st.item_id,
                    ),
                )
                c.execute(
                    "INSERT INTO label_events (item_id, task_id, status, label, annotation_id,"
                    " annotator, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        st.item_id,
                        st.task_id,
                        st.status,
                        st.label,
                        st.annotation_id,
                        st.annotator,
                        st.reason,
                        now,
                    ),
                )
                changed[st.status] = changed.get(st.status, 0) + 1
        return changed

    # ------------------------------------------------------------------- rounds
    def current_round(self) -> Round | None:
        rows = self.query("SELECT * FROM rounds ORDER BY round DESC LIMIT 1")
        return row_to_round(rows[0]) if rows else None

    def get_round(self, number: int) -> Round | None:
        rows = self.query("SELECT * FROM rounds WHERE round = ?", (number,))
        return row_to_round(rows[0]) if rows else None

    def rounds(self) -> list[Round]:
        return [row_to_round(r) for r in self.query("SELECT * FROM rounds ORDER BY round")]

    def start_round(
        self, *, trigger: str, strategy: str, params: dict[str, Any], batch_size: int
    ) -> Round:
        """Open the next round at INGEST; the previous one (if any) becomes DONE."""
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
                "started_at, phase_at) VALUES (?, 'INGEST', ?, ?, ?, ?, ?, ?)",
                (
                    number,
                    trigger,
                    strategy,
                    json.dumps(params, sort_keys=True),
                    batch_size,
                    now,
                    now,
                ),
            )
        started = self.get_round(number)
        assert started is not None
        return started

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
                old = c.execute("SELECT metrics FROM rounds WHERE round = ?", (number,)).fetchone()
                merged = {**json.loads(old["metrics"]), **metrics}
                c.execute(
                    "UPDATE rounds SET metrics = ? WHERE round = ?",
                    (json.dumps(merged, sort_keys=True), number),
                )
            if model_version is not None:
                c.execute(
                    "UPDATE rounds SET model_version = ? WHERE round = ?", (model_version, number)
                )
            finished = now if phase in (Phase.DONE, Phase.FAILED) else None
            c.execute(
                "UPDATE rounds SET phase = ?, phase_at = ?, error = ?, "
                "finished_at = COALESCE(?, finished_at) WHERE round = ?",
                (phase.value, now, error, finished, number),
            )

    def snapshot_labels(self, number: int) -> int:
        """Record which labels this round trains and evaluates on (reproducibility)."""
        with self.tx() as c:
            c.execute("DELETE FROM round_labels WHERE round = ?", (number,))
            cur = c.execute(
                "INSERT INTO round_labels (round, item_id, split, label) "
                "SELECT ?, item_id, split, label FROM items WHERE status = 'labeled'",
                (number,),
            )
            return cur.rowcount

    # --------------------------------------------------------------- selections
    def freeze_selection(self, number: int, selected: Sequence[SelectedItem]) -> None:
        """Write the round's selection with its scores, and move the round to PUSH.

        One transaction: either the whole selection is frozen and the phase is PUSH, or
        nothing is, so a restart never re-scores a frozen round.
        """
        now = iso(utcnow())
        with self.tx() as c:
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
                "UPDATE rounds SET phase = 'PUSH', phase_at = ? WHERE round = ?", (now, number)
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
                    "UPDATE items SET status = CASE WHEN status = 'discovered'"
                    " THEN 'queued' ELSE status END, round = ?, task_id = ?, split = ?,"
                    " queued_at = ?, pinned = 0, updated_at = ? WHERE item_id = ?",
                    (number, task_id, splits[item_id], now, now, item_id),
                )

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
            cur = c.execute(
                "INSERT INTO alerts (kind, dedupe_key, severity, message, item_id, round, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(dedupe_key) DO NOTHING",
                (kind, dedupe_key, severity, message, item_id, round_number, iso(utcnow())),
            )
            return cur.rowcount > 0

    def unsent_alerts(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM alerts WHERE sent_at IS NULL ORDER BY id")

    def mark_alert_sent(self, alert_id: int) -> None:
        with self.tx() as c:
            c.execute("UPDATE alerts SET sent_at = ? WHERE id = ?", (iso(utcnow()), alert_id))
