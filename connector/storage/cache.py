"""The labeled-item cache: local copies of the images people have labeled, and only those.

Training reads labeled images many times, so they are kept on local disk; the pool is
never mirrored. Nothing here lists a store: the cache holds exactly the ``(key, etag)``
pairs it is asked for (``ensure_many``), within ``max_bytes``.

Layout under ``root``::

    objects/<h[:2]>/<h>.<ext>   h = sha256(key + "\\0" + etag), ext from the key
    index.sqlite3               key, etag, size, last access of each entry

Content addressing by ``(key, etag)`` means a changed object (new etag) is a miss and is
fetched again; the stale copy is dropped. Files are written atomically
(``connector.files.atomic_write_bytes``: a temporary name, fsync, ``os.replace``), and a
file is in the index only after it is complete, so a crash leaves at most an orphan
file, which opening the cache removes. The least recently
used entries are evicted to stay within ``max_bytes``. One process owns a cache folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from connector.contracts.errors import ConfigError
from connector.contracts.ports import ObjectStore
from connector.files import atomic_write_bytes
from connector.storage.window import STORE_ERRORS

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    hash TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    etag TEXT NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    last_access INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_key ON entries (key);
CREATE INDEX IF NOT EXISTS entries_lru ON entries (last_access);
"""
_EXT_RE = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


def entry_hash(key: str, etag: str) -> str:
    """The content address of one object version: ``sha256(key + "\\0" + etag)`` in hex."""
    return hashlib.sha256(f"{key}\0{etag}".encode()).hexdigest()


