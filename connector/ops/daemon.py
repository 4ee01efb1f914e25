"""The long-running daemon: APScheduler jobs, signals, heartbeat, graceful stop.

No business logic lives here: each job calls one ``RoundEngine`` method. Jobs never
overlap with themselves (``max_instances=1``, ``coalesce=True``). The first SIGTERM or
SIGINT stops at a safe point (the running phase finishes and is committed; no new phase
starts); a second one stops now (the state db is consistent at every commit, so the
next start resumes).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeVar

from apscheduler.schedulers.background import BackgroundScheduler

from connector.contracts.errors import ConnectorError, ServiceUnavailable
from connector.ops import alerts
from connector.ops.metrics import HealthServer, Metrics
from connector.ops.notifiers import Notifier, build_notifiers
from connector.rounds import report
from connector.rounds.engine import RoundEngine
from connector.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The round job looks for work this often; the work itself is gated by triggers.
ROUND_TICK_S = 5.0


@dataclass
class Services:
    """Whether the last call to each service succeeded: ``/readyz`` answers from it."""

    up: dict[str, bool] = field(default_factory=dict)

    def ready(self) -> bool:
        return all(self.up.get(name, False) for name in alerts.SERVICES)


@dataclass
class Daemon:
    settings: Settings
    engine: RoundEngine
    metrics: Metrics = field(default_factory=Metrics)
    stop_event: threading.Event = field(default_factory=threading.Event)
    #: Called (best effort) on a second signal, just before the process exits, e.g. to
    #: stop child servers the process started (the demo's Label Studio).
    on_force_stop: list[Callable[[], None]] = field(default_factory=list)
    services: Services = field(default_factory=Services)
    _signals: int = 0
    _heartbeat: float = field(default_factory=time.time)
    _notifiers: list[Notifier] | None = None
    _last_error: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ jobs
    def _job(self, name: str, fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            if self.stop_event.is_set():
                return
            try:
                fn()
            except ConnectorError as exc:
                # A clear, user-facing error (service down, bad token): log it plainly.
                self._log_once(name, logging.ERROR, f"{name} job failed: {exc}")
                self.metrics.job_done(name, ok=False)
                return
            except Exception:
                self.metrics.job_done(name, ok=False)
                log.exception("%s job failed; it runs again on its schedule", name)
                return
            if self._last_error.pop(name, None) is not None:
                log.info("%s job works again", name)
            self.metrics.job_done(name, ok=True)
            self._heartbeat = time.time()
            self.metrics.heartbeat.set(self._heartbeat)

        return run

    def _log_once(self, key: str, level: int, message: str) -> None:
        """Log ``message``, at DEBUG while it repeats under ``key``: an outage fails every
        tick of a job the same way, and a line per tick would bury the log."""
        again = self._last_error.get(key) == message
        self._last_error[key] = message
        log.log(logging.DEBUG if again else level, "%s", message)

    def _call(self, service: str, fn: Callable[[], T]) -> T:
        """``fn()``, a call to ``service``: its outcome is the service's readiness, and a
        failure past the retry policy raises ``service_unreachable`` (resolved by the next
        call that succeeds)."""
        state = self.engine.state
        try:
            out = fn()
        except Exception as exc:
            self.services.up[service] = False
            self.metrics.service_up.labels(service).set(0)
            self.metrics.error(exc)
            if isinstance(exc, ServiceUnavailable):
                alerts.service_failed(state, service, str(exc))
            raise
        self.services.up[service] = True
        self.metrics.service_up.labels(service).set(1)
        alerts.service_ok(state, service)
        return out

    def poll(self) -> None:
        self._call("label_studio", self.engine.poll_labels)
        self.metrics.last_good_poll = time.time()

    def list_pool(self) -> None:
        self._call("storage", self.engine.list_pool)

    def round_step(self) -> None:
        before = self.engine.state.current_round()
        after = self.engine.step()
        if after is not None and (before is None or after != before):
            report.summarise(self.engine.state, self.engine.rounds_dir, self.settings.stopping)

    def watch(self) -> None:
        """Probe both services, look for deleted tasks, raise and resolve alerts, deliver
        them, refresh the metrics. A service that fails here does not stop the rest."""
        state = self.engine.state
        ports = self.engine.ports
        probes: list[tuple[str, Callable[[], Any]]] = [
            ("label_studio", lambda: alerts.check_missing_tasks(state, ports.labeling)),
            ("storage", lambda: next(iter(ports.store.list_objects(None)), None)),
        ]
        for service, probe in probes:
            try:
                self._call(service, probe)
            except Exception as exc:  # already counted and alerted by _call
                message = f"watch: {alerts.SERVICES[service]} check failed: {exc}"
                self._log_once(f"watch:{service}", logging.WARNING, message)
                continue
            if self._last_error.pop(f"watch:{service}", None) is not None:
                log.info("watch: %s answers again", alerts.SERVICES[service])
        alerts.detect(state, self.settings.alerts)
        if self._notifiers is None:
            self._notifiers = build_notifiers(self.settings.alerts)
        alerts.deliver(state, self._notifiers, self.settings.alerts)
        self.metrics.refresh(state)

    def run_once(self) -> dict[str, Any]:
        """One pass of every job, in order, for tests and cron users (``run --once``)."""
        self.engine.recover()
        self.list_pool()
        self.poll()
        self.round_step()
        self.watch()
        return self.engine.status()

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Run until a signal; returns after a graceful stop."""
        self._install_signals()
        self.engine.should_stop = lambda rnd: self.stop_event.is_set()
        self.engine.recover()
        server = self._start_server()
        polling = self.settings.polling
        scheduler = BackgroundScheduler(
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 60}
        )
        jobs = [
            ("list_pool", self.list_pool, polling.storage_seconds),
            ("poll", self.poll, polling.label_studio_seconds),
            ("round", self.round_step, ROUND_TICK_S),
            ("watch", self.watch, polling.watch_seconds),
        ]
        for name, fn, seconds in jobs:
            scheduler.add_job(
                self._job(name, fn),
                "interval",
                seconds=seconds,
                id=name,
                next_run_time=_now_for_scheduler(),
            )
        scheduler.start()
        log.info(
            "al-connector running: pool %s, state %s",
            self.engine.ports.store.describe(),
            self.settings.state.dir,
        )
        try:
            while not self.stop_event.wait(1.0):
                pass
        finally:
            log.info("stopping at a safe point (a second signal stops now)")
            scheduler.shutdown(wait=True)
            if server is not None:
                server.stop()
            self.engine.state.close()
            log.info("stopped")

    def _start_server(self) -> HealthServer | None:
        port = self.settings.server.port
        if port is None:
            return None
        stale_after = 3 * max(self.settings.polling.label_studio_seconds, ROUND_TICK_S) + 600
        server = HealthServer(
            self.settings.server.host,
            port,
            self.metrics,
            alive=lambda: time.time() - self._heartbeat < stale_after,
            ready=self.services.ready,
        )
        server.start()
        log.info("health and metrics on http://%s:%d/", self.settings.server.host, server.port)
        return server

    def _install_signals(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals == 1:
                log.warning("signal %d: finishing the current phase, then stopping", signum)
                self.stop_event.set()
            else:
                log.warning("second signal: stopping now")
                for stop in self.on_force_stop:
                    try:
                        stop()
                    except Exception:  # best effort on the way out; the exit still happens
                        log.exception("cleanup on a forced stop failed")
                os._exit(130)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def _now_for_scheduler() -> Any:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
