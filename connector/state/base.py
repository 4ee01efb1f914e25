"""The state db's plumbing: one SQLite connection per thread (WAL), short write
transactions (``BEGIN IMMEDIATE``), forward migrations, and the meta key/value table.

The queries live in mixins by subject (``items``, ``rounds``, ``alerts``, ``admin``);
``db.StateDB`` puts them together. Writes that several of them make inside their own
transactions live here: an item's history row, an alert, a round's metrics.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from connector.state.schema import MIGRATIONS

log = logging.getLogger(__name__)


class Database:
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

    def query_items(self, sql: str, item_ids: Sequence[str]) -> list[sqlite3.Row]:
        """Rows of ``sql`` for these items, 500 ids per query (SQLite's variable limit):
        ``sql`` names them as ``IN ({marks})``."""
        rows: list[sqlite3.Row] = []
        for start in range(0, len(item_ids), 500):
            chunk = list(item_ids[start : start + 500])
            rows += self.query(sql.format(marks=",".join("?" * len(chunk))), chunk)
        return rows

    def column_by_item(self, column: str, item_ids: Sequence[str]) -> dict[str, str]:
        """``item_id -> column`` of these items (those that exist), 500 per query."""
        assert column in ("etag", "status"), column  # never user input in the SQL
        sql = f"SELECT item_id, {column} FROM items WHERE item_id IN ({{marks}})"
        return {r["item_id"]: r[column] for r in self.query_items(sql, item_ids)}

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

    def _back_to_pool(
        self,
        c: sqlite3.Connection,
        item_id: str,
        round_number: int,
        now: str | None,
        why: str,
        *,
        task_id: int | None = None,
    ) -> bool:
        """An item queued in ``round_number`` goes back to the pool (``discovered``), that
        round's pushes forget it, and its history says why; False if it was not queued
        there. In the caller's transaction."""
        cur = c.execute(
            "UPDATE items SET status = 'discovered', round = NULL, task_id = NULL, "
            "split = NULL, queued_at = NULL, pinned = 0, updated_at = ? "
            "WHERE item_id = ? AND round = ? AND status = 'queued'",
            (now, item_id, round_number),
        )
        if not cur.rowcount:
            return False
        c.execute("DELETE FROM pushes WHERE round = ? AND item_id = ?", (round_number, item_id))
        self._item_event(c, item_id, "withdrawn", now, task_id=task_id, reason=why)
        return True

    @staticmethod
    def _item_event(
        c: sqlite3.Connection,
        item_id: str,
        status: str,
        at: str | None,
        *,
        task_id: int | None = None,
        label: str | None = None,
        annotation_id: int | None = None,
        annotator: str | None = None,
        reason: str | None = None,
    ) -> None:
        """One row of an item's history (``label_events``), in the caller's transaction."""
        c.execute(
            "INSERT INTO label_events (item_id, task_id, status, label, annotation_id,"
            " annotator, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (item_id, task_id, status, label, annotation_id, annotator, reason, at),
        )

    @staticmethod
    def _insert_alert(
        c: sqlite3.Connection,
        kind: str,
        dedupe_key: str,
        message: str,
        *,
        severity: str,
        item_id: str | None,
        round_number: int | None,
        at: str | None,
        items: Sequence[str] | None = None,
        tasks: Sequence[int] | None = None,
    ) -> bool:
        """An alert, one open row per ``dedupe_key``, in the caller's transaction; True if
        new. An open alert of the same key is seen again instead: its ``last_seen``,
        message, items and tasks are brought up to date."""
        item_list = list(items) if items is not None else ([item_id] if item_id else [])
        task_list = [int(t) for t in tasks or ()]
        listed = (json.dumps(item_list), json.dumps(task_list))
        open_row = c.execute(
            "SELECT id FROM alerts WHERE dedupe_key = ? AND resolved_at IS NULL", (dedupe_key,)
        ).fetchone()
        if open_row is not None:
            c.execute(
                "UPDATE alerts SET last_seen = ?, message = ?, items = ?, tasks = ? WHERE id = ?",
                (at, message, *listed, open_row["id"]),
            )
            return False
        c.execute(
            "INSERT INTO alerts (kind, dedupe_key, severity, message, item_id, round, "
            "created_at, last_seen, items, tasks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, dedupe_key, severity, message, item_id, round_number, at, at, *listed),
        )
        return True

    @staticmethod
    def _merge_round_metrics(
        c: sqlite3.Connection,
        number: int,
        changes: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        """Replace round ``number``'s metrics by ``changes(metrics)`` (keys it returns are
        set, the others kept), in the caller's transaction."""
        row = c.execute("SELECT metrics FROM rounds WHERE round = ?", (number,)).fetchone()
        metrics = json.loads(row["metrics"])
        metrics.update(changes(metrics))
        c.execute(
            "UPDATE rounds SET metrics = ? WHERE round = ?",
            (json.dumps(metrics, sort_keys=True), number),
        )
