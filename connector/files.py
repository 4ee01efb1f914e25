"""Atomic file writes: a reader (or a restart after a crash) never sees half a file.

Every writer in the connector that replaces a file goes through here: the data goes to a
temporary file beside the target (``.<name>.<random>.tmp``; ``atomic_write`` keeps the
target's suffix instead), is fsynced, and is renamed over the target with
``os.replace``. The temporary file is removed if anything fails, so a failed write
leaves the old file as it was.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TEMP_TRIES = 100


def _create_temp(path: Path, suffix: str) -> tuple[int, Path]:
    """A new, empty file ``.<name>.<random><suffix>`` beside ``path``, open for writing.

    It is created with mode 0o666 less the umask, as ``open()`` creates files, so the
    renamed file gets ordinary permissions (``tempfile.mkstemp`` would make it 0o600).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TEMP_TRIES):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path} after {_TEMP_TRIES} tries")


def _replace(path: Path, write: Callable[[int, Path], object], suffix: str = ".tmp") -> None:
    """``write(fd, tmp)`` into a new temporary file, fsync it, rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path, suffix)
    try:
        try:
            write(fd, tmp)
            os.fsync(fd)  # whichever descriptor wrote it: fsync flushes the file
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it
    over ``path``. ``tmp`` keeps ``path``'s suffix, so writers that infer a format from
    it (matplotlib) work; it is removed if anything fails."""
    _replace(path, lambda _fd, tmp: write(tmp), suffix=path.suffix)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_write``).

    The temporary file ends in ``.tmp``, not ``path``'s suffix, so a listing that filters
    by extension (the local pool) never takes one for an image.
    """

    def write(fd: int, _tmp: Path) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    _replace(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_write``)."""
    atomic_write_bytes(path, text.encode())
