"""Bounded concurrent reads in input order: the S3 store's ``read_many``.

A sliding window over a thread pool rather than ``ThreadPoolExecutor.map`` (which submits
the whole iterable at once): memory stays bounded by the window however long the key
stream is, and stopping early cancels what has not started.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from connector.contracts.errors import AuthError, ConfigError, ServiceUnavailable

#: Errors of a whole store, not of one item: a read that meets one stops the job, so an
#: outage never quarantines good items as unreadable.
STORE_ERRORS = (AuthError, ServiceUnavailable, ConfigError)


def raise_store_errors(
    items: Iterable[tuple[str, bytes | Exception]],
) -> Iterator[tuple[str, bytes | Exception]]:
    """``items`` (what ``read_many`` yields), raising the first error of the whole store.

    Per-item errors pass on for the caller to quarantine; a ``KeyError`` (the object was
    deleted after it was listed) becomes a ``LookupError`` whose text says so.
    """
    for key, data in items:
        if isinstance(data, STORE_ERRORS):
            raise data
        if isinstance(data, KeyError):
            yield key, LookupError(f"{key!r} was deleted from the store after it was listed")
        else:
            yield key, data


def read_many_ordered(
    read: Callable[[str], bytes], keys: Iterable[str], max_workers: int = 8
) -> Iterator[tuple[str, bytes | Exception]]:
    """``read`` each key on a thread pool, yielding ``(key, bytes or error)`` in input order.

    A sliding window: at most ``max_workers`` keys are taken from ``keys`` and in flight
    at any time, so an endless or huge iterable is fine. Stopping early cancels what has
    not started.
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    return _read_window(read, iter(keys), max_workers)


def _read_window(
    read: Callable[[str], bytes], it: Iterator[str], max_workers: int
) -> Iterator[tuple[str, bytes | Exception]]:
    window: deque[tuple[str, Future[bytes]]] = deque()
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="store-read")
    try:
        for key in it:
            window.append((key, pool.submit(read, key)))
            if len(window) >= max_workers:
                break
        while window:
            key, fut = window.popleft()
            result: bytes | Exception
            try:
                result = fut.result()
            except Exception as exc:  # handed to the caller per item, not swallowed
                result = exc
            nxt = next(it, None)
            if nxt is not None:
                window.append((nxt, pool.submit(read, nxt)))
            yield key, result
    finally:
        for _, fut in window:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
