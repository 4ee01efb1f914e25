"""The one retry policy for transient errors (house rule 4).

Connection errors, timeouts, HTTP 5xx, 429 and S3 throttling are retried with jittered
exponential backoff and a cap; 4xx and validation errors are never retried. Adapters
classify their own exceptions with a predicate and wrap calls with ``transient_retry``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses worth a retry: throttling and server-side failures.
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def transient_retry(
    is_transient: Callable[[BaseException], bool],
    *,
    attempts: int = 5,
    max_wait_s: float = 20.0,
    max_total_s: float = 120.0,
) -> Retrying:
    """A tenacity ``Retrying`` for transient errors; the last error is re-raised as is."""
    return Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=0.5, max=max_wait_s),
        stop=stop_after_attempt(attempts) | stop_after_delay(max_total_s),
        reraise=True,
        before_sleep=before_sleep_log(log, logging.WARNING),
    )


def call_with_retry(
    fn: Callable[..., T],
    *args: Any,
    is_transient: Callable[[BaseException], bool],
    attempts: int = 5,
    **kwargs: Any,
) -> T:
    """Call ``fn(*args, **kwargs)`` under ``transient_retry``."""
    for attempt in transient_retry(is_transient, attempts=attempts):
        with attempt:
            return fn(*args, **kwargs)
    raise AssertionError("unreachable: tenacity re-raises the last error")
