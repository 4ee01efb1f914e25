"""Label Studio's data folder: ``label-studio init``, its template cache, its credentials.

``label-studio init`` (database migrations, ~20 s on a quiet machine, minutes on a busy
one) runs once into a *template* folder; every server then starts from a copy of it
(``prepare_data_dir``), so a cached template makes later starts cost only the ``start``
(``labelstudio_server``). Also here: how a ``label-studio`` child process is run (its own
virtual environment's executable, a quiet environment, its own process group), so
nothing here imports Label Studio or its SDK.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from connector.devtools.servers import DevServerError, log_tail, stop_process

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


def spawn(
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


def check_bin(ls_bin: str | Path) -> Path:
    """``ls_bin`` as an absolute path, if it is an executable file; else ``DevServerError``."""
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
    exe = check_bin(ls_bin)
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
        proc = spawn(cmd, data_dir, extra_env, out)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_process(proc, 5)
            raise DevServerError(
                f"`label-studio init` did not finish within {timeout_s:.0f}s; log tail:\n"
                + log_tail(log_path)
            ) from None
        except BaseException:  # a Ctrl-C: init runs in its own session, so stop it here
            stop_process(proc, 5)
            raise
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
    exe = check_bin(ls_bin)
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
