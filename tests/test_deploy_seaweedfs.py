"""docker-compose's S3 service: deploy/seaweedfs/start.sh's accounts and init.sh's bucket
and upload, run against the local SeaweedFS (the same ``weed`` as the compose image's
version), with the values of .env.example."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from connector.contracts.errors import AuthError
from connector.devtools.s3_server import find_weed, start_s3_server
from connector.storage.s3 import S3Store
from tests.test_deploy import DEPLOY, ENV_EXAMPLE, _env_file

pytestmark = pytest.mark.s3


def _store(url: str, bucket: str, key_id: str, secret: str) -> S3Store:
    return S3Store(
        bucket,
        "",
        endpoint_url=url,
        region="us-east-1",
        access_key_id=key_id,
        secret_access_key=secret,
        retry_attempts=1,
    )


def test_start_and_init_scripts_give_a_read_only_account_and_the_pool(tmp_path: Path) -> None:
    env = _env_file(ENV_EXAMPLE)
    config = tmp_path / "s3.json"
    script_env = {**os.environ, **env, "S3_ADMIN_ACCESS_KEY": env["S3_ADMIN_ACCESS_KEY"]}
    subprocess.run(
        ["sh", str(DEPLOY / "seaweedfs" / "start.sh"), "--config-only"],
        env={**script_env, "S3_CONFIG": str(config)},
        check=True,
    )
    identities = json.loads(config.read_text())["identities"]
    assert [i["name"] for i in identities] == ["admin", "al-connector"]
    assert config.stat().st_mode & 0o077 == 0, "the keys file is readable by others"

    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    (pool / "a.png").write_bytes(b"A")
    (pool / "sub" / "b.png").write_bytes(b"B")
    (pool / ".gitignore").write_text("*\n")
    with start_s3_server(tmp_path / "s3", s3_config=config) as server:
        init_env = {
            **script_env,
            "WEED": str(find_weed()),
            "SEAWEEDFS_MASTER": f"127.0.0.1:{server.ports['master.port']}",
            "SEAWEEDFS_FILER": f"127.0.0.1:{server.ports['filer.port']}",
            "POOL_MOUNT": str(pool),
        }
        for _ in range(2):  # a second run finds the bucket and uploads again
            subprocess.run(["sh", str(DEPLOY / "seaweedfs" / "init.sh")], env=init_env, check=True)

        bucket = env["POOL_BUCKET"]
        reader = _store(server.url, bucket, env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"])
        assert [o.key for o in reader.list_objects()] == ["a.png", "sub/b.png"]
        assert reader.read("sub/b.png") == b"B"
        reader.check()
        with pytest.raises(AuthError):
            reader.put("c.png", b"C")  # read-only
        admin = _store(server.url, bucket, env["S3_ADMIN_ACCESS_KEY"], env["S3_ADMIN_SECRET_KEY"])
        admin.put("c.png", b"C")
        assert reader.read("c.png") == b"C"
