"""Each alert kind raised by a real scenario on the real servers (the session's Label
Studio, moto's S3 over HTTP) and resolved when it clears; /readyz while Label Studio is
down. Label Studio is "stopped" by closing a TCP relay in front of it: the connector sees
refused connections, as with a stopped server, and the session's server lives on for the
other tests.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from connector.devtools.datasets import LabeledImage
from connector.ops.metrics import HealthServer
from connector.state import SelectedItem
from tests.fixtures.s3 import upload_digits
from tests.servers import server_daemon
from tests.test_alerts import Receiver

pytestmark = [pytest.mark.labelstudio, pytest.mark.s3]


class Relay:
    """A TCP relay on a fixed loopback port to ``target``; ``stop()`` refuses connections
    (and cuts open ones) until ``start()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown wakes the thread blocked in accept() (close alone does not, on Linux)
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def _open(state: Any, kind: str) -> list[dict[str, Any]]:
    return [a for a in state.alerts() if a["kind"] == kind]


def _readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_alert_kinds_on_real_servers(
    tmp_path: Path,
    label_studio: Any,
    ls_client: Any,
    s3_server: str,
    s3_client: Any,
    s3_bucket: str,
    digits_dir: tuple[Path, list[LabeledImage]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upload_digits(s3_client, s3_bucket, "pool/", digits_dir, limit=60)
    truth = {img.key: img.label for img in digits_dir[1]}
    host, port = label_studio.url.split("//")[1].split(":")
    relay = Relay((host, int(port)))
    relay.start()
    receiver = Receiver()
    extra = (
        f'[alerts]\ntask_stall_hours = 0.0005\nwebhook_url = "{receiver.url}/hook"\n'
        f'slack_webhook_url = "{receiver.url}/slack"\n'
    )
    daemon = server_daemon(
        tmp_path,
        label_studio,
        s3_server,
        s3_bucket,
        monkeypatch,
        title="alc-alerts",
        batch_size=10,
        extra=extra,
        ls_url=f"http://127.0.0.1:{relay.port}",
    )
    engine = daemon.engine
    state = engine.state
    adapter: Any = engine.ports.labeling
    server = HealthServer(
        "127.0.0.1", 0, daemon.metrics, alive=lambda: True, ready=daemon.services.ready
    )
    server.start()
    try:
        daemon.run_once()
        assert _readyz(server.port) == 200
        open_tasks = adapter.open_tasks()
        assert len(open_tasks) == 20  # the validation split's 10, then the batch's 10

        # a batch left unannotated: task_stalled, naming the tasks
        time.sleep(2.0)
        daemon.watch()
        (stall,) = _open(state, "task_stalled")
        assert (
            len(stall["items"]) == 20
            and "items requeue --stalled --older-than 1s" in stall["message"]
        )

        # a task deleted by hand: task_missing; the item is back in the pool
        gone_item, gone_task = open_tasks[-1]
        ls_client.tasks.delete(id=gone_task)
        daemon.watch()
        (missing,) = _open(state, "task_missing")
        assert missing["items"] == [gone_item] and missing["tasks"] == [gone_task]
        assert state.item(gone_item).status == "missing"  # type: ignore[union-attr]
        assert gone_item in set(state.iter_candidate_ids())
        assert state.batch_progress(0)[1] == 19

        # a forced re-push of a labeled item: refused, alerted, no second task
        item, task_id = open_tasks[0]
        adapter.annotate_task(task_id, truth[item])
        daemon.poll()
        rnd = state.start_round(trigger="admin", plan=engine.resolve_plan().to_json())
        state.freeze_selection(rnd.round, [SelectedItem(0, item, "train", 1.0, None, None)])
        engine.resume(rnd.round)
        (refused,) = _open(state, "item_requeued")
        assert refused["items"] == [item] and refused["severity"] == "error"
        assert len(adapter.ls.lookup([item])[item]) == 1
        assert state.item(item).status == "labeled"  # type: ignore[union-attr]

        # a stopped Label Studio: /readyz 503 and service_unreachable; back: resolved
        relay.stop()
        with pytest.raises(Exception, match="did not answer"):
            daemon.poll()
        assert _readyz(server.port) == 503
        (down,) = _open(state, "service_unreachable")
        assert "`al-connector check`" in down["message"]
        daemon.watch()  # the watch goes on without Label Studio and delivers the alert
        relay.start()
        daemon.poll()
        daemon.watch()
        assert _readyz(server.port) == 200
        assert not _open(state, "service_unreachable")

        # the batch annotated: the stall clears; the deleted task's alert stays open until
        # its item is pushed again (or excluded)
        for it, tid in adapter.open_tasks():
            adapter.annotate_task(tid, truth[it])
        daemon.poll()
        daemon.watch()
        assert not _open(state, "task_stalled") and _open(state, "task_missing")
        kinds = {b["kind"] for b in receiver.bodies["/hook"]}
        assert kinds == {"task_stalled", "task_missing", "item_requeued", "service_unreachable"}
        assert all(set(b) == {"text"} for b in receiver.bodies["/slack"])
        resolved = {b["kind"] for b in receiver.bodies["/hook"] if b["state"] == "resolved"}
        assert {"task_stalled", "service_unreachable"} <= resolved
    finally:
        server.stop()
        relay.stop()
        receiver.close()
