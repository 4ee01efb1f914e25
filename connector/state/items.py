"""Queries about pool items: discovery, candidates, labels, quarantine.

An item's lifecycle (one row in ``items``)::

    discovered -> queued (round, task id) -> labeled | skipped | invalid
    queued/skipped/invalid/missing -> queued with a new task only by an admin's requeue
        (``items requeue``, with an ``item_requeued`` alert)
    queued (unannotated) -> discovered only by an admin's ``round rollback``, or (training
        tasks) when a later round is pushed: its tasks come first (docs/labelstudio.md)
    queued -> missing when its task is deleted in Label Studio (``task_missing`` alert);
        a missing item is a candidate again
    discovered -> excluded (``items exclude``; ``items include`` takes it back),
        corrupt (unreadable object, quarantined)
    discovered/missing -> duplicate (``duplicate_of`` the item) at a push, when its bytes
        equal those of an item queued or done, or of one ahead of it in the batch; back
        to discovered if its object changes
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from connector.contracts.ports import ObjectInfo, TaskLabelState
from connector.state.base import Database
from connector.state.schema import (
    DONE_STATUSES,
    HOLDS_CONTENT,
    ITEM_STATUSES,
    Item,
    etag_content_hash,
    iso,
    parse_iso,
    row_to_item,
    utcnow,
)

#: Meta keys of the poll tickets: the last one handed out, the newest one applied.
POLL_TICKET = "ls_poll_ticket"
POLL_APPLIED = "ls_poll_applied"


class ItemQueries(Database):
    # -------------------------------------------------------------------- items
    def upsert_discovered(self, objects: Iterable[ObjectInfo]) -> int:
        """Record listed objects; a new key is ``discovered``. Returns how many were new.

        An object whose ETag changed keeps its lifecycle (its label refers to the key) but
        the new ETag is stored so the cache re-fetches it; its content hash is renewed,
        and duplicates by the old bytes (it, or of it) are candidates again.
        """
        now = iso(utcnow())
        new = 0
        with self.tx() as c:
            for obj in objects:
                digest = etag_content_hash(obj.etag)
                cur = c.execute(
                    "INSERT INTO items (item_id, etag, size, content_hash, discovered_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(item_id) DO NOTHING",
                    (obj.key, obj.etag, obj.size, digest, now, now),
                )
                if cur.rowcount:
                    new += 1
                    continue
                changed = c.execute(
                    "UPDATE items SET etag = ?, size = ?, content_hash = ?, updated_at = ? "
                    "WHERE item_id = ? AND etag != ?",
                    (obj.etag, obj.size, digest, now, obj.key, obj.etag),
                ).rowcount
                if changed:
                    c.execute(
                        "UPDATE items SET status = 'discovered', duplicate_of = NULL, "
                        "reason = NULL, updated_at = ? WHERE status = 'duplicate' "
                        "AND (item_id = ? OR duplicate_of = ?)",
                        (now, obj.key, obj.key),
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

    def queue_age(self) -> tuple[int, str | None]:
        """``(tasks queued, when the oldest of them was queued)``: how long annotators
        have left the queue's head waiting."""
        row = self.query(
            "SELECT COUNT(*) AS n, MIN(queued_at) AS oldest FROM items WHERE status = 'queued'"
        )[0]
        return int(row["n"]), row["oldest"]

    def iter_candidate_ids(self, batch: int = 10_000) -> Iterator[str]:
        """Ids of items a strategy may choose: discovered (never queued) or missing (their
        task was deleted in Label Studio), not excluded.

        Streams in key order with keyset pagination, so a million items never sit in
        memory at once.
        """
        last = ""
        while True:
            rows = self.query(
                "SELECT item_id FROM items WHERE status IN ('discovered', 'missing') "
                "AND item_id > ? ORDER BY item_id LIMIT ?",
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
        return self.column_by_item("etag", item_ids)

    def statuses(self, item_ids: Sequence[str]) -> dict[str, str]:
        return self.column_by_item("status", item_ids)

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

    def take_poll_ticket(self) -> int:
        """A number for a poll about to read Label Studio, larger than any before it.

        Take it before reading the watermark; ``apply_poll`` uses it to tell a poll's reads
        apart from those of a poll that started later (see there).
        """
        with self.tx() as c:
            ticket = int(self._meta_in(c, POLL_TICKET) or 0) + 1
            self.set_meta(POLL_TICKET, str(ticket), conn=c)
        return ticket

    def apply_poll(
        self,
        states: Iterable[TaskLabelState],
        *,
        ticket: int,
        watermark_key: str,
        watermark: datetime | None,
        extra_tasks: list[int] | None = None,
    ) -> dict[str, int] | None:
        """Apply one poll's states and advance its watermark, in one transaction.

        Returns None, changing nothing, when a poll with a larger ticket was applied
        first: this one read Label Studio earlier, so a state it holds may predate an
        annotation the newer poll already ingested. Writing it back would flip the item
        to ``queued`` (lost once the watermark passes the annotation) or count the
        annotation twice when a later poll re-reads it. Dropping the whole stale poll
        loses nothing: its watermark is dropped with it, so every task it saw changed is
        read again by the next poll. The watermark only moves forward, compared inside
        the transaction so two pollers cannot move it back.

        ``extra_tasks`` collects second tasks of an item (see ``_apply_states``) for the
        caller to withdraw.
        """
        with self.tx() as c:
            if int(self._meta_in(c, POLL_APPLIED) or 0) > ticket:
                return None
            self.set_meta(POLL_APPLIED, str(ticket), conn=c)
            changed = self._apply_states(c, states, extra_tasks)
            stored = parse_iso(self._meta_in(c, watermark_key) or None)
            if watermark is not None and (stored is None or watermark > stored):
                self.set_meta(watermark_key, iso(watermark) or "", conn=c)
        return changed

    @staticmethod
    def _meta_in(c: sqlite3.Connection, key: str) -> str | None:
        row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def apply_label_states(self, states: Iterable[TaskLabelState]) -> dict[str, int]:
        """Apply polled task states; idempotent, so an overlap window costs nothing.

        Returns counts of what changed, by new status. A state equal to what is stored
        changes nothing and writes no history.
        """
        with self.tx() as c:
            return self._apply_states(c, states)

    def _apply_states(
        self,
        c: sqlite3.Connection,
        states: Iterable[TaskLabelState],
        extra_tasks: list[int] | None = None,
    ) -> dict[str, int]:
        """Apply states in the caller's transaction; counts by new status.

        An item has one task, the one recorded when it was pushed. A state from another
        task of the same item comes from a second task: an import Label Studio committed
        after the daemon that sent it was killed, when the restarted push had already
        imported the item again. Such a task never changes the item (before this rule each
        poll flipped the item between its two tasks, counting one annotation many times);
        it goes to ``extra_tasks`` for the caller to withdraw, except that an annotation
        made on it while the recorded task is still open is taken, and the recorded task
        becomes the extra one.
        """
        changed: dict[str, int] = {}
        now = iso(utcnow())
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
            recorded = row["task_id"]
            if recorded is not None and st.task_id != recorded and row["status"] == "queued":
                if st.status == "unlabeled":
                    if extra_tasks is not None:
                        extra_tasks.append(st.task_id)
                    continue
                if extra_tasks is not None:  # annotated on the second task: it is kept
                    extra_tasks.append(int(recorded))
            elif recorded is not None and st.task_id != recorded:
                if extra_tasks is not None:  # done already: the second task adds nothing
                    extra_tasks.append(st.task_id)
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
            self._item_event(
                c,
                st.item_id,
                st.status,
                now,
                task_id=st.task_id,
                label=st.label,
                annotation_id=st.annotation_id,
                annotator=st.annotator,
                reason=st.reason,
            )
            changed[st.status] = changed.get(st.status, 0) + 1
        return changed

    def invalid_with_reason(self, prefix: str) -> list[tuple[str, int | None, str]]:
        """``(item_id, task_id, reason)`` of invalid items whose reason starts with
        ``prefix``, in key order."""
        rows = self.query(
            "SELECT item_id, task_id, reason FROM items WHERE status = 'invalid' "
            "AND substr(reason, 1, ?) = ? ORDER BY item_id",
            (len(prefix), prefix),
        )
        return [(r["item_id"], r["task_id"], r["reason"]) for r in rows]

    # --------------------------------------------------------------- duplicates
    def content_hashes(self, item_ids: Sequence[str]) -> dict[str, str | None]:
        """``item_id -> content hash`` (None: not known yet) of these items."""
        sql = "SELECT item_id, content_hash FROM items WHERE item_id IN ({marks})"
        return {r["item_id"]: r["content_hash"] for r in self.query_items(sql, item_ids)}

    def set_content_hashes(self, hashes: dict[str, str]) -> None:
        with self.tx() as c:
            c.executemany(
                "UPDATE items SET content_hash = ? WHERE item_id = ?",
                [(h, item_id) for item_id, h in hashes.items()],
            )

    def unhashed_holding_content(self) -> list[str]:
        """Items queued or done without a content hash: pushed before the connector knew
        hashes, on a store whose ETags are not MD5s. Hashed once, then never again."""
        marks = ",".join("?" * len(HOLDS_CONTENT))
        rows = self.query(
            f"SELECT item_id FROM items WHERE content_hash IS NULL AND status IN ({marks}) "
            "ORDER BY item_id",
            HOLDS_CONTENT,
        )
        return [r["item_id"] for r in rows]

    def originals_by_hash(self, hashes: Sequence[str]) -> dict[str, str]:
        """``hash -> item_id`` of an item (the smallest key) holding that content:
        queued, labeled, skipped or invalid."""
        out: dict[str, str] = {}
        held = ",".join("?" * len(HOLDS_CONTENT))
        unique = sorted(set(hashes))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for r in self.query(
                f"SELECT content_hash, MIN(item_id) AS item_id FROM items WHERE content_hash "
                f"IN ({marks}) AND status IN ({held}) GROUP BY content_hash",
                [*chunk, *HOLDS_CONTENT],
            ):
                out[r["content_hash"]] = r["item_id"]
        return out

    def mark_duplicates(self, number: int, originals: dict[str, str]) -> int:
        """Items (``item -> the item it duplicates``) become ``duplicate`` in round
        ``number``: never pushed, never labeled, not a candidate. Returns how many."""
        now = iso(utcnow())
        n = 0
        with self.tx() as c:
            for item_id, original in originals.items():
                reason = f"same bytes as {original!r}: labeled once, through that item"
                cur = c.execute(
                    "UPDATE items SET status = 'duplicate', duplicate_of = ?, round = ?, "
                    "reason = ?, pinned = 0, updated_at = ? WHERE item_id = ? "
                    "AND status IN ('discovered', 'missing')",
                    (original, number, reason, now, item_id),
                )
                if cur.rowcount:
                    n += 1
                    self._item_event(c, item_id, "duplicate", now, reason=reason)
        return n

    def duplicates_of_round(self, number: int) -> list[tuple[str, str]]:
        """``(item, the item it duplicates)`` of the duplicates found in round ``number``."""
        rows = self.query(
            "SELECT item_id, duplicate_of FROM items WHERE status = 'duplicate' AND round = ? "
            "ORDER BY item_id",
            (number,),
        )
        return [(r["item_id"], r["duplicate_of"]) for r in rows]
