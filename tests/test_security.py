"""Security: no secret in logs, the state db, reports, status, /metrics or error texts;
object keys never become paths outside the cache; TLS verified by default, with a
custom CA wired through to both SDKs; the health server is loopback-only by default and
refuses every method that could change state."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import certifi
import pytest

from connector.contracts.errors import ConfigError
from connector.labelstudio.adapter import LabelStudioAdapter
from connector.ops.daemon import Daemon
from connector.ops.metrics import HealthServer
from connector.settings import Settings
from connector.storage.cache import LabeledCache
from connector.storage.local import LocalStore
from connector.storage.s3 import S3Store
from tests.fakes import build
from tests.fixtures.s3 import FAKE_SECRET_ACCESS_KEY

TOKEN = "alc-secret-token-0123456789abcdef"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.s3
def test_no_secret_in_logs_state_reports_status_metrics_or_errors(
    tmp_path: Path,
    s3_bucket: str,
    s3_store_factory: Any,
    digit_objects: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    objects, _ = digit_objects
    store: S3Store = s3_store_factory(s3_bucket)
    for key in list(objects)[:40]:
        store.put(key, objects[key])
    engine, _, _ = build(tmp_path, {})
    engine.ports.store = store
    daemon = Daemon(engine.settings, engine)
    status = daemon.run_once()
    errors: list[str] = [repr(store)]
    down = S3Store(
        s3_bucket,
        endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        access_key_id="alc-test-access-key",
        secret_access_key=FAKE_SECRET_ACCESS_KEY,
        retry_attempts=2,
        retry_max_wait_s=0.01,
    )
    ls = LabelStudioAdapter(f"http://127.0.0.1:{_closed_port()}", TOKEN, 1, retry_attempts=2)
    for fail in (lambda: down.read("d0000.png"), lambda: ls.check_project(["0"])):
        with pytest.raises(Exception) as err:
            fail()
        errors += [str(err.value), repr(err.value), repr(ls)]
    texts = {
        "logs": caplog.text,
        "status --json": json.dumps(status, default=str),
        "/metrics": daemon.metrics.render().decode(),
        "errors": "\n".join(errors),
    }
    for path in (tmp_path / "state").rglob("*"):  # the state db (+ WAL), reports, plots
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    assert len(texts) > 5 and status["round"]["batch_total"] > 0
    for where, text in texts.items():
        for secret in (FAKE_SECRET_ACCESS_KEY, TOKEN):
            assert secret not in text, f"{secret[:8]}... found in {where}"


@pytest.mark.parametrize(
    "key", ["../../escape.png", "a/../../b.png", "/etc/passwd.png", "sp ace/ünï cödé.png"]
)
def test_object_keys_never_become_paths_outside_the_cache(tmp_path: Path, key: str) -> None:
    cache = LabeledCache(tmp_path / "cache", max_bytes=1_000_000)
    path = cache.put(key, "etag", b"data")
    assert path.resolve().is_relative_to((tmp_path / "cache").resolve())
    assert cache.get(key, "etag") == path and path.read_bytes() == b"data"
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("key", ["../outside.png", "a/../../outside.png", "/abs.png"])
def test_a_local_store_refuses_keys_that_leave_its_root(tmp_path: Path, key: str) -> None:
    (tmp_path / "outside.png").write_bytes(b"secret")
    root = tmp_path / "pool"
    root.mkdir()
    store = LocalStore(root)
    with pytest.raises((KeyError, ValueError)):
        store.read(key)


def test_tls_is_verified_by_default_and_a_custom_ca_is_wired(tmp_path: Path) -> None:
    s3 = S3Store("b", endpoint_url="https://127.0.0.1:9", access_key_id="a", secret_access_key="s")
    assert s3._client._endpoint.http_session._verify is True
    ca = certifi.where()
    s3 = S3Store("b", endpoint_url="https://127.0.0.1:9", ca_bundle=Path(ca))
    assert s3._client._endpoint.http_session._verify == ca

    def ssl_context(adapter: LabelStudioAdapter) -> ssl.SSLContext:
        client = adapter.ls.sdk._client_wrapper.httpx_client.httpx_client
        return client._transport._pool._ssl_context  # type: ignore[no-any-return]

    default = ssl_context(LabelStudioAdapter("https://127.0.0.1:9", TOKEN, 1))
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    custom = ssl_context(LabelStudioAdapter("https://127.0.0.1:9", TOKEN, 1, ca_bundle=ca))
    assert custom.verify_mode == ssl.CERT_REQUIRED
    assert custom.get_ca_certs() or custom.cert_store_stats()["x509"] > 0
    with pytest.raises(ConfigError, match=r"label_studio\.ca_bundle"):  # the bundle is read
        _ = LabelStudioAdapter("https://x", TOKEN, 1, ca_bundle=str(tmp_path / "no.pem")).ls.sdk
    fields = Settings.model_json_schema()["$defs"]
    assert "ca_bundle" in fields["LabelStudioSettings"]["properties"]
    assert "ca_bundle" in fields["StorageSettings"]["properties"]


def test_health_server_is_loopback_by_default_and_refuses_every_non_get(
    tmp_path: Path, digit_objects: Any
) -> None:
    assert Settings().server.host == "127.0.0.1"
    engine, _, _ = build(tmp_path, digit_objects[0])
    daemon = Daemon(engine.settings, engine)
    server = HealthServer("127.0.0.1", 0, daemon.metrics, alive=lambda: True, ready=lambda: True)
    server.start()
    try:
        for path in ("/healthz", "/readyz", "/metrics", "/", "/admin"):
            for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"):
                req = urllib.request.Request(
                    f"http://127.0.0.1:{server.port}{path}", data=b"{}", method=method
                )
                with pytest.raises(urllib.error.HTTPError) as err:
                    urllib.request.urlopen(req, timeout=5)
                assert err.value.code in (405, 501), (method, path, err.value.code)
    finally:
        server.stop()
