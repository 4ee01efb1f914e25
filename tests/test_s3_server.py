"""The local S3 server (SeaweedFS, ``connector.devtools.s3_server``) of the demo and tests:
loopback only, real key checks, clean teardown, and the one way it differs from AWS."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connector.contracts.errors import AuthError
from connector.devtools.s3_server import S3Server, start_s3_server
from connector.storage.s3 import S3Store

pytestmark = pytest.mark.s3


def _listening_ports(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets the process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = str(fd.readlink()) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            addr_hex, port_hex = fields[1].split(":")
            addr = socket.inet_ntoa(bytes.fromhex(addr_hex)[::-1])
            found.append((addr, int(port_hex, 16)))
    return found


def test_listens_on_loopback_only_and_stop_removes_everything(tmp_path: Path) -> None:
    server = start_s3_server()
    try:
        ports = _listening_ports(server.process.pid)
        assert ports, "SeaweedFS listens on no TCP port"
        assert {addr for addr, _ in ports} == {"127.0.0.1"}
        assert ("127.0.0.1", int(server.url.rsplit(":", 1)[1])) in ports
        assert server.data_dir.is_dir()
        assert server.secret_access_key not in repr(server)
    finally:
        server.stop()
    assert server.process.poll() is not None
    assert not server.data_dir.exists()  # a temporary folder it made itself
    server.stop()  # idempotent


def test_checks_keys_and_signatures(
    s3_bucket: str,
    s3_store_factory: Callable[..., S3Store],
    s3_iam_auth: Callable[[], tuple[str, str]],
) -> None:
    key_id, secret = s3_iam_auth()
    good = s3_store_factory(s3_bucket, access_key_id=key_id, secret_access_key=secret)
    good.put("a.png", b"A")
    assert good.read("a.png") == b"A"
    bad = s3_store_factory(s3_bucket, secret_access_key="not-the-secret")
    with pytest.raises(AuthError, match="SignatureDoesNotMatch"):
        bad.read("a.png")


def test_lists_by_directory_walk_and_a_full_rescan_finds_what_an_increment_missed(
    s3_client: Any, s3_bucket: str, s3_store_factory: Callable[..., S3Store]
) -> None:
    """SeaweedFS lists a bucket as a walk of its directory tree, not in S3's binary key
    order (docs/storage.md). The pool's incremental listing (``start_after`` the highest
    key seen) can then miss a new key until the next full rescan; this pins both facts,
    so the docs are revisited if SeaweedFS changes."""
    for key in ["a-c.png", "a/b.png", "b/c.png"]:
        s3_client.put_object(Bucket=s3_bucket, Key=f"pool/{key}", Body=b"x")
    store = s3_store_factory(s3_bucket)
    listed = [o.key for o in store.list_objects()]
    assert listed == ["a/b.png", "a-c.png", "b/c.png"]  # AWS: a-c.png, a/b.png, b/c.png
    watermark = max(listed)

    # after the watermark in binary order, but before it in the directory walk
    s3_client.put_object(Bucket=s3_bucket, Key="pool/b/c/d.png", Body=b"x")
    assert watermark < "b/c/d.png"
    assert [o.key for o in store.list_objects(start_after=watermark)] == []
    assert "b/c/d.png" in [o.key for o in store.list_objects()]


def test_a_second_server_gets_other_ports_and_its_own_folder(
    s3_server_process: S3Server, tmp_path: Path
) -> None:
    with start_s3_server(tmp_path / "s3") as other:
        assert other.url != s3_server_process.url
        assert other.data_dir == tmp_path / "s3"
        assert (tmp_path / "s3" / "weed.log").is_file()
    assert other.process.poll() is not None
    assert (tmp_path / "s3").is_dir()  # a folder it was given is left to its owner