class LabeledCache:
    """A bounded, content-addressed local cache of labeled pool items.

    It caches only what it is asked for — the labeled items — never a mirror of the pool.
    ``max_bytes`` bounds the bytes of the cached files (the index is not counted); the
    least recently used entries go first. Thread-safe within one process.
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ConfigError(
                f"the cache bound must be > 0 bytes, got {max_bytes}; set state.cache_max_mb"
            )
        self.root = Path(root).expanduser().absolute()
        self.max_bytes = max_bytes
        self._objects = self.root / "objects"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.root / "index.sqlite3", isolation_level=None, check_same_thread=False
        )
        # WAL + NORMAL: a crash may forget the last access times, never corrupt the index
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._tick = 0
        self._pinned: set[str] = set()
        self._reconcile()
        self._bytes = int(
            self._db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
        )
        self._evict_over_bound()

    def __repr__(self) -> str:
        return f"LabeledCache(root={str(self.root)!r}, max_bytes={self.max_bytes})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LabeledCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _now(self) -> int:
        """A strictly increasing access stamp (ns), so LRU order never ties."""
        self._tick = max(time.time_ns(), self._tick + 1)
        return self._tick

    def _file_for(self, key: str, h: str) -> Path:
        ext = os.path.splitext(key)[1]
        suffix = ext.lower() if _EXT_RE.match(ext) else ""
        return self._objects / h[:2] / f"{h}{suffix}"

    def _reconcile(self) -> None:
        """Make the index and the files agree after a crash: drop orphans on both sides."""
        known: dict[str, str] = {}
        for h, file in self._db.execute("SELECT hash, file FROM entries").fetchall():
            if (self.root / file).is_file():
                known[file] = h
            else:
                self._db.execute("DELETE FROM entries WHERE hash = ?", (h,))
        for path in self._objects.glob("*/*"):
            rel = path.relative_to(self.root).as_posix()
            if rel not in known:
                path.unlink(missing_ok=True)
                log.info("cache: removed %s, left by an interrupted write", rel)

    def _drop(self, h: str, file: str, size: int) -> None:
        (self.root / file).unlink(missing_ok=True)
        self._db.execute("DELETE FROM entries WHERE hash = ?", (h,))
        self._bytes -= size

    def _evict_over_bound(self) -> None:
        """Evict least recently used entries (never pinned ones) until within ``max_bytes``."""
        while self._bytes > self.max_bytes:
            victims = self._db.execute(
                "SELECT hash, file, size FROM entries ORDER BY last_access LIMIT 64"
            ).fetchall()
            victims = [v for v in victims if v[0] not in self._pinned]
            if not victims:
                victims = [
                    v
                    for v in self._db.execute(
                        "SELECT hash, file, size FROM entries ORDER BY last_access"
                    )
                    if v[0] not in self._pinned
                ][:64]
            if not victims:
                return
            for h, file, size in victims:
                if self._bytes <= self.max_bytes:
                    return
                self._drop(h, file, size)

    # ------------------------------------------------------------------ API

    def get(self, key: str, etag: str) -> Path | None:
        """The cached file of this version of ``key``, or None (a miss)."""
        h = entry_hash(key, etag)
        with self._lock:
            row = self._db.execute("SELECT file, size FROM entries WHERE hash = ?", (h,)).fetchone()
            if row is not None:
                path = self.root / row[0]
                if path.is_file():
                    self._db.execute(
                        "UPDATE entries SET last_access = ? WHERE hash = ?", (self._now(), h)
                    )
                    return path
                self._drop(h, row[0], row[1])  # deleted behind our back
            return None

    def put(self, key: str, etag: str, data: bytes) -> Path:
        """Store ``data`` as this version of ``key``; older versions of ``key`` are dropped.

        Raises ``ConfigError`` if ``data`` alone is larger than ``max_bytes``, or if the
        items pinned by a running ``ensure_many`` no longer fit.
        """
        if len(data) > self.max_bytes:
            raise ConfigError(
                f"{key} is {len(data)} bytes, more than the cache bound ({self.max_bytes} "
                "bytes); raise state.cache_max_mb"
            )
        h = entry_hash(key, etag)
        path = self._file_for(key, h)
        with self._lock:
            # the file first, the index after: a failed write leaves the index as it was
            atomic_write_bytes(path, data)
            for old_h, file, size in self._db.execute(
                "SELECT hash, file, size FROM entries WHERE key = ?", (key,)
            ).fetchall():
                if old_h == h:  # the same version again: its file was just replaced
                    self._db.execute("DELETE FROM entries WHERE hash = ?", (h,))
                    self._bytes -= size
                else:  # a stale version of the object
                    self._drop(old_h, file, size)
            self._db.execute(
                "INSERT INTO entries (hash, key, etag, file, size, last_access) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (h, key, etag, path.relative_to(self.root).as_posix(), len(data), self._now()),
            )
            self._bytes += len(data)
            self._pinned.add(h)  # never evict what is being put
            try:
                self._evict_over_bound()
            finally:
                self._pinned.discard(h)
            if self._bytes > self.max_bytes:
                raise ConfigError(
                    f"the labeled items in use ({self._bytes} bytes) do not fit in the "
                    f"cache bound ({self.max_bytes} bytes); raise state.cache_max_mb"
                )
            return path

    def ensure_many(
        self, store: ObjectStore, items: Iterable[tuple[str, str]], max_workers: int = 8
    ) -> dict[str, Path | Exception]:
        """The cached file of each ``(key, etag)``, reading the misses from ``store``
        concurrently.

        Returns ``key -> file`` in input order, or ``key -> error`` for an item that could
        not be read (missing, corrupt): those are for the caller to quarantine. Errors of
        the whole store (``AuthError``, ``ServiceUnavailable``, ``ConfigError``) are
        raised. All files of one call stay cached until it returns; if they do not fit
        in ``max_bytes`` together, ``ConfigError`` says to raise it.
        """
        wanted: dict[str, str] = {}
        for key, etag in items:
            wanted.setdefault(key, etag)
        out: dict[str, Path | Exception] = {}
        for key in wanted:  # input order; every value is replaced below
            out[key] = KeyError(key)
        pinned: set[str] = set()
        try:
            misses: list[str] = []
            for key, etag in wanted.items():
                with self._lock:
                    path = self.get(key, etag)
                    if path is not None:
                        h = entry_hash(key, etag)
                        self._pinned.add(h)
                        pinned.add(h)
                        out[key] = path
                        continue
                misses.append(key)
            for key, result in store.read_many(misses, max_workers=max_workers):
                if isinstance(result, STORE_ERRORS):
                    raise result
                if isinstance(result, Exception):
                    out[key] = result
                    continue
                with self._lock:
                    out[key] = self.put(key, wanted[key], result)
                    h = entry_hash(key, wanted[key])
                    self._pinned.add(h)
                    pinned.add(h)
            return out
        finally:
            with self._lock:
                self._pinned -= pinned
                self._evict_over_bound()
