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
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses worth a retry: throttling and server-side failures.
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    """tenacity's ``before_sleep``: one WARNING line per retry, naming the call."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        cause = f"{type(exc).__name__}: {exc}"[:200] if exc is not None else "no error"
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.2f s",
            what,
            state.attempt_number,
            cause,
            wait,
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
) -> T:
    """``fn()``, retried while it fails with an error ``is_transient`` accepts.

    ``what`` names the call in the retry log lines (``"S3: GET s3://bucket/key"``). Waits
    are jittered exponential, each at most ``max_wait_s``; at most ``attempts`` tries and
    ``max_total_s`` seconds in all. The last error (or the first that is not transient)
    goes through ``translate``, which returns the error to raise in its place (chained
    ``from`` it) or the same error to let it through unchanged. Only ``Exception`` is
    caught: ``KeyboardInterrupt`` and the like pass untouched.
    """
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=0.5, max=max_wait_s),
        stop=stop_after_attempt(attempts) | stop_after_delay(max_total_s),
        reraise=True,
        before_sleep=_log_retry(what),
    )
    try:
        for attempt in retrying:
            with attempt:
                return fn()
    except Exception as exc:
        err = translate(exc)
        if err is exc:
            raise
        raise err from exc
    raise AssertionError("unreachable: tenacity re-raises the last error")
