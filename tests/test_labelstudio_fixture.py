"""The Label Studio fixture is a real server, and its start-up fails fast and loudly."""

from __future__ import annotations

import stat
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from label_studio_sdk import LabelStudio

from connector.devtools.datasets import DIGIT_CLASSES
from connector.devtools.labelstudio_server import start_label_studio
from connector.devtools.servers import DevServerError, log_tail
from tests.fixtures.labelstudio import LabelStudioHandle, LabelStudioProject, annotate, skip


@pytest.mark.labelstudio
def test_server_is_up_and_logs(label_studio: LabelStudioHandle) -> None:
    with urllib.request.urlopen(f"{label_studio.url}/health", timeout=10) as resp:
        assert resp.status == 200
    assert label_studio.url.startswith("http://127.0.0.1:")
    assert label_studio.log_path.exists()
    assert label_studio.server.alive()


@pytest.mark.labelstudio
def test_both_token_kinds_authenticate(
    label_studio: LabelStudioHandle, ls_client: LabelStudio, ls_pat_client: LabelStudio
) -> None:
    assert ls_client.users.whoami().email == label_studio.username
    assert ls_pat_client.users.whoami().email == label_studio.username
    pat = label_studio.personal_access_token()
    assert pat.count(".") == 2  # a JWT, not the legacy token
    assert pat != label_studio.legacy_token
    assert label_studio.personal_access_token() == pat  # made once per session


@pytest.mark.labelstudio
def test_project_has_digits_config_and_helpers_label(
    ls_project: LabelStudioProject, ls_client: LabelStudio
) -> None:
    project = ls_client.projects.get(id=ls_project.id)
    assert '<Image name="image" value="$image"/>' in (project.label_config or "")
    for cls in DIGIT_CLASSES:
        assert f'<Choice value="{cls}"/>' in (project.label_config or "")
    tasks: Any = [{"data": {"image": "s3://b/a.png"}}, {"data": {"image": "s3://b/b.png"}}]
    imported: Any = ls_client.projects.import_tasks(
        id=ls_project.id, request=tasks, return_task_ids=True
    )
    first, second = imported.task_ids
    ann_id = annotate(ls_client, first, "7")
    skip_id = skip(ls_client, second)
    labeled: Any = ls_client.annotations.get(id=ann_id)
    assert labeled.result[0]["value"]["choices"] == ["7"]
    assert not labeled.was_cancelled
    assert ls_client.annotations.get(id=skip_id).was_cancelled


def _fake_bin(tmp_path: Path, start_script: str) -> Path:
    """A stand-in ``label-studio``: ``init`` makes a database file, ``start`` runs the script."""
    exe = tmp_path / "label-studio"
    exe.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = init ]; then : > "$LABEL_STUDIO_BASE_DATA_DIR/label_studio.sqlite3"; '
        "exit 0; fi\n" + start_script
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_missing_executable_names_make_target(tmp_path: Path) -> None:
    with pytest.raises(DevServerError, match="make ls-venv"):
        start_label_studio(tmp_path / "nope" / "label-studio", tmp_path / "data")


def test_server_that_dies_fails_with_log_tail(tmp_path: Path) -> None:
    exe = _fake_bin(tmp_path, "echo 'fatal: database is locked'\nexit 3\n")
    t0 = time.monotonic()
    with pytest.raises(DevServerError, match="exited with code 3") as err:
        start_label_studio(exe, tmp_path / "data", startup_timeout_s=60)
    assert "database is locked" in str(err.value)
    assert time.monotonic() - t0 < 30


def test_server_that_never_answers_is_bounded_and_stopped(tmp_path: Path) -> None:
    exe = _fake_bin(tmp_path, "echo 'starting forever'\nexec sleep 300\n")
    t0 = time.monotonic()
    with pytest.raises(DevServerError, match="did not answer") as err:
        start_label_studio(exe, tmp_path / "data", startup_timeout_s=2)
    assert time.monotonic() - t0 < 30
    assert "starting forever" in str(err.value)
    assert "starting forever" in log_tail(tmp_path / "data" / "label-studio.log")
