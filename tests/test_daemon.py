"""The daemon: one-shot mode, health/metrics endpoints, graceful stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from connector.ops.daemon import Daemon
from connector.ops.metrics import HealthServer
from tests.fakes import build


def test_run_once_starts_the_cold_start_round(tmp_path: Path, digit_objects: Any) -> None:
    objects, _ = digit_objects
    engine, labeling, _ = build(tmp_path, objects)
    status = Daemon(engine.settings, engine).run_once()
    assert status["round"]["number"] == 0 and status["round"]["phase"] == "WAIT"
    assert status["round"]["batch_total"] == len(labeling.tasks) == 50


def test_health_and_metrics_endpoints(tmp_path: Path, digit_objects: Any) -> None:
    objects, _ = digit_objects
    engine, _, _ = build(tmp_path, objects)
    daemon = Daemon(engine.settings, engine)
    daemon.run_once()
    ready = {"v": False}
    server = HealthServer(
        "127.0.0.1", 0, daemon.metrics, alive=lambda: True, ready=lambda: ready["v"]
    )
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
            assert resp.status == 200
        try:
            urllib.request.urlopen(base + "/readyz", timeout=5)
            raise AssertionError("not ready yet must answer 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        ready["v"] = True
        with urllib.request.urlopen(base + "/readyz", timeout=5) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert 'alc_items{status="queued"} 50.0' in text
        assert "alc_round 0.0" in text
    finally:
        server.stop()


SCRIPT = textwrap.dedent(
    """
    import sys, logging, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    logging.basicConfig(level=logging.INFO)
    from connector.devtools.datasets import digit_png, digits_arrays
    from connector.ops.daemon import Daemon
    from tests.fakes import build
    images, labels = digits_arrays()
    objects = {{f"d{{i:04d}}.png": digit_png(images[i]) for i in range(120)}}
    engine, labeling, learner = build(Path({tmp!r}), objects, server={{"port": None}},
                                      polling={{"watch_seconds": 0.5}})
    print("READY", flush=True)
    Daemon(engine.settings, engine).run()
    print("EXITED", flush=True)
    """
)


@contextmanager
def daemon_process(script: str, tmp_path: Path, until: str) -> Iterator[tuple[Any, str]]:
    """Run ``script`` in a child Python, wait (bounded) until it prints ``until``; the
    child is killed at the end if it is still running."""
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen(
        [sys.executable, "-c", script.format(root=root, tmp=str(tmp_path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = ""
        while until not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        assert until in seen, seen
        yield proc, seen
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)


def test_sigterm_stops_gracefully(tmp_path: Path) -> None:
    with daemon_process(SCRIPT, tmp_path, until="round 0") as (proc, seen):
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, seen + out
        assert "EXITED" in out and "stopped" in out


FORCE_SCRIPT = textwrap.dedent(
    """
    import sys, logging, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    logging.basicConfig(level=logging.INFO)
    from connector.devtools.datasets import digit_png, digits_arrays
    from connector.ops.daemon import Daemon
    from tests.fakes import build, label_all
    images, labels = digits_arrays()
    objects = {{f"d{{i:04d}}.png": digit_png(images[i]) for i in range(120)}}
    truth = {{k: str(labels[i]) for i, k in enumerate(objects)}}
    engine, labeling, learner = build(Path({tmp!r}), objects, server={{"port": None}})
    engine.step()
    label_all(labeling, truth)
    def slow_fit(*args, **kwargs):
        print("TRAINING", flush=True)
        time.sleep(60)  # a long phase: the first signal waits for it, the second does not
    learner.fit = slow_fit
    marker = Path({tmp!r}) / "cleaned-up"
    Daemon(engine.settings, engine, on_force_stop=[marker.touch]).run()
    print("EXITED", flush=True)
    """
)


def test_second_signal_stops_now_after_cleanup(tmp_path: Path) -> None:
    with daemon_process(FORCE_SCRIPT, tmp_path, until="TRAINING") as (proc, seen):
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None, "the first signal waits for the running phase"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130, seen + out
        assert "EXITED" not in out
        assert (tmp_path / "cleaned-up").exists(), "on_force_stop ran before the exit"
