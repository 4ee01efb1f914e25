"""The local-folder pool: the embedded default, with the same interface as ``S3Store``.

``connector.storage.s3`` re-exports ``LocalStore``; this module has no boto3, so the
shared helpers (image extensions) live here and the S3 store imports them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from connector.contracts.errors import ConfigError
from connector.contracts.ports import ObjectInfo
from connector.files import atomic_write_bytes

# fmt: off
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff",
)
# fmt: on


def matches_extension(key: str, extensions: tuple[str, ...]) -> bool:
    return key.lower().endswith(extensions)


def normalise_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    out = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if not out:
        raise ConfigError("storage.extensions is empty; list at least one, e.g. ['.png']")
    return out


class LocalStore:
    """A local folder as the pool. Keys are POSIX paths relative to ``root``.

    The walk is recursive with entries sorted so that whole keys come out in ``str``
    order (a directory ``d`` sorts as ``d/``), the same order S3 lists in, so
    ``start_after`` works the same. The etag is ``<mtime_ns>-<size>`` in hex: cheap, and
    it changes when a file is rewritten.

    ``url_for`` gives a ``file://`` URL, or, with ``url_template`` such as Label Studio's
    ``"/data/local-files/?d={path}"``, ``{path}`` is the file's path relative to
    ``document_root`` (default ``root``), URL-quoted.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
        url_template: str | None = None,
        document_root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        self._resolved_root: Path | None = None
        self.extensions = normalise_extensions(extensions)
        self.url_template = url_template
        self.document_root = (
            Path(document_root).expanduser().absolute() if document_root else self.root
        )
        if url_template is not None:
            try:
                self.root.relative_to(self.document_root)
            except ValueError:
                raise ConfigError(
                    f"storage root {self.root} is not under the document root "
                    f"{self.document_root}; set the document root to a parent of it"
                ) from None

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    def describe(self) -> str:
        return self.root.as_uri()

    def _inside(self, path: Path) -> bool:
        if self._resolved_root is None:  # resolved once: the root does not move
            self._resolved_root = self.root.resolve()
        return path.resolve().is_relative_to(self._resolved_root)

    def _path(self, key: str) -> Path:
        """The file of ``key``; rejects keys that would leave ``root``."""
        parts = PurePosixPath(key).parts
        if (
            not key
            or "\0" in key
            or "\\" in key
            or key.startswith("/")
            or any(p in ("..", ".") for p in parts)
        ):
            raise ValueError(f"invalid key {key!r}: must be a relative path inside the pool")
        path = self.root.joinpath(*parts)
        if not self._inside(path):
            raise ValueError(f"invalid key {key!r}: it resolves outside {self.root}")
        return path

    def _walk(self, directory: Path, rel: str, start_after: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                # a directory sorts as "name/": then whole keys come out in str order
                entries = [
                    (e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in it
                ]
        except FileNotFoundError:
            return
        entries.sort(key=lambda pair: pair[0])
        for sort_name, entry in entries:
            key = rel + sort_name
            if sort_name.endswith("/"):
                # every key below starts with `key`; skip the subtree if all are <= start_after
                if start_after and start_after > key and not start_after.startswith(key):
                    continue
                yield from self._walk(Path(entry.path), key, start_after)
            elif key > start_after and matches_extension(key, self.extensions) and entry.is_file():
                if entry.is_symlink() and not self._inside(Path(entry.path)):
                    continue  # read() would refuse it: a link out of the pool
                st = entry.stat()
                yield ObjectInfo(
                    key=key,
                    etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
                    size=st.st_size,
                    last_modified=datetime.fromtimestamp(st.st_mtime, tz=timezone.utc),
                )

    def list_objects(self, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Image files under ``root`` in key order, strictly after ``start_after``."""
        return self._walk(self.root, "", start_after or "")

    def local_path(self, key: str) -> Path | None:
        """The pool file itself (None if it is gone): a local pool's labeled items need no
        copy in the labeled cache."""
        try:
            path = self._path(key)
        except ValueError:
            return None
        return path if path.is_file() else None

    def read(self, key: str) -> bytes:
        """The file's bytes; ``KeyError`` if it does not exist."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def read_many(
        self, keys: Iterable[str], max_workers: int = 8
    ) -> Iterator[tuple[str, bytes | Exception]]:
        """Read in the caller's thread, in order; ``max_workers`` is accepted and unused.

        Local reads come from the page cache in microseconds, so a thread pool hides no
        latency; it only contends for the GIL with the model. Measured while scoring
        20,000 images (K=20, one run): 16 reader threads made scoring 1.8x-2.5x slower
        than the bare forward passes, reading in the caller's thread 0.96x-1.30x.
        """
        del max_workers
        for key in keys:
            try:
                yield key, self.read(key)
            except Exception as exc:  # handed to the caller per item, as the S3 store does
                yield key, exc

    def url_for(self, key: str) -> str:
        path = self._path(key)
        if self.url_template is None:
            return path.as_uri()
        rel = path.relative_to(self.document_root).as_posix()
        return self.url_template.format(path=quote(rel, safe="/"))

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` as ``key`` atomically (for the demo and tests)."""
        atomic_write_bytes(self._path(key), data)

    def check(self) -> dict[str, Any]:
        """Verify the folder exists and can be listed; raise ``ConfigError`` naming the fix."""
        if not self.root.is_dir():
            raise ConfigError(
                f"pool folder {self.root} does not exist; create it or fix storage.local_root"
            )
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise ConfigError(
                f"pool folder {self.root} is not readable by this user; fix its permissions"
            )
        first = next(iter(self.list_objects()), None)
        return {
            "backend": "local",
            "location": self.describe(),
            "listable": True,
            "prefix_empty": first is None,
        }
