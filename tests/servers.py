"""A daemon on the real test servers, as the server tests build it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.app import build_app
from connector.ops.daemon import Daemon
from connector.settings import load_settings
from tests.fakes import PixelLearner
from tests.fixtures.s3 import write_server_settings


def server_daemon(
    tmp_path: Path,
    label_studio: Any,
    s3_server: str,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    *,
    title: str,
    batch_size: int,
    extra: str = "",
    ls_url: str | None = None,
) -> Daemon:
    """A daemon on the session's Label Studio (a new project titled ``title``-<random>;
    reached at ``ls_url``, e.g. a relay, when given) and the SeaweedFS bucket: random
    batches of ``batch_size``, the fakes' pixel learner, ``extra`` TOML sections."""
    config = write_server_settings(
        tmp_path,
        ls_url or label_studio.url,
        s3_server,
        s3_bucket,
        title=title,
        extra=f'[strategy]\nname = "random"\nbatch_size = {batch_size}\n{extra}',
    )
    monkeypatch.setenv("ALC_LABEL_STUDIO__TOKEN", label_studio.legacy_token)
    settings = load_settings(config)
    return Daemon(settings, build_app(settings, learner=PixelLearner()).engine)
