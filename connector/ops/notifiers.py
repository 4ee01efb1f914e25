"""Where alerts go: the log always, and the services the settings name.

- ``webhook``: a generic JSON POST (kind, severity, message, items, tasks, round,
  first_seen, last_seen, resolved_at, state) for a receiver of one's own;
- ``slack``: a Slack-compatible incoming webhook, a JSON body with ``text`` (Mattermost
  and Teams workflows take the same);
- ``apprise``: any service Apprise knows (e-mail, Telegram, ntfy, ...), one URL each.

The two webhooks are a JSON POST with urllib: a library for that would add more than it
saves. Every call goes through the project's one retry policy (``connector.retry``) with
a timeout; the caller leaves a failed one for the next watch. URLs are secrets: they are
never logged or put into an error (an error names the notifier, not its URL).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connector import retry
from connector.retry import TRANSIENT_HTTP_STATUS
from connector.settings import AlertSettings

log = logging.getLogger(__name__)


class NotifyError(Exception):
    """A notifier did not take the alert (its message names the notifier only)."""


@dataclass
class Notifier:
    """One destination: ``send(alert)`` raises ``NotifyError`` when it did not take it."""

    name: str
    _send: Callable[[dict[str, Any]], None] = field(repr=False)
    timeout_s: float = 10.0
    attempts: int = 3

    def __repr__(self) -> str:  # never the URL
        return f"Notifier({self.name})"

    def send(self, alert: dict[str, Any]) -> None:
        retry.call(
            lambda: self._send(alert),
            what=f"alert notifier {self.name}",
            is_transient=_is_transient,
            translate=lambda exc: NotifyError(f"notifier {self.name}: {_describe(exc)}"),
            attempts=self.attempts,
            max_wait_s=2.0,
            max_total_s=3 * self.timeout_s,
        )


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in TRANSIENT_HTTP_STATUS
    return isinstance(exc, (OSError, TimeoutError))


def _describe(exc: BaseException) -> str:
    """The error without the URL (``URLError`` reprs can carry it)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}"[:200]
    return f"{type(exc).__name__}"


def text_of(alert: dict[str, Any]) -> str:
    """One line a person reads in a chat: state, severity, kind, message."""
    state = "RESOLVED" if alert.get("resolved_at") else alert["severity"].upper()
    where = f" (round {alert['round']})" if alert.get("round") is not None else ""
    return f"[al-connector {state}] {alert['kind']}{where}: {alert['message']}"


def payload_of(alert: dict[str, Any]) -> dict[str, Any]:
    """The generic webhook's JSON body."""
    keys = ("id", "kind", "severity", "message", "items", "tasks", "round")
    times = ("first_seen", "last_seen", "resolved_at")
    return {
        **{k: alert.get(k) for k in keys + times},
        "state": "resolved" if alert.get("resolved_at") else "open",
        "text": text_of(alert),
    }


def _post_json(url: str, body: dict[str, Any], timeout_s: float) -> None:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "al-connector"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        resp.read()


def _apprise_sender(urls: list[str], timeout_s: float) -> Callable[[dict[str, Any]], None]:
    import apprise  # imported on use: it is only needed when apprise_urls are set

    bundle = apprise.Apprise()
    for url in urls:
        if not bundle.add(url):
            raise NotifyError(
                "an [alerts] apprise_urls entry is not a URL Apprise understands; see "
                "https://github.com/caronc/apprise/wiki for the forms"
            )

    def send(alert: dict[str, Any]) -> None:
        title = f"al-connector: {alert['kind']}"
        if not bundle.notify(body=alert["message"], title=title):
            raise OSError("apprise could not deliver to every URL")

    return send


def build_notifiers(settings: AlertSettings) -> list[Notifier]:
    """The notifiers the settings name (the log is not one: ``deliver`` always logs)."""
    t = settings.notify_timeout_s
    out: list[Notifier] = []
    if settings.webhook_url is not None:
        url = settings.webhook_url.get_secret_value()
        out.append(Notifier("webhook", lambda a: _post_json(url, payload_of(a), t), t))
    if settings.slack_webhook_url is not None:
        slack = settings.slack_webhook_url.get_secret_value()
        out.append(Notifier("slack", lambda a: _post_json(slack, {"text": text_of(a)}, t), t))
    if settings.apprise_urls:
        urls = [u.get_secret_value() for u in settings.apprise_urls]
        out.append(Notifier("apprise", _apprise_sender(urls, t), t))
    return out
