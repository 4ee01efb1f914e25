"""Prometheus metrics of the connector, and the HTTP server for /metrics, /healthz, /readyz.

Gauges are refreshed from the state db by ``Metrics.refresh`` (the db is the truth, so a
restarted process reports the same figures). A private registry keeps tests independent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from connector.state import ITEM_STATUSES, PHASE_ORDER, AlertKind, StateDB, utcnow

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.items = Gauge("alc_items", "Pool items by lifecycle status", ["status"], registry=r)
        self.round = Gauge("alc_round", "Current round number", registry=r)
        self.phase = Gauge(
            "alc_round_phase", "1 for the current round's phase", ["phase"], registry=r
        )
        self.batch_done = Gauge("alc_batch_done", "Items of the current batch done", registry=r)
        self.batch_total = Gauge("alc_batch_total", "Items in the current batch", registry=r)
        self.val_acc = Gauge(
            "alc_validation_accuracy",
            "Accuracy on the random validation split, last trained round",
            registry=r,
        )
        self.alerts_unsent = Gauge("alc_alerts_unsent", "Alerts not yet delivered", registry=r)
        self.alerts_open = Gauge(
            "alc_alerts_open", "Open alerts (condition still holds) by kind", ["kind"], registry=r
        )
        self.queue_depth = Gauge(
            "alc_queue_depth", "Tasks waiting in Label Studio (queued items)", registry=r
        )
        self.phase_seconds = Gauge(
            "alc_round_phase_seconds",
            "Wall time of each finished phase of the current round",
            ["phase"],
            registry=r,
        )
        self.phase_age = Gauge(
            "alc_round_phase_age_seconds",
            "Seconds the current round has been in its phase",
            registry=r,
        )
        self.errors = Counter(
            "alc_errors", "Job errors by kind (exception class)", ["kind"], registry=r
        )
        self.service_up = Gauge(
            "alc_service_up",
            "1 if the last call to the service succeeded",
            ["service"],
            registry=r,
        )
        #: Unix time of the last successful label poll (0: none yet).
        self.last_good_poll = 0.0
        self.since_poll = Gauge(
            "alc_seconds_since_last_good_poll",
            "Seconds since Label Studio was last polled successfully (+Inf: never)",
            registry=r,
        )
        self.since_poll.set_function(
            lambda: time.time() - self.last_good_poll if self.last_good_poll else float("inf")
        )
        self.job_runs = Counter(
            "alc_job_runs", "Daemon job runs", ["job_name", "outcome"], registry=r
        )
        self.last_success = Gauge(
            "alc_job_last_success_timestamp_seconds",
            "Unix time of each job's last success",
            ["job_name"],
            registry=r,
        )
        self.heartbeat = Gauge(
            "alc_heartbeat_timestamp_seconds", "Last daemon heartbeat", registry=r
        )

    def refresh(self, state: StateDB) -> None:
        counts = state.count_items()
        for status, n in counts.items():
            if status in ITEM_STATUSES:
                self.items.labels(status).set(n)
        self.queue_depth.set(counts.get("queued", 0))
        open_alerts = state.open_alert_counts()
        for kind in AlertKind:
            self.alerts_open.labels(kind.value).set(open_alerts.get(kind.value, 0))
        self.alerts_unsent.set(len(state.unsent_alerts()))
        current = state.current_round()
        if current is None:
            return
        self.phase_age.set((utcnow() - current.phase_at).total_seconds())
        for phase, seconds in (current.metrics.get("phase_seconds") or {}).items():
            self.phase_seconds.labels(phase).set(seconds)
        self.round.set(current.round)
        for phase in [*PHASE_ORDER]:
            self.phase.labels(phase.value).set(1 if phase is current.phase else 0)
        done, total = state.batch_progress(current.round)
        self.batch_done.set(done)
        self.batch_total.set(total)
        for rnd in reversed(state.rounds()):
            acc = (rnd.metrics.get("validation") or {}).get("accuracy")
            if acc is not None:
                self.val_acc.set(acc)
                break

    def error(self, exc: BaseException) -> None:
        self.errors.labels(type(exc).__name__).inc()

    def job_done(self, job: str, ok: bool) -> None:
        self.job_runs.labels(job, "ok" if ok else "error").inc()
        if ok:
            self.last_success.labels(job).set(time.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """/healthz: the process is alive and its heartbeat is fresh; /readyz: the services
    answered the last check; /metrics: Prometheus text format."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        *,
        alive: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        handler = self._handler(metrics, alive, ready)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, daemon=True, name="health-server"
        )

    @staticmethod
    def _handler(
        metrics: Metrics, alive: Callable[[], bool], ready: Callable[[], bool]
    ) -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    ok = alive()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"stale\n")
                elif self.path == "/readyz":
                    ok = ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("health server: " + fmt, *args)

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
