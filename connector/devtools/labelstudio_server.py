"""A real Label Studio on a loopback port: find its executable, start it, stop it.

Used by the test fixture (``tests/fixtures/labelstudio.py``), the benchmark
(``benchmarks/labelstudio.py``) and ``al-connector demo``. It runs the ``label-studio``
executable of its own virtual environment (Label Studio pins its own library versions),
so nothing here imports Label Studio or its SDK.

Start-up has two costs: ``label-studio init`` (database migrations, slow; paid once into
a cached template, see ``labelstudio_setup``) and ``label-studio start`` (~4 s).
"""

from __future__ import annotations

import atexit
import logging
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from connector.devtools.labelstudio_setup import Credentials, check_bin, prepare_data_dir, spawn
from connector.devtools.servers import DevServerError, free_port, http_ok, log_tail, stop_process

log = logging.getLogger(__name__)


@dataclass
class LabelStudioServer:
    """A running ``label-studio start`` process. Stop it with ``stop()`` (idempotent)."""

    url: str
    port: int
    data_dir: Path
    log_path: Path
    credentials: Credentials
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def username(self) -> str:
        return self.credentials.username

    @property
    def password(self) -> str:
        return self.credentials.password

    @property
    def legacy_token(self) -> str:
        return self.credentials.legacy_token

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        """Terminate the server; kill it if it is still there after ``timeout_s``."""
        stop_process(self.process, timeout_s)

    def __enter__(self) -> LabelStudioServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_label_studio(ls_bin: str | Path | None = None) -> Path:
    """The ``label-studio`` executable: ``ls_bin`` if given, else ``.venv-ls`` of this
    checkout, else one on ``PATH``. Raises ``DevServerError`` naming ``make ls-venv``."""
    if ls_bin is not None:
        return check_bin(ls_bin)
    local = Path(__file__).resolve().parents[2] / ".venv-ls" / "bin" / "label-studio"
    if local.is_file():
        return check_bin(local)
    found = shutil.which("label-studio")
    return check_bin(found or local)


def start_label_studio(
    ls_bin: str | Path,
    data_dir: Path,
    port: int | None = None,
    *,
    template_dir: Path | None = None,
    log_path: Path | None = None,
    startup_timeout_s: float = 180.0,
    init_timeout_s: float = 600.0,
    extra_env: Mapping[str, str] | None = None,
    attempts: int = 3,
) -> LabelStudioServer:
    """Initialise (or copy a template into) ``data_dir`` and start Label Studio on loopback.

    Waits for ``/health`` at most ``startup_timeout_s``; if the process dies or does not
    come up, raises ``DevServerError`` with the tail of its log. Label Studio silently
    moves to the next port when its port is taken, so the server is confirmed to be *ours*
    (our token is accepted) before it is returned; on a port race it retries on a new port.
    """
    exe = check_bin(ls_bin)
    creds = prepare_data_dir(
        exe, data_dir, template_dir=template_dir, init_timeout_s=init_timeout_s
    )
    log_path = log_path or data_dir / "label-studio.log"
    for attempt in range(attempts):
        chosen = port if (port is not None and attempt == 0) else free_port()
        try:
            return _start_once(exe, data_dir, chosen, creds, log_path, startup_timeout_s, extra_env)
        except DevServerError:
            # Only a lost port race is worth another try; anything else is a real failure.
            if attempt == attempts - 1 or not _port_taken(log_path, chosen):
                raise
            log.warning("port %d was taken; retrying Label Studio on another port", chosen)
    raise AssertionError("unreachable")


def _port_taken(log_path: Path, port: int) -> bool:
    return f"Port {port} is in use" in log_tail(log_path, 400)


def _start_once(
    exe: Path,
    data_dir: Path,
    port: int,
    creds: Credentials,
    log_path: Path,
    startup_timeout_s: float,
    extra_env: Mapping[str, str] | None,
) -> LabelStudioServer:
    cmd = [
        str(exe),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with log_path.open("ab") as out:
        out.write(f"\n=== label-studio start on {url} ===\n".encode())
        out.flush()
        proc = spawn(cmd, data_dir, extra_env, out)
    server = LabelStudioServer(
        url=url, port=port, data_dir=data_dir, log_path=log_path, credentials=creds, process=proc
    )
    # A crashed test run must not leave a server behind.
    atexit.register(server.stop, 5.0)
    deadline = time.monotonic() + startup_timeout_s
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise DevServerError(
                f"Label Studio exited with code {proc.returncode} before it answered on {url}; "
                f"log {log_path}, tail:\n{log_tail(log_path)}"
            )
        if http_ok(f"{url}/health") is not None:
            break
        if _port_taken(log_path, port):
            server.stop(5)
            raise DevServerError(f"port {port} is in use; log tail:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            server.stop(5)
            raise DevServerError(
                f"Label Studio did not answer {url}/health within {startup_timeout_s:.0f}s; "
                f"log {log_path}, tail:\n{log_tail(log_path)}"
            )
        time.sleep(0.25)
    body = http_ok(f"{url}/api/current-user/whoami", timeout_s=10, token=creds.legacy_token)
    if body is None or creds.username.encode() not in body:
        server.stop(5)
        raise DevServerError(
            f"the server on {url} does not accept this server's token (port race?); "
            f"log tail:\n{log_tail(log_path)}"
        )
    log.info("Label Studio up on %s in %.1fs (log %s)", url, time.monotonic() - t0, log_path)
    return server
