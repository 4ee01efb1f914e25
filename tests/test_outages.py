"""Outages: the bucket stopped and restarted, the bucket answering 503 SlowDown, Label
Studio stopped and restarted mid-round. The daemon's jobs keep running, an outage past
the retry budget raises ``service_unreachable``, the log gets at most a line per job
cycle, and the rounds resume by themselves with nothing lost or pushed twice.

A service is "stopped" by a TCP relay in front of it (``Relay``: refused connections,
as with a stopped server); "503 SlowDown" is the relay answering every request with
S3's throttling error, as AWS does under load. The servers behind are the real ones.
Each test prints its recovery time (the seconds from the service coming back to the
first job that works again).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connector.ops.daemon import Daemon
from connector.rounds.context import Ports
from connector.rounds.engine import RoundEngine
from connector.state import StateDB
from connector.storage.cache import LabeledCache
from tests.fakes import DIGIT_CLASSES, FakeLabeling, PixelLearner, label_all, make_settings
from tests.test_alerts_servers import Relay

SLOWDOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    b"Content-Length: 121\r\n\r\n<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown"
    b"</Code><Message>Please reduce your request rate.</Message></Error>"
)


class SlowDownRelay(Relay):
    """A ``Relay`` that, between ``slow_down()`` and ``speed_up()``, answers every request
    on its port with 503 SlowDown instead of relaying it."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(target)
        self.refused = 0
        self._slow: socket.socket | None = None

    def slow_down(self) -> None:
        self.stop()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        self._slow = listener
        threading.Thread(target=self._answer_503, args=(listener,), daemon=True).start()

    def speed_up(self) -> None:
        if self._slow is not None:
            with contextlib.suppress(OSError):
                self._slow.shutdown(socket.SHUT_RDWR)
            self._slow.close()
            self._slow = None
        self.start()

    def _answer_503(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.refused += 1
            with contextlib.suppress(OSError):
                client.settimeout(2.0)
                client.recv(65536)  # the request line and headers
                client.sendall(SLOWDOWN)
            client.close()


class Ticker:
    """The daemon's four jobs, called as its scheduler would (through ``Daemon._job``),
    one after the other; records the log lines each outage costs."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.jobs = [
            daemon._job("list_pool", daemon.list_pool),
            daemon._job("poll", daemon.poll),
            daemon._job("round", daemon.round_step),
            daemon._job("watch", daemon.watch),
        ]

    def tick(self) -> None:
        for job in self.jobs:
            job()

    def until(self, done: Callable[[], bool], timeout_s: float) -> float:
        t0 = time.monotonic()
        while not done():
            assert time.monotonic() - t0 < timeout_s, "did not recover in time"
            self.tick()
            time.sleep(0.2)
        return time.monotonic() - t0


def _s3_engine(tmp_path: Path, store: Any) -> tuple[RoundEngine, FakeLabeling]:
    settings = make_settings(
        tmp_path, strategy={"batch_size": 10}, validation={"size": 10}, alerts={}
    )
    labeling = FakeLabeling(DIGIT_CLASSES)
    ports = Ports(
        StateDB(settings.db_path()),
        store,
        labeling,
        LabeledCache(settings.cache_dir(), max_bytes=50_000_000),
    )
    return RoundEngine(settings, ports, PixelLearner(), DIGIT_CLASSES), labeling


def _phase(state: StateDB) -> str | None:
    rnd = state.current_round()
    return None if rnd is None else rnd.phase.value


def _warnings(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.mark.s3
@pytest.mark.parametrize("fault", ["stopped", "slowdown"])
def test_bucket_outage_mid_round_resumes_with_nothing_lost(
    tmp_path: Path,
    s3_server: str,
    s3_client: Any,
    s3_bucket: str,
    s3_store_factory: Any,
    digit_objects: Any,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    objects, truth = digit_objects
    for key in list(objects)[:60]:
        s3_client.put_object(Bucket=s3_bucket, Key="pool/" + key, Body=objects[key])
    host, port = s3_server.split("//")[1].split(":")
    relay = SlowDownRelay((host, int(port)))
    relay.start()
    store = s3_store_factory(s3_bucket, endpoint_url=f"http://127.0.0.1:{relay.port}")
    engine, labeling = _s3_engine(tmp_path, store)
    state = engine.state
    ticker = Ticker(Daemon(engine.settings, engine))
    try:
        ticker.until(lambda: _phase(state) == "WAIT", 60)
        assert len(labeling.tasks) == 20  # validation 10 + batch 10
        label_all(labeling, truth)

        # The bucket goes away just as round 1 starts (INGEST -> TRAIN reads it).
        if fault == "stopped":
            relay.stop()
        else:
            relay.slow_down()
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="connector")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 8.0:
            ticker.tick()
            time.sleep(0.2)
        ticks_down = time.monotonic() - t0
        lines = _warnings(caplog)
        assert fault == "stopped" or relay.refused > 0
        rnd = state.current_round()
        assert rnd is not None and rnd.round == 1 and rnd.phase.value != "FAILED"
        assert [a for a in state.alerts() if a["kind"] == "service_unreachable"]
        assert state.count_items().get("corrupt", 0) == 0, "an outage quarantined good items"
        # A line when each job first fails, one for the alert; none per try or per tick.
        assert lines <= 8, [r.getMessage() for r in caplog.records if r.levelno >= 30]

        if fault == "stopped":
            relay.start()
        else:
            relay.speed_up()
        recovery = ticker.until(
            lambda: (
                _phase(state) == "WAIT"
                and not [a for a in state.alerts() if a["kind"] == "service_unreachable"]
            ),
            60,
        )
        print(
            f"\nbucket {fault}: {lines} warning lines in {ticks_down:.0f} s of outage; "
            f"round 1 back at WAIT {recovery:.1f} s after the bucket came back"
        )
        assert len(labeling.tasks) == 30 and labeling.import_calls >= 2
        assert state.count_items().get("corrupt", 0) == 0
        assert state.count_items().get("labeled", 0) == 20
    finally:
        relay.stop()
