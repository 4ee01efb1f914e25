"""Bad input at start-up, on the real servers: an empty bucket or prefix, a missing
bucket, Label Studio unreachable when ``run`` starts (and when ``check`` runs).

Rules (docs/bad-input.md): an empty pool is not an error (the daemon starts, waits, and
connects the bucket to Label Studio before its first push); a missing bucket fails with
its name and the fix; ``run`` waits for a Label Studio that is not up yet, ``check``
fails fast.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector.app import build_app, build_app_when_up
from connector.cli.main import main
from connector.contracts.errors import ConfigError
from connector.devtools.datasets import LabeledImage
from connector.ops.daemon import Daemon
from connector.settings import load_settings
from tests.fakes import PixelLearner
from tests.fixtures.s3 import upload_digits, write_server_settings
from tests.test_alerts_servers import Relay

pytestmark = [pytest.mark.labelstudio, pytest.mark.s3]

SMALL = '[strategy]\nname = "random"\nbatch_size = 10\n'


def test_empty_prefix_starts_waits_and_connects_the_bucket_before_the_first_push(
    tmp_path: Path,
    label_studio: Any,
    s3_server: str,
    s3_client: Any,
    s3_bucket: str,
    digits_dir: tuple[Path, list[LabeledImage]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_server_settings(
        tmp_path, label_studio.url, s3_server, s3_bucket, title="alc-empty", extra=SMALL
    )
    monkeypatch.setenv("ALC_LABEL_STUDIO__TOKEN", label_studio.legacy_token)
    settings = load_settings(config)
    checked = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert checked.exit_code == 0, checked.output  # empty is not broken
    assert "HTTP" not in checked.output and "headers" not in checked.output
    app = build_app(settings, learner=PixelLearner())  # Label Studio used to answer 500 here
    adapter: Any = app.engine.ports.labeling
    storages = adapter.ls.sdk.import_storage.s3.list(project=adapter.project_id)
    assert not storages  # not connected yet: Label Studio refuses an empty prefix
    daemon = Daemon(settings, app.engine)
    status = daemon.run_once()
    assert sum(status["items"].values()) == 0 and "round" not in status  # it waits
    upload_digits(s3_client, s3_bucket, "pool/", digits_dir, limit=30)
    status = daemon.run_once()
    assert status["round"]["batch_total"] == 20  # validation 10 + batch 10
    storages = adapter.ls.sdk.import_storage.s3.list(project=adapter.project_id)
    assert [(s.bucket, s.prefix) for s in storages] == [(s3_bucket, "pool/")]


def test_missing_bucket_names_the_bucket_and_the_fix(
    tmp_path: Path, label_studio: Any, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_server_settings(
        tmp_path, label_studio.url, s3_server, "no-such-bucket-alc", title="alc-nobucket"
    )
    monkeypatch.setenv("ALC_LABEL_STUDIO__TOKEN", label_studio.legacy_token)
    checked = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert checked.exit_code == 1
    assert "bucket 'no-such-bucket-alc' does not exist" in checked.output
    assert "create it or fix storage.bucket" in checked.output
    with pytest.raises(ConfigError, match="no-such-bucket-alc"):
        build_app_when_up(load_settings(config), learner=PixelLearner())  # not retried


def test_run_waits_for_label_studio_check_fails_fast(
    tmp_path: Path,
    label_studio: Any,
    s3_server: str,
    s3_client: Any,
    s3_bucket: str,
    digits_dir: tuple[Path, list[LabeledImage]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upload_digits(s3_client, s3_bucket, "pool/", digits_dir, limit=30)
    host, port = label_studio.url.split("//")[1].split(":")
    relay = Relay((host, int(port)))  # not started: Label Studio is "down"
    url = f"http://127.0.0.1:{relay.port}"
    config = write_server_settings(tmp_path, url, s3_server, s3_bucket, title="alc-late")
    monkeypatch.setenv("ALC_LABEL_STUDIO__TOKEN", label_studio.legacy_token)
    t0 = time.monotonic()
    checked = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert checked.exit_code == 1 and time.monotonic() - t0 < 30
    assert f"Label Studio at {url} did not answer" in checked.output

    built: dict[str, Any] = {}

    def start() -> None:
        built["app"] = build_app_when_up(
            load_settings(config), learner=PixelLearner(), max_wait_s=2.0
        )

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    time.sleep(8.0)
    assert starter.is_alive(), "run gave up while Label Studio was down"
    relay.start()
    up = time.monotonic()
    try:
        starter.join(timeout=60)
        waited = time.monotonic() - up
        assert "app" in built
        print(f"\nrun started {waited:.1f} s after Label Studio came up")
        status = Daemon(built["app"].settings, built["app"].engine).run_once()
        assert status["round"]["batch_total"] == 30  # validation 10 + batch 20
    finally:
        relay.stop()
