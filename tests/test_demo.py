"""The README's first command: the demo runs real rounds end to end and says where the
results are (and they are there)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from connector.cli.main import main
from connector.devtools.servers import http_ok

pytestmark = [pytest.mark.labelstudio, pytest.mark.s3, pytest.mark.slow]


def test_demo_runs_rounds_and_keeps_its_report(request: pytest.FixtureRequest) -> None:
    ls_bin = os.environ.get("ALC_TEST_LABEL_STUDIO_BIN")
    if not ls_bin:
        pytest.fail("ALC_TEST_LABEL_STUDIO_BIN is not set: run `make test`", pytrace=False)
    args = [
        "demo",
        "--rounds",
        "1",
        "--images",
        "150",
        "--validation-size",
        "10",
        "--batch-size",
        "10",
        "--delay",
        "0",
        "--label-studio-bin",
        ls_bin,
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    folder = re.search(r"^demo folder: (.+)$", result.output, re.MULTILINE)
    assert folder is not None, result.output
    workdir = Path(folder.group(1))
    # The default (temporary) folder is kept: the paths printed at the end must exist.
    request.addfinalizer(lambda: shutil.rmtree(workdir, ignore_errors=True))
    rows = [
        line.split()
        for line in result.output.splitlines()
        if line.strip()[:1].isdigit() and ("al-r" in line or "cold start" in line)
    ]
    assert [r[0] for r in rows] == ["0", "1"], result.output
    accuracy = float(rows[1][2])
    assert 0.0 <= accuracy <= 1.0
    report = json.loads((workdir / "state" / "rounds" / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    assert (workdir / "demo.log").exists()
    assert str(workdir) in result.output


def _descendants(pid: int) -> dict[int, str]:
    """``{pid: start time}`` of every live process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
            starts[int(entry.name)] = fields[19]
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = starts[child]
                frontier.append(child)
    return found


def _alive(pid: int, start: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == start


def _read_until(fd: int, pattern: str, timeout_s: float, seen: list[bytes]) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen.append(chunk)
        text = b"".join(seen).decode("utf-8", "replace")
        if re.search(pattern, text, re.MULTILINE):
            return text
    text = b"".join(seen).decode("utf-8", "replace")
    raise AssertionError(f"no {pattern!r} within {timeout_s:.0f}s; the terminal showed:\n{text}")


def _working_in(folder: Path) -> list[str]:
    """Live processes whose working directory is in ``folder`` (Label Studio runs in its
    data folder there), as ``pid cmdline``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cwd = (entry / "cwd").resolve()
            if entry.name.isdigit() and cwd.is_relative_to(folder):
                found.append(f"{entry.name} {(entry / 'cmdline').read_bytes()[:120]!r}")
        except OSError:
            continue
    return found


@pytest.mark.parametrize(
    ("rounds", "wait_for", "exit_code"),
    [
        pytest.param("1", r"starting Label Studio", 130, id="while-starting"),
        pytest.param("1", r"Press Ctrl-C to stop everything", 0, id="keep-running"),
        pytest.param("3", r"^\s+0\s+\d+\s", 130, id="during-rounds"),
    ],
)
def test_one_ctrl_c_in_a_terminal_stops_the_demo_and_its_servers(
    tmp_path: Path, rounds: str, wait_for: str, exit_code: int
) -> None:
    """As a person does it: the demo in a terminal, one Ctrl-C (the terminal sends SIGINT
    to the foreground process group), and within seconds the demo and every server it
    started are gone."""
    ls_bin = os.environ.get("ALC_TEST_LABEL_STUDIO_BIN")
    if not ls_bin:
        pytest.fail("ALC_TEST_LABEL_STUDIO_BIN is not set: run `make test`", pytrace=False)
    args = [sys.executable, "-m", "connector.cli", "demo", "--rounds", rounds, "--images", "150"]
    args += ["--validation-size", "10", "--batch-size", "10", "--delay", "0", "--keep-running"]
    args += ["--label-studio-bin", ls_bin, "--workdir", str(tmp_path / "demo")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    pid, fd = pty.fork()
    if pid == 0:  # the child: its own session, with the pty as its controlling terminal
        os.execve(sys.executable, args, env)
    seen: list[bytes] = []
    try:
        text = _read_until(fd, wait_for, 600, seen)
        if "Label Studio on" not in text:
            time.sleep(3.0)  # let it spawn the server, to be stopped in the middle
        urls = re.findall(r"(?:S3 server|Label Studio) on (http://[\d.]+:\d+)", text)
        servers = _descendants(pid)
        assert servers, "the demo started no server processes"
        os.write(fd, b"\x03")  # Ctrl-C, as typed
        t0 = time.monotonic()
        status = None
        while time.monotonic() - t0 < 30 and status is None:
            with contextlib.suppress(OSError):
                if select.select([fd], [], [], 0.2)[0]:
                    seen.append(os.read(fd, 65536))
            done, code = os.waitpid(pid, os.WNOHANG)
            status = code if done else None
        elapsed = time.monotonic() - t0
        shown = b"".join(seen).decode("utf-8", "replace")
        assert status is not None, f"the demo still runs 30 s after Ctrl-C:\n{shown}"
        assert os.waitstatus_to_exitcode(status) == exit_code, shown
        print(f"stopped {elapsed:.1f}s after Ctrl-C")
        assert elapsed < 20, f"the demo took {elapsed:.1f}s to stop"
        time.sleep(1.0)
        left = [p for p, start in servers.items() if _alive(p, start)]
        assert not left, f"processes left after Ctrl-C: {left}"
        assert _working_in(tmp_path) == [], "a server still runs in the demo folder"
        for url in urls:
            assert http_ok(url, timeout_s=1.0) is None and not _listening(url), url
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for child in _descendants(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        os.close(fd)


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, int(port))) == 0
