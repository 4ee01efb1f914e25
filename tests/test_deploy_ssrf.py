"""docker-compose's Label Studio connects the bucket despite its SSRF guard.

Label Studio 1.23 refuses a storage endpoint on a private or loopback address
(``SSRF_PROTECTION_ENABLED``, on by default); inside Docker the S3 service has such an
address (172.16.0.0/12). Here Label Studio runs with the environment of the
``label-studio`` service of docker-compose.yml (parsed and interpolated with
.env.example, not copied), and the connector's settings are those of the ``connector``
service; the S3 service is played by the session's SeaweedFS on loopback, which the
guard refuses just the same.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from label_studio_sdk import LabelStudio

from connector.app import _storage_connection
from connector.contracts.errors import ConnectorError
from connector.contracts.ports import TaskToPush
from connector.devtools.labelstudio_server import LabelStudioServer, start_label_studio
from connector.devtools.s3_server import S3Server
from connector.labelstudio.adapter import LabelStudioAdapter
from connector.labelstudio.config import image_classification_config
from connector.settings import Settings, load_settings
from connector.storage.s3 import S3Store
from tests.fixtures.labelstudio import BIN_ENV
from tests.test_deploy import COMPOSE, DEPLOY, ENV_EXAMPLE, _env_file, _environment
from tests.test_deploy import _interpolate_tree as interpolate

pytestmark = [pytest.mark.labelstudio, pytest.mark.s3, pytest.mark.slow]


def _compose() -> tuple[dict[str, str], Settings, dict[str, str]]:
    """(Label Studio's environment, the connector's settings, .env.example) of compose."""
    dotenv = _env_file(ENV_EXAMPLE)
    services = interpolate(yaml.safe_load(COMPOSE.read_text()), dotenv)["services"]
    connector_env = _environment(services["connector"])
    settings = load_settings(DEPLOY / "settings.compose.toml", environ=connector_env)
    return _environment(services["label-studio"]), settings, dotenv


@pytest.fixture(scope="module")
def compose_label_studio(
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
    s3_server_process: S3Server,
) -> Iterator[tuple[LabelStudioServer, Settings, dict[str, str]]]:
    ls_env, settings, dotenv = _compose()
    assert settings.storage.endpoint_url
    # compose's S3 endpoint becomes the loopback server; everything else is as compose has it
    env = {
        k: v.replace(settings.storage.endpoint_url, s3_server_process.url)
        for k, v in ls_env.items()
    }
    # Label Studio's defaults where compose sets nothing (the dev servers turn the guard off)
    env.setdefault("SSRF_PROTECTION_ENABLED", "true")
    cache = getattr(pytestconfig, "cache", None)
    template = cache.mkdir("label-studio-template") if cache is not None else None
    server = start_label_studio(
        os.environ[BIN_ENV],
        tmp_path_factory.mktemp("compose-ls") / "data",
        template_dir=template,
        extra_env=env,
    )
    try:
        yield server, settings, dotenv
    finally:
        server.stop()


def _adapter(server: LabelStudioServer, token: str, settings: Settings) -> LabelStudioAdapter:
    """An adapter on a new project, as the compose connector would make it."""
    client = LabelStudio(base_url=server.url, api_key=token)
    project = client.projects.create(
        title=settings.label_studio.project_title,
        label_config=image_classification_config(["cat", "dog"]),
    )
    return LabelStudioAdapter(
        server.url, token, int(project.id or 0), retry_attempts=2, retry_max_wait_s=0.1
    )


def test_compose_keeps_the_guard_on() -> None:
    ls_env, settings, _ = _compose()
    assert ls_env.get("SSRF_PROTECTION_ENABLED", "true").lower() not in ("false", "0", "no")
    assert ls_env.get("USE_DEFAULT_BANNED_SUBNETS", "true").lower() not in ("false", "0", "no")
    # Label Studio's own, trusted endpoint is the one the connector reads from
    assert ls_env["S3_ENDPOINT"] == settings.storage.endpoint_url
    assert settings.storage.label_studio_own_endpoint
    assert _storage_connection(settings)["endpoint"] is None


def test_compose_label_studio_connects_the_bucket_on_a_private_address(
    compose_label_studio: tuple[LabelStudioServer, Settings, dict[str, str]],
    s3_server_process: S3Server,
    s3_bucket: str,
) -> None:
    server, settings, dotenv = compose_label_studio
    # compose's credentials: Label Studio made the admin and its token from its environment
    adapter = _adapter(server, dotenv["LABEL_STUDIO_TOKEN"], settings)
    store = S3Store(
        s3_bucket,
        "pool/",
        endpoint_url=s3_server_process.url,
        region="us-east-1",
        access_key_id=s3_server_process.access_key_id,
        secret_access_key=s3_server_process.secret_access_key,
    )
    store.put("cat.png", b"not really a png")
    connection: dict[str, Any] = {
        **_storage_connection(settings),
        "bucket": s3_bucket,
        "prefix": "pool/",
        "access_key_id": s3_server_process.access_key_id,
        "secret_access_key": s3_server_process.secret_access_key,
    }

    # the negative control: the endpoint sent with the storage is refused by the guard
    with pytest.raises(ConnectorError, match="reserved network address"):
        adapter.connect_source_storage(**{**connection, "endpoint": s3_server_process.url})

    storage_id = adapter.connect_source_storage(**connection)
    assert storage_id > 0

    # and annotators see the image: Label Studio reads it through its own endpoint
    assert settings.storage.presign_urls is False  # browsers cannot reach the endpoint
    task = TaskToPush(
        item_id="cat.png",
        image_url=f"s3://{s3_bucket}/pool/cat.png",
        round=0,
        split="train",
        priority=0,
        predicted_label="cat",
        confidence=0.9,
    )
    task_id = adapter.push([task], "r0-compose")["cat.png"]
    client = LabelStudio(base_url=server.url, api_key=dotenv["LABEL_STUDIO_TOKEN"])
    url = str(client.tasks.get(id=str(task_id)).data["image"])
    # Label Studio's proxy (presign_urls = false), at the public URL compose gives it
    public = dotenv["LABEL_STUDIO_PUBLIC_URL"]
    assert url.startswith(f"{public}/tasks/"), url
    req = urllib.request.Request(server.url + url.removeprefix(public))
    req.add_header("Authorization", f"Token {dotenv['LABEL_STUDIO_TOKEN']}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.read() == b"not really a png"
