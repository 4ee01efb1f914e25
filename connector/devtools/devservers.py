"""Local development servers: a real Label Studio on a loopback port.

Used by the test fixture (``tests/fixtures/labelstudio.py``), the benchmark
(``benchmarks/labelstudio.py``) and ``al-connector demo``. It runs the ``label-studio``
executable of its own virtual environment (Label Studio pins its own library versions),
so nothing here imports Label Studio or its SDK.

Start-up has two costs: ``label-studio init`` (database migrations, ~20 s on a quiet
machine, minutes on a busy one) and ``label-studio start`` (~4 s). ``init`` runs once
into a *template* folder; every server then starts from a copy of it, so a cached template
(``template_dir``) makes later starts cost only the ``start``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

#: Written into a template folder once ``init`` has succeeded; holds the credentials.
TEMPLATE_MARKER = "alc-template.json"
#: Environment of every Label Studio child process: no telemetry, no version check, no
#: network. Legacy tokens are enabled next to personal access tokens (JWT), so both token
#: kinds can be used against the same server.
QUIET_ENV: Mapping[str, str] = {
    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
    "LATEST_VERSION_CHECK": "false",
    "COLLECT_ANALYTICS": "false",
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "LOG_LEVEL": "WARNING",
    "DEBUG": "false",
    # The dev S3 server listens on loopback, which Label Studio's SSRF guard blocks.
    # These servers are loopback-only development servers, never exposed.
    "SSRF_PROTECTION_ENABLED": "false",
}


class DevServerError(RuntimeError):
    """A local server could not be initialised or started; the message carries its log."""


@dataclass(frozen=True)
class Credentials:
    """The admin user made by ``label-studio init`` (test/demo credentials, loopback only)."""

    username: str
    password: str
    legacy_token: str

    def __repr__(self) -> str:  # secrets never appear in reprs
        return f"Credentials(username={self.username!r}, password=***, legacy_token=***)"

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            username=f"alc-{secrets.token_hex(4)}@example.com",
            password=secrets.token_urlsafe(16),
            legacy_token=secrets.token_hex(20),
        )


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


def log_tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM the process (group), wait up to ``timeout_s``, then SIGKILL it."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


def _child_env(data_dir: Path, extra_env: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # A parent's Label Studio settings (e.g. a developer's DATABASE_NAME) must not leak in.
    for key in list(env):
        if key.startswith(("LABEL_STUDIO_", "DJANGO_")):
            del env[key]
    env.update(QUIET_ENV)
    env["LABEL_STUDIO_BASE_DATA_DIR"] = str(data_dir)
    if extra_env:
        env.update(extra_env)
    return env


def _spawn(
    cmd: list[str], data_dir: Path, extra_env: Mapping[str, str] | None, log_file: IO[bytes]
) -> subprocess.Popen[bytes]:
    """Run a `label-studio` command in ``data_dir``, output to ``log_file``, no stdin, in
    its own session (process group), so stop_process reaches everything it starts."""
    return subprocess.Popen(
        cmd,
        cwd=data_dir,
        env=_child_env(data_dir, extra_env),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def find_label_studio(ls_bin: str | Path | None = None) -> Path:
    """The ``label-studio`` executable: ``ls_bin`` if given, else ``.venv-ls`` of this
    checkout, else one on ``PATH``. Raises ``DevServerError`` naming ``make ls-venv``."""
    if ls_bin is not None:
        return _check_bin(ls_bin)
    local = Path(__file__).resolve().parent.parent / ".venv-ls" / "bin" / "label-studio"
    if local.is_file():
        return _check_bin(local)
    found = shutil.which("label-studio")
    return _check_bin(found or local)


def _check_bin(ls_bin: str | Path) -> Path:
    path = Path(ls_bin)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise DevServerError(
            f"label-studio executable not found at {path}; run `make ls-venv` "
            "(it installs Label Studio into .venv-ls)"
        )
    # Absolute, so that a relative path keeps working in a child's other working dir.
    return path.absolute()


def init_label_studio(
    ls_bin: str | Path,
    data_dir: Path,
    credentials: Credentials | None = None,
    *,
    timeout_s: float = 600.0,
    extra_env: Mapping[str, str] | None = None,
) -> Credentials:
    """Run ``label-studio init`` into ``data_dir`` (migrations + admin user + legacy token).

    No project is created (``init`` without a project name), so the server starts empty.
    Writes ``TEMPLATE_MARKER`` with the credentials on success.
    """
    exe = _check_bin(ls_bin)
    creds = credentials or Credentials.generate()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "init.log"
    cmd = [
        str(exe),
        "init",
        "--quiet",
        "--no-browser",
        "--username",
        creds.username,
        "--password",
        creds.password,
        "--user-token",
        creds.legacy_token,
        "--enable-legacy-api-token",
    ]
    log.info("initialising Label Studio in %s (database migrations; can take minutes)", data_dir)
    t0 = time.monotonic()
    with log_path.open("wb") as out:
        proc = _spawn(cmd, data_dir, extra_env, out)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_process(proc, 5)
            raise DevServerError(
                f"`label-studio init` did not finish within {timeout_s:.0f}s; log tail:\n"
                + log_tail(log_path)
            ) from None
    if rc != 0 or not (data_dir / "label_studio.sqlite3").exists():
        raise DevServerError(
            f"`label-studio init` failed (exit {rc}); log tail:\n" + log_tail(log_path)
        )
    (data_dir / TEMPLATE_MARKER).write_text(
        json.dumps(
            {
                "username": creds.username,
                "password": creds.password,
                "legacy_token": creds.legacy_token,
                "bin": str(exe.resolve()),
            }
        )
    )
    log.info("Label Studio initialised in %.1fs", time.monotonic() - t0)
    return creds


def _read_template(template_dir: Path, ls_bin: Path) -> Credentials | None:
    try:
        meta = json.loads((template_dir / TEMPLATE_MARKER).read_text())
    except (FileNotFoundError, ValueError):
        return None
    # A template belongs to one Label Studio install (its migrations); a new install in the
    # same place re-initialises because the executable is newer than the template.
    if meta.get("bin") != str(ls_bin.resolve()):
        return None
    if ls_bin.stat().st_mtime > (template_dir / TEMPLATE_MARKER).stat().st_mtime:
        return None
    if not (template_dir / "label_studio.sqlite3").exists():
        return None
    return Credentials(meta["username"], meta["password"], meta["legacy_token"])


def prepare_data_dir(
    ls_bin: str | Path,
    data_dir: Path,
    *,
    template_dir: Path | None = None,
    init_timeout_s: float = 600.0,
) -> Credentials:
    """Make ``data_dir`` an initialised Label Studio data folder and return its credentials.

    With ``template_dir``: reuse it when it is a valid template of this executable,
    otherwise (re)initialise it first; then copy it to ``data_dir``. Without: ``init``
    straight into ``data_dir``.
    """
    exe = _check_bin(ls_bin)
    if template_dir is None:
        return init_label_studio(exe, data_dir, timeout_s=init_timeout_s)
    creds = _read_template(template_dir, exe)
    if creds is None:
        shutil.rmtree(template_dir, ignore_errors=True)
        building = template_dir.with_name(template_dir.name + f".tmp-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        creds = init_label_studio(exe, building, timeout_s=init_timeout_s)
        # Renaming makes the template appear whole or not at all.
        try:
            building.rename(template_dir)
        except OSError:  # another process won the race: use theirs
            shutil.rmtree(building, ignore_errors=True)
            creds = _read_template(template_dir, exe) or creds
    if data_dir.exists():
        shutil.rmtree(data_dir)
    shutil.copytree(template_dir, data_dir)
    return creds


def _http_ok(url: str, timeout_s: float = 2.0, token: str | None = None) -> bytes | None:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return bytes(resp.read()) if resp.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


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
    exe = _check_bin(ls_bin)
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
        proc = _spawn(cmd, data_dir, extra_env, out)
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
        if _http_ok(f"{url}/health") is not None:
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
    body = _http_ok(f"{url}/api/current-user/whoami", timeout_s=10, token=creds.legacy_token)
    if body is None or creds.username.encode() not in body:
        server.stop(5)
        raise DevServerError(
            f"the server on {url} does not accept this server's token (port race?); "
            f"log tail:\n{log_tail(log_path)}"
        )
    log.info("Label Studio up on %s in %.1fs (log %s)", url, time.monotonic() - t0, log_path)
    return server


@dataclass
class S3Server:
    """moto's S3 server in this process (threaded), on a free loopback port."""

    url: str
    access_key_id: str
    secret_access_key: str
    region: str
    _server: Any = field(repr=False)

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # best effort at shutdown; never masks an error
            self._server.stop()

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_s3_server(host: str = "127.0.0.1", port: int = 0) -> S3Server:
    """Start moto's S3 server (``moto[server]``, a test/demo dependency) on loopback.

    moto accepts any credentials; fixed fake ones are returned for the clients.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    url = f"http://{bound_host}:{bound_port}"
    deadline = time.monotonic() + 30
    while _http_ok(f"{url}/moto-api/data.json") is None:
        if time.monotonic() > deadline:
            server.stop()
            raise DevServerError(f"moto S3 server did not answer on {url} within 30s")
        time.sleep(0.1)
    return S3Server(url, "alc-demo-access-key", "alc-demo-secret-key", "us-east-1", server)
