"""A cold start, as a person meets it: ``al-connector --help`` and every subcommand's
``--help`` load neither torch nor the SDKs, and ``status`` and ``check`` load no torch
(measured with ``python -X importtime``, in a fresh interpreter, as a terminal runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from connector.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
#: What a --help must never pay for: seconds of imports on a busy machine.
HEAVY = ("torch", "torchvision", "label_studio_sdk", "boto3")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            out += _commands(command, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def imported_modules(*args: str, code: str | None = None) -> set[str]:
    """Top-level packages ``python -X importtime -m connector.cli ARGS`` imported (or
    ``python -c CODE``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ALC_CONFIG": ""}
    run = ["-c", code] if code is not None else ["-m", "connector.cli", *args]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *run],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "connector" in names, "no importtime output: " + proc.stderr[-500:]
    return names


@pytest.mark.parametrize("command", _commands(main), ids=lambda c: " ".join(c) or "(main)")
def test_help_imports_no_torch_and_no_sdk(command: tuple[str, ...]) -> None:
    heavy = imported_modules(*command, "--help") & set(HEAVY)
    assert not heavy, f"`al-connector {' '.join(command)} --help` imports {sorted(heavy)}"


def test_status_imports_no_torch_and_no_sdk(tmp_path: Path) -> None:
    from connector.state import StateDB

    StateDB(tmp_path / "state" / "state.db").close()
    config = tmp_path / "settings.toml"
    config.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n')
    heavy = imported_modules("status", "--config", str(config)) & set(HEAVY)
    assert not heavy, f"`al-connector status` imports {sorted(heavy)}"


def test_check_starts_without_torch_or_an_sdk() -> None:
    """``check`` answers at once: the strategy registry resolves the plan without torch
    (the model is built by ``run``), and each SDK is imported when ``check`` reaches its
    service, not when the command starts."""
    code = "import connector.cli.main, connector.rounds.plan, connector.app"
    heavy = imported_modules(code=code) & set(HEAVY)
    assert not heavy, f"`al-connector check` imports {sorted(heavy)} before it checks anything"
