"""The state db's schema: its migrations, and the records read from it.

Migrations only ever append: a released migration is never edited, so every db can be
brought forward from any version (``PRAGMA user_version``).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any


class Phase(str, Enum):
    """The phases of a round, in order. A round is DONE once the next one starts; FAILED
    and STOPPED are the two ways out."""

    INGEST = "INGEST"
    TRAIN = "TRAIN"
    SCORE = "SCORE"
    SELECT = "SELECT"
    PUSH = "PUSH"
    WAIT = "WAIT"
    DONE = "DONE"
    FAILED = "FAILED"
    #: A stopping criterion fired (``rounds.stopping``); ``round resume`` lifts it.
    STOPPED = "STOPPED"


PHASE_ORDER = [Phase.INGEST, Phase.TRAIN, Phase.SCORE, Phase.SELECT, Phase.PUSH, Phase.WAIT]

ITEM_STATUSES = (
    "discovered",
    "queued",
    "labeled",
    "skipped",
    "invalid",
    "excluded",
    "corrupt",
    "missing",
    "duplicate",
)
#: Statuses of an item that has a task in Label Studio whose annotation is finished.
DONE_STATUSES = ("labeled", "skipped", "invalid")


#: Statuses of an item whose content is taken: a later item with the same bytes is its
#: ``duplicate`` and is never pushed (``state.items.ItemQueries.mark_duplicates``).
HOLDS_CONTENT = ("queued", "labeled", "skipped", "invalid")


_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")


def etag_content_hash(etag: str) -> str | None:
    """The content hash an ETag gives for free: an S3 single-part ETag is the MD5 of the
    bytes (32 hex digits); a multipart one carries '-', the local store's is mtime-size.
    (An SSE-KMS ETag is 32 hex digits but no MD5: unique per object, so it only ever
    misses a duplicate, never invents one.)"""
    etag = etag.strip('"')
    return "md5:" + etag.lower() if _MD5_HEX.fullmatch(etag) else None


def bytes_content_hash(data: bytes) -> str:
    """The content hash of an object's bytes, comparable with ``etag_content_hash``."""
    return "md5:" + hashlib.md5(data, usedforsecurity=False).hexdigest()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(timezone.utc).isoformat()


