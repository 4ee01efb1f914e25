"""The one retry policy for transient errors (house rule 4), and the one wrapper that
applies it.

Connection errors, timeouts, HTTP 5xx, 429 and S3 throttling are retried with jittered
exponential backoff, an attempt cap and a total-time cap; 4xx and validation errors are
never retried. Each adapter wraps its calls with ``call``, giving its own predicate for
what is transient and its own translation of the final error into the connector's errors
(``connector.contracts.errors``), whose messages name the fix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses worth a retry: throttling and server-side failures.
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class Outages:
    """Which services are failing now, so that an outage logs one line, not one per try.

    Many calls fail at once when a service goes down (eight parallel reads, four jobs),
    each retrying five times: logged per try that was about 1,000 lines a minute. The
    first retry of a service logs a WARNING and opens its outage; later retries of any
    call to it log at DEBUG; the first call that succeeds again logs one INFO line with
    how long it lasted and how many retries it took. Each store and client holds one
    (``call(outages=...)``); within it the service is the part of ``what`` before the
    first colon (``"S3"``, ``"Label Studio"``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, tuple[float, int]] = {}  # service -> (since, retries)

    def retried(self, service: str) -> bool:
        """Count a retry; True if it opened the outage (log it loudly)."""
        with self._lock:
            since, n = self._open.get(service, (time.monotonic(), 0))
            self._open[service] = (since, n + 1)
            return n == 0

    def succeeded(self, service: str) -> tuple[float, int] | None:
        """Close the service's outage; ``(seconds, retries)`` if one was open."""
        if service not in self._open:  # unlocked fast path: the common case
            return None
        with self._lock:
            opened = self._open.pop(service, None)
        return None if opened is None else (time.monotonic() - opened[0], opened[1])


OUTAGES = Outages()


def _service(what: str) -> str:
    return what.split(":", 1)[0]


def _log_retry(what: str, outages: Outages) -> Callable[[RetryCallState], None]:
    """tenacity's ``before_sleep``: a WARNING when a service starts failing, else DEBUG."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        cause = f"{type(exc).__name__}: {exc}"[:200] if exc is not None else "no error"
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        first = outages.retried(_service(what))
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "%s: attempt %d failed (%s); retrying in %.2f s%s",
            what,
            state.attempt_number,
            cause,
            wait,
            " (further retries are logged at DEBUG until it answers again)" if first else "",
        )

    return before_sleep


def call(
    fn: Callable[[], T],
    *,
    what: str,
    is_transient: Callable[[BaseException], bool],
    translate: Callable[[Exception], BaseException],
    attempts: int = 5,
    max_wait_s: float = 20.0,
    max_total_s: float = 120.0,
    outages: Outages = OUTAGES,
) -> T:
    """``fn()``, retried while it fails with an error ``is_transient`` accepts.

    ``what`` names the call in the retry log lines (``"S3: GET s3://bucket/key"``). Waits
    are jittered exponential, each at most ``max_wait_s``; at most ``attempts`` tries and
    ``max_total_s`` seconds in all. The last error (or the first that is not transient)
    goes through ``translate``, which returns the error to raise in its place (chained
    ``from`` it) or the same error to let it through unchanged. ``outages`` is the
    caller's log gate (see ``Outages``). Only ``Exception`` is
    caught: ``KeyboardInterrupt`` and the like pass untouched.
    """
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=0.5, max=max_wait_s),
        stop=stop_after_attempt(attempts) | stop_after_delay(max_total_s),
        reraise=True,
        before_sleep=_log_retry(what, outages),
    )
    try:
        for attempt in retrying:
            with attempt:
                out = fn()
            outcome = attempt.retry_state.outcome
            if outcome is None or outcome.failed:
                continue  # tenacity decides: another try, or it re-raises
            outage = outages.succeeded(_service(what))
            if outage is not None:
                log.info("%s answers again after %.1f s (%d retries)", what, *outage)
            return out
    except Exception as exc:
        err = translate(exc)
        if err is exc:
            raise
        raise err from exc
    raise AssertionError("unreachable: tenacity re-raises the last error")


def until_up(
    fn: Callable[[], T],
    *,
    what: str,
    is_transient: Callable[[BaseException], bool],
    max_wait_s: float = 60.0,
) -> T:
    """``fn()``, tried until it does not fail with an error ``is_transient`` accepts.

    For a daemon's start-up, where the services may come up after it: ``fn`` runs its
    own bounded retries (``call``), so each failure here is one retry cycle and logs one
    WARNING with the error, which names the fix. Waits are jittered exponential up to
    ``max_wait_s``; there is no cap on tries (a signal stops the wait).
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s: waiting for the services (%s); next try in %.0f s", what, exc, wait)

    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=1.0, max=max_wait_s),
        stop=stop_never,
        reraise=True,
        before_sleep=before_sleep,
    )
    return retrying(fn)
