"""Alerts with the in-memory fakes: lifetimes (raised, seen again, resolved), the
notifiers against a real HTTP receiver on loopback, re-notification, readiness and the
metrics. The same kinds against the real servers: ``test_alerts_servers.py``."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector.cli import main
from connector.ops import alerts
from connector.ops.daemon import Daemon
from connector.ops.metrics import HealthServer
from connector.ops.notifiers import build_notifiers
from connector.settings import AlertSettings
from connector.state import SelectedItem, StateDB, iso, utcnow
from tests.fakes import build, label_all


class Receiver:
    """An HTTP receiver on loopback: records each POSTed JSON body by path; answers the
    status in ``codes[path]`` (200 by default)."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict[str, Any]]] = {}
        self.codes: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code = receiver.codes.get(self.path, 200)
                if code == 200:
                    receiver.bodies.setdefault(self.path, []).append(body)
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _settings(receiver: Receiver, **over: Any) -> AlertSettings:
    return AlertSettings(
        webhook_url=f"{receiver.url}/hook?token=s3cret",  # type: ignore[arg-type]
        slack_webhook_url=f"{receiver.url}/slack/T000/B000/s3cret",  # type: ignore[arg-type]
        notify_timeout_s=2,
        **over,
    )


def test_both_notifiers_get_an_alert_once_then_its_resolution(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    state = StateDB(tmp_path / "s.db")
    settings = _settings(receiver)
    notifiers = build_notifiers(settings)
    caplog.set_level(logging.DEBUG)
    alerts.service_failed(state, "label_studio", "ConnectError: refused")
    assert alerts.deliver(state, notifiers, settings) == 1
    assert alerts.deliver(state, notifiers, settings) == 0  # not on every watch
    (hook,) = receiver.bodies["/hook?token=s3cret"]
    assert hook["kind"] == "service_unreachable" and hook["severity"] == "error"
    assert hook["state"] == "open" and hook["first_seen"] and hook["resolved_at"] is None
    assert {"items", "tasks", "round", "last_seen", "message"} <= set(hook)
    (slack,) = receiver.bodies["/slack/T000/B000/s3cret"]
    assert set(slack) == {"text"} and "service_unreachable" in slack["text"]
    assert "`al-connector check`" in slack["text"]

    alerts.service_ok(state, "label_studio")
    assert alerts.deliver(state, notifiers, settings) == 1
    resolved = receiver.bodies["/hook?token=s3cret"][-1]
    assert resolved["state"] == "resolved" and resolved["resolved_at"]
    assert receiver.bodies["/slack/T000/B000/s3cret"][-1]["text"].startswith(
        "[al-connector RESOLVED]"
    )
    assert "s3cret" not in caplog.text  # webhook URLs are secrets


def test_apprise_urls_deliver_through_apprise(tmp_path: Path, receiver: Receiver) -> None:
    # Apprise's json:// service POSTs {title, message, type} to the URL: a local receiver.
    port = receiver.url.rsplit(":", 1)[1]
    settings = AlertSettings(
        apprise_urls=[f"json://127.0.0.1:{port}/apprise"],  # type: ignore[list-item]
        notify_timeout_s=2,
    )
    state = StateDB(tmp_path / "s.db")
    notifiers = build_notifiers(settings)
    assert [n.name for n in notifiers] == ["apprise"]
    alerts.service_failed(state, "label_studio", "ConnectError: refused")
    assert alerts.deliver(state, notifiers, settings) == 1
    (body,) = receiver.bodies["/apprise"]
    assert body["title"] == "al-connector: service_unreachable"
    assert "unreachable" in body["message"] and "`al-connector check`" in body["message"]


def test_a_failing_notifier_is_retried_alone_and_never_stops_the_loop(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    state = StateDB(tmp_path / "s.db")
    settings = _settings(receiver)
    notifiers = build_notifiers(settings)
    receiver.codes["/hook?token=s3cret"] = 503  # transient: retried, then left for later
    state.add_alert("task_stalled", "k", "round 0: 3 task(s) open")
    assert alerts.deliver(state, notifiers, settings) == 1
    assert "/hook?token=s3cret" not in receiver.bodies
    assert len(receiver.bodies["/slack/T000/B000/s3cret"]) == 1
    assert "notifier webhook: HTTP 503" in caplog.text and "s3cret" not in caplog.text
    receiver.codes.clear()
    alerts.deliver(state, notifiers, settings)
    assert len(receiver.bodies["/hook?token=s3cret"]) == 1
    assert len(receiver.bodies["/slack/T000/B000/s3cret"]) == 1  # slack had it already
    # A receiver that is gone altogether: the watch goes on.
    receiver.close()
    state.add_alert("round_stalled", "k2", "round 0 has waited")
    assert alerts.deliver(state, notifiers, settings) == 1
    assert [a["kind"] for a in state.alerts() if a["retry_notifiers"]] == ["round_stalled"]


def test_an_ongoing_condition_is_renotified_on_its_schedule(
    tmp_path: Path, receiver: Receiver
) -> None:
    state = StateDB(tmp_path / "s.db")
    settings = _settings(receiver, renotify_minutes=60)
    notifiers = build_notifiers(settings)
    state.add_alert("task_stalled", "stall", "m")
    state.add_alert("item_requeued", "requeue", "m", items=["a.png"])
    alerts.deliver(state, notifiers, settings)
    assert state.add_alert("task_stalled", "stall", "m again") is False  # seen again
    assert alerts.deliver(state, notifiers, settings) == 0
    with state.tx() as c:  # an hour and more later
        c.execute("UPDATE alerts SET sent_at = ?", (iso(utcnow() - timedelta(minutes=61)),))
    assert alerts.deliver(state, notifiers, settings) == 1  # the condition, not the event
    bodies = receiver.bodies["/hook?token=s3cret"]
    assert [b["kind"] for b in bodies] == ["task_stalled", "item_requeued", "task_stalled"]
    assert bodies[-1]["message"] == "m again"


def _started(tmp_path: Path, digit_objects: Any) -> tuple[Daemon, Any, dict[str, str]]:
    """A daemon on the fakes whose cold-start round has pushed its batch."""
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    daemon = Daemon(engine.settings, engine)
    daemon.run_once()
    return daemon, labeling, truth


def test_task_deleted_by_hand_goes_missing_back_to_the_pool_and_clears(
    tmp_path: Path, digit_objects: Any
) -> None:
    daemon, labeling, truth = _started(tmp_path, digit_objects)
    engine = daemon.engine
    gone = sorted(labeling.tasks)[:2]
    for key in gone:
        del labeling.tasks[key]  # deleted in Label Studio by hand
    daemon.watch()
    assert {engine.state.item(k).status for k in gone} == {"missing"}  # type: ignore[union-attr]
    assert engine.state.batch_progress(0) == (0, 48)
    assert set(gone) <= set(engine.state.iter_candidate_ids())
    (alert,) = [a for a in engine.state.alerts() if a["kind"] == "task_missing"]
    assert sorted(alert["items"]) == gone and len(alert["tasks"]) == 2
    # the fix the message names works on a missing item
    assert "`al-connector items exclude KEY`" in alert["message"]
    label_all(labeling, truth)
    daemon.run_once()  # round 1 may pick them again; when it does, the alert clears
    repushed = [k for k in gone if engine.state.item(k).status != "missing"]  # type: ignore[union-attr]
    open_missing = [a for a in engine.state.alerts() if a["kind"] == "task_missing"]
    assert bool(open_missing) == (len(repushed) < 2)


def test_a_task_id_that_now_holds_another_item_counts_as_missing(
    tmp_path: Path, digit_objects: Any
) -> None:
    daemon, labeling, _ = _started(tmp_path, digit_objects)
    engine = daemon.engine
    gone = sorted(labeling.tasks)[0]
    # deleted by hand, and the next import (another item) got its id
    labeling.tasks["pool/intruder.png"] = replace(labeling.tasks.pop(gone), item_id="x")
    daemon.watch()
    missing = [a for a in engine.state.alerts() if a["kind"] == "task_missing"]
    assert [a["items"] for a in missing] == [[gone]]
    assert engine.state.item(gone).status == "missing"  # type: ignore[union-attr]


def test_a_push_of_an_item_already_labeled_is_refused_and_alerted(
    tmp_path: Path, digit_objects: Any
) -> None:
    daemon, labeling, truth = _started(tmp_path, digit_objects)
    engine = daemon.engine
    label_all(labeling, truth)
    engine.poll_labels()
    labeled = sorted(labeling.tasks)[0]
    fresh = next(engine.state.iter_candidate_ids())
    # A frozen selection that names a labeled item (a bug, or a db edited by hand).
    rnd = engine.state.start_round(trigger="admin", plan=engine.resolve_plan().to_json())
    picks = [SelectedItem(0, labeled, "train", 1.0, None, None)]
    picks.append(SelectedItem(1, fresh, "train", 0.5, None, None))
    engine.state.freeze_selection(rnd.round, picks)
    engine.resume(rnd.round)
    assert labeling.tasks[fresh].task.round == rnd.round  # the other one went out
    assert engine.state.batch_progress(rnd.round) == (0, 1)
    item = engine.state.item(labeled)
    assert item is not None and item.status == "labeled" and item.requeue_count == 0
    assert item.round == 0  # not moved into the new round either
    (alert,) = [a for a in engine.state.alerts() if a["kind"] == "item_requeued"]
    assert alert["items"] == [labeled] and alert["severity"] == "error"
    assert "`al-connector items requeue KEY`" in alert["message"]


def test_throughput_drop_while_a_batch_is_open(tmp_path: Path, digit_objects: Any) -> None:
    objects, truth = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    Daemon(engine.settings, engine).run_once()
    for key in sorted(labeling.tasks)[:30]:
        labeling.annotate(key, "labeled", truth.get(key, "0"))
    engine.poll_labels()
    settings = AlertSettings(throughput_min_labels=20)
    alerts.detect(engine.state, settings)
    assert not [a for a in engine.state.alerts() if a["kind"] == "throughput_drop"]
    with engine.state.tx() as c:  # those labels came in during the hours before
        c.execute("UPDATE label_events SET at = ?", (iso(utcnow() - timedelta(hours=3)),))
    alerts.detect(engine.state, settings)
    (drop,) = [a for a in engine.state.alerts() if a["kind"] == "throughput_drop"]
    assert "0.0 labels/h" in drop["message"] and "20 of 50 tasks open" in drop["message"]
    for key in sorted(labeling.tasks)[30:40]:  # annotators are back
        labeling.annotate(key, "labeled", truth.get(key, "0"))
    engine.poll_labels()
    alerts.detect(engine.state, settings)
    assert not [a for a in engine.state.alerts() if a["kind"] == "throughput_drop"]
    (done,) = engine.state.alerts(include_resolved=True)
    assert done["kind"] == "throughput_drop" and done["resolved_at"] is not None


def test_readyz_metrics_and_alerts_list(tmp_path: Path, digit_objects: Any) -> None:
    objects, _ = digit_objects
    engine, _, _ = build(tmp_path, objects)
    daemon = Daemon(engine.settings, engine)
    server = HealthServer(
        "127.0.0.1", 0, daemon.metrics, alive=lambda: True, ready=daemon.services.ready
    )
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with pytest.raises(urllib.error.HTTPError) as err:  # nothing answered yet
            urllib.request.urlopen(base + "/readyz", timeout=5)
        assert err.value.code == 503
        daemon.run_once()
        with urllib.request.urlopen(base + "/readyz", timeout=5) as resp:
            assert resp.status == 200
        queued = next(iter(engine.state.queued_tasks().values()))
        engine.state.add_alert("item_requeued", "rq", "re-queued", items=[queued])
        engine.state.add_alert("task_stalled", "stall", "50 task(s) open")  # not true: cleared
        daemon.watch()
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    finally:
        server.stop()
    for line in [
        "alc_queue_depth 50.0",
        'alc_alerts_open{kind="item_requeued"} 1.0',
        'alc_alerts_open{kind="task_stalled"} 0.0',
        'alc_alerts_open{kind="task_missing"} 0.0',
        'alc_service_up{service="label_studio"} 1.0',
        'alc_round_phase_seconds{phase="PUSH"}',
        "alc_seconds_since_last_good_poll ",
        "alc_round_phase_age_seconds ",
    ]:
        assert line in text, line
    config = tmp_path / "settings.toml"
    config.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n')
    out = CliRunner().invoke(main, ["alerts", "list", "--json", "--config", str(config)])
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.output)  # the stall was resolved by the watch: not listed
    assert row["kind"] == "item_requeued" and row["items"] == [queued]
    out = CliRunner().invoke(main, ["alerts", "list", "--all", "--config", str(config)])
    assert "task_stalled (resolved " in out.output and "item_requeued (open;" in out.output