def parse_iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE items (
        item_id TEXT PRIMARY KEY,
        etag TEXT NOT NULL DEFAULT '',
        size INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'discovered',
        split TEXT,
        round INTEGER,
        task_id INTEGER,
        label TEXT,
        annotation_id INTEGER,
        annotator TEXT,
        reason TEXT,
        requeue_count INTEGER NOT NULL DEFAULT 0,
        pinned INTEGER NOT NULL DEFAULT 0,
        discovered_at TEXT NOT NULL,
        queued_at TEXT,
        done_at TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX items_status ON items (status);
    CREATE INDEX items_round ON items (round);
    CREATE TABLE rounds (
        round INTEGER PRIMARY KEY,
        phase TEXT NOT NULL,
        trigger TEXT NOT NULL,
        strategy TEXT NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        batch_size INTEGER NOT NULL,
        model_version TEXT,
        started_at TEXT NOT NULL,
        phase_at TEXT NOT NULL,
        finished_at TEXT,
        metrics TEXT NOT NULL DEFAULT '{}',
        error TEXT
    );
    CREATE TABLE selections (
        round INTEGER NOT NULL,
        rank INTEGER NOT NULL,
        item_id TEXT NOT NULL,
        split TEXT NOT NULL,
        score REAL,
        predicted_label TEXT,
        confidence REAL,
        PRIMARY KEY (round, rank),
        UNIQUE (round, item_id)
    );
    CREATE TABLE pushes (
        round INTEGER NOT NULL,
        item_id TEXT NOT NULL,
        task_id INTEGER NOT NULL,
        pushed_at TEXT NOT NULL,
        PRIMARY KEY (round, item_id)
    );
    CREATE TABLE label_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        item_id TEXT NOT NULL,
        task_id INTEGER,
        status TEXT NOT NULL,
        label TEXT,
        annotation_id INTEGER,
        annotator TEXT,
        reason TEXT,
        at TEXT NOT NULL
    );
    CREATE INDEX label_events_item ON label_events (item_id);
    CREATE TABLE round_labels (
        round INTEGER NOT NULL,
        item_id TEXT NOT NULL,
        split TEXT NOT NULL,
        label TEXT NOT NULL,
        PRIMARY KEY (round, item_id)
    );
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        dedupe_key TEXT NOT NULL UNIQUE,
        severity TEXT NOT NULL DEFAULT 'warning',
        message TEXT NOT NULL,
        item_id TEXT,
        round INTEGER,
        created_at TEXT NOT NULL,
        sent_at TEXT
    );
    CREATE TABLE admin_commands (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        command TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        applied_at TEXT,
        result TEXT
    );
    """,
    # 2: the round core: the resolved plan, and the failure policy's bookkeeping
    """
    ALTER TABLE rounds ADD COLUMN plan TEXT;
    ALTER TABLE rounds ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rounds ADD COLUMN retry_at TEXT;
    ALTER TABLE rounds ADD COLUMN failed_phase TEXT;
    """,
    # 3: admin commands: who journaled each one, and where it stands
    # (pending -> applying -> applied | failed)
    """
    ALTER TABLE admin_commands ADD COLUMN user TEXT NOT NULL DEFAULT '';
    ALTER TABLE admin_commands ADD COLUMN status TEXT NOT NULL DEFAULT 'pending';
    CREATE INDEX admin_commands_status ON admin_commands (status);
    CREATE INDEX pushes_item ON pushes (item_id);
    """,
    # 4: alerts with a lifetime: one open row per condition (a partial unique index, so a
    # condition that clears and comes back is a new alert), the items and tasks concerned,
    # last_seen, resolved_at, and the notifier bookkeeping (re-notify schedule, retries)
    """
    CREATE TABLE alerts_v4 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        dedupe_key TEXT NOT NULL,
        severity TEXT NOT NULL DEFAULT 'warning',
        message TEXT NOT NULL,
        item_id TEXT,
        round INTEGER,
        created_at TEXT NOT NULL,
        sent_at TEXT,
        items TEXT NOT NULL DEFAULT '[]',
        tasks TEXT NOT NULL DEFAULT '[]',
        last_seen TEXT,
        resolved_at TEXT,
        notify_count INTEGER NOT NULL DEFAULT 0,
        resolve_sent_at TEXT,
        retry_notifiers TEXT NOT NULL DEFAULT '[]'
    );
    INSERT INTO alerts_v4 (id, kind, dedupe_key, severity, message, item_id, round,
        created_at, sent_at, items, last_seen, notify_count)
        SELECT id, kind, dedupe_key, severity, message, item_id, round, created_at, sent_at,
        CASE WHEN item_id IS NULL THEN '[]' ELSE json_array(item_id) END, created_at,
        CASE WHEN sent_at IS NULL THEN 0 ELSE 1 END FROM alerts;
    DROP TABLE alerts;
    ALTER TABLE alerts_v4 RENAME TO alerts;
    CREATE UNIQUE INDEX alerts_open_key ON alerts (dedupe_key) WHERE resolved_at IS NULL;
    CREATE INDEX alerts_key ON alerts (dedupe_key);
    CREATE INDEX label_events_at ON label_events (at);
    """,
    # 5: duplicates by content: an item's content hash ("md5:<hex>", from a single-part
    # S3 ETag or from its bytes) and, for a ``duplicate``, the item it duplicates. An S3
    # ETag of 32 hex digits is the MD5 of the bytes (multipart ones carry '-', the local
    # store's is mtime-size), so those rows get their hash without a read.
    """
    ALTER TABLE items ADD COLUMN content_hash TEXT;
    ALTER TABLE items ADD COLUMN duplicate_of TEXT;
    UPDATE items SET content_hash = 'md5:' || lower(etag)
        WHERE length(etag) = 32 AND etag NOT GLOB '*[^0-9a-fA-F]*';
    CREATE INDEX items_content_hash ON items (content_hash);
    CREATE INDEX items_duplicate_of ON items (duplicate_of);
    """,
]


@dataclass(frozen=True)
class Round:
    round: int
    phase: Phase
    trigger: str
    strategy: str
    params: dict[str, Any]
    batch_size: int
    model_version: str | None
    started_at: datetime
    phase_at: datetime
    finished_at: datetime | None
    metrics: dict[str, Any]
    error: str | None
    #: The resolved round plan (``rounds.plan.RoundPlan.to_json``), re-resolved until the
    #: selection is frozen; None before the first resolution.
    plan: dict[str, Any] | None = None
    #: Failed attempts of the current phase, and when the next one may start.
    attempts: int = 0
    retry_at: datetime | None = None
    #: The phase a FAILED round failed in (where it resumes).
    failed_phase: Phase | None = None


@dataclass(frozen=True)
class SelectedItem:
    rank: int
    item_id: str
    split: str
    score: float | None
    predicted_label: str | None
    confidence: float | None


@dataclass(frozen=True)
class Item:
    item_id: str
    etag: str
    status: str
    split: str | None
    round: int | None
    task_id: int | None
    label: str | None
    requeue_count: int
    queued_at: datetime | None


def row_to_round(row: sqlite3.Row) -> Round:
    return Round(
        round=row["round"],
        phase=Phase(row["phase"]),
        trigger=row["trigger"],
        strategy=row["strategy"],
        params=json.loads(row["params"]),
        batch_size=row["batch_size"],
        model_version=row["model_version"],
        started_at=datetime.fromisoformat(row["started_at"]),
        phase_at=datetime.fromisoformat(row["phase_at"]),
        finished_at=parse_iso(row["finished_at"]),
        metrics=json.loads(row["metrics"]),
        error=row["error"],
        plan=json.loads(row["plan"]) if row["plan"] else None,
        attempts=row["attempts"],
        retry_at=parse_iso(row["retry_at"]),
        failed_phase=Phase(row["failed_phase"]) if row["failed_phase"] else None,
    )


def row_to_item(row: sqlite3.Row) -> Item:
    return Item(
        item_id=row["item_id"],
        etag=row["etag"],
        status=row["status"],
        split=row["split"],
        round=row["round"],
        task_id=row["task_id"],
        label=row["label"],
        requeue_count=row["requeue_count"],
        queued_at=parse_iso(row["queued_at"]),
    )
