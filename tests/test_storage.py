"""Object storage adapter: S3 against a real server (SeaweedFS) over HTTP, LocalStore on tmp."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)

from connector.contracts.errors import AuthError, ConfigError, ServiceUnavailable
from connector.devtools.datasets import LabeledImage
from connector.storage.s3 import (
    LocalStore,
    S3Store,
    classify_error,
    is_transient,
    read_many_ordered,
)
from tests.fixtures.s3 import FAKE_SECRET_ACCESS_KEY, upload_digits

# Keys whose str order differs from a naive directory walk ("a-c.png" < "a/b.png").
TRICKY_KEYS = ["a.png", "a/b.png", "a-c.png", "a0.png", "b/c/d.png", "b/c.png", "Z.png"]


def _client_error(code: str, status: int, op: str = "GetObject") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "msg"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, op)


def _free_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _put(client: Any, bucket: str, keys: list[str], prefix: str = "pool/") -> None:
    for key in keys:
        client.put_object(Bucket=bucket, Key=prefix + key, Body=key.encode())


def _count_calls(store: S3Store, event: str) -> list[int]:
    """Count botocore events on the store's client (e.g. one per HTTP attempt)."""
    calls = [0]

    def handler(**_: Any) -> None:
        calls[0] += 1

    store._client.meta.events.register(event, handler)
    return calls


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_client_error("SlowDown", 503), True),
        (_client_error("Throttling", 400), True),
        (_client_error("RequestTimeout", 400), True),
        (_client_error("InternalError", 500), True),
        (_client_error("Whatever", 502), True),
        (_client_error("TooManyRequests", 429), True),
        (_client_error("NoSuchKey", 404), False),
        (_client_error("AccessDenied", 403), False),
        (_client_error("InvalidAccessKeyId", 403), False),
        (_client_error("InvalidArgument", 400), False),
        (EndpointConnectionError(endpoint_url="http://x"), True),
        (ConnectTimeoutError(endpoint_url="http://x"), True),
        (ReadTimeoutError(endpoint_url="http://x"), True),
        (SSLError(endpoint_url="http://x", error=Exception("bad cert")), False),
        (NoCredentialsError(), False),
        (ValueError("not ours"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_classify_error_names_the_fix() -> None:
    kw: dict[str, Any] = {"where": "s3://b/p/ at http://h", "bucket": "b"}
    missing = classify_error(_client_error("NoSuchKey", 404), key="k.png", **kw)
    assert isinstance(missing, KeyError)
    assert missing.args == ("k.png",)
    assert isinstance(classify_error(_client_error("404", 404, "HeadBucket"), **kw), ConfigError)
    no_bucket = classify_error(_client_error("NoSuchBucket", 404), key="k.png", **kw)
    assert isinstance(no_bucket, ConfigError)
    assert "create it or fix storage.bucket" in str(no_bucket)
    for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
        err = classify_error(_client_error(code, 403), key="k.png", **kw)
        assert isinstance(err, AuthError), code
        assert "storage.secret_access_key" in str(err)
    assert isinstance(classify_error(NoCredentialsError(), **kw), AuthError)
    down = classify_error(EndpointConnectionError(endpoint_url="http://h"), **kw)
    assert isinstance(down, ServiceUnavailable)
    assert "http://h" in str(down)
    other = ValueError("x")
    assert classify_error(other, **kw) is other


# --------------------------------------------------------------------------- read_many window


def test_read_many_is_lazy_and_bounded_on_an_endless_key_stream() -> None:
    taken = [0]

    def keys() -> Iterator[str]:
        for i in itertools.count():
            taken[0] += 1
            if taken[0] > 100:  # an eager implementation fails here instead of hanging
                raise AssertionError("read_many consumed the key stream eagerly")
            yield f"k{i}"

    results = read_many_ordered(lambda k: k.encode(), keys(), max_workers=4)
    first = list(itertools.islice(results, 3))
    assert first == [("k0", b"k0"), ("k1", b"k1"), ("k2", b"k2")]
    # 4 in the window plus one refill per result yielded
    assert taken[0] <= 4 + 3
    results.close()  # type: ignore[attr-defined]


def test_read_many_rejects_zero_workers() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        read_many_ordered(lambda k: b"", ["a"], max_workers=0)


# --------------------------------------------------------------------------- S3 listing


@pytest.mark.s3
@pytest.mark.moto  # AWS's binary key order; SeaweedFS walks directories
def test_s3_lists_images_in_key_order_relative_to_prefix(
    s3_client: Any, s3_bucket: str, s3_store_factory: Any
) -> None:
    _put(s3_client, s3_bucket, [*TRICKY_KEYS, "B.JPG", "notes.txt", "labels.csv"])
    s3_client.put_object(Bucket=s3_bucket, Key="pool/dir.png/", Body=b"")  # a folder marker
    s3_client.put_object(Bucket=s3_bucket, Key="pool2/outside.png", Body=b"x")
    s3_client.put_object(Bucket=s3_bucket, Key="outside.png", Body=b"x")
    store = s3_store_factory(s3_bucket, prefix="pool")  # no trailing slash

    infos = list(store.list_objects())

    assert [i.key for i in infos] == sorted([*TRICKY_KEYS, "B.JPG"])
    head = s3_client.head_object(Bucket=s3_bucket, Key="pool/a.png")
    a = next(i for i in infos if i.key == "a.png")
    assert a.etag == head["ETag"].strip('"') == hashlib.md5(b"a.png").hexdigest()
    assert a.size == len(b"a.png")
    assert a.last_modified is not None
    assert store.url_for("a/b.png") == f"s3://{s3_bucket}/pool/a/b.png"
    assert store.read("a/b.png") == b"a/b.png"


@pytest.mark.s3
def test_s3_extension_filter_is_case_insensitive(
    s3_client: Any, s3_bucket: str, s3_store_factory: Any
) -> None:
    _put(s3_client, s3_bucket, ["x.jpg", "y.JPG", "z.Jpeg", "w.png", "v.jpg.txt"])
    store = s3_store_factory(s3_bucket, extensions=("JPG", ".jpeg"))
    assert [i.key for i in store.list_objects()] == ["x.jpg", "y.JPG", "z.Jpeg"]


@pytest.mark.s3
def test_s3_listing_pages_and_streams(
    s3_client: Any, s3_bucket: str, s3_store_factory: Any
) -> None:
    keys = [f"img-{i:02d}.png" for i in range(7)]
    _put(s3_client, s3_bucket, [*keys, "skip-1.txt", "skip-2.txt"])
    store = s3_store_factory(s3_bucket, page_size=2)
    calls = _count_calls(store, "before-call.s3.ListObjectsV2")

    listing = store.list_objects()
    assert next(listing).key == "img-00.png"
    assert calls[0] == 1  # the first key comes from the first page alone
    assert ["img-00.png", *(i.key for i in listing)] == keys
    assert calls[0] == 5  # 9 objects, 2 per page


@pytest.mark.s3
def test_s3_start_after_is_incremental_and_rescan_finds_earlier_keys(
    s3_client: Any, s3_bucket: str, s3_store_factory: Any
) -> None:
    _put(s3_client, s3_bucket, ["b.png", "d.png", "f.png"])
    store = s3_store_factory(s3_bucket, page_size=1)
    watermark = [i.key for i in store.list_objects()][-1]
    assert watermark == "f.png"
    assert list(store.list_objects(start_after=watermark)) == []
    assert [i.key for i in store.list_objects(start_after="b.png")] == ["d.png", "f.png"]
    assert [i.key for i in store.list_objects(start_after="c")] == ["d.png", "f.png"]

    _put(s3_client, s3_bucket, ["a.png", "g.png"])  # one before, one after the watermark
    assert [i.key for i in store.list_objects(start_after=watermark)] == ["g.png"]
    assert [i.key for i in store.list_objects()] == ["a.png", "b.png", "d.png", "f.png", "g.png"]


@pytest.mark.s3
@pytest.mark.moto  # AWS's binary key order; SeaweedFS walks directories
def test_s3_and_local_list_in_the_same_order(
    s3_client: Any, s3_bucket: str, s3_store_factory: Any, tmp_path: Path
) -> None:
    _put(s3_client, s3_bucket, TRICKY_KEYS)
    local = LocalStore(tmp_path)
    for key in TRICKY_KEYS:
        local.put(key, key.encode())
    s3 = s3_store_factory(s3_bucket)
    assert [i.key for i in s3.list_objects()] == [i.key for i in local.list_objects()]
    assert [i.key for i in s3.list_objects("a-c.png")] == [
        i.key for i in local.list_objects("a-c.png")
    ]


# --------------------------------------------------------------------------- S3 reads and errors


@pytest.mark.s3
def test_s3_missing_key_and_missing_bucket(s3_store: S3Store, s3_store_factory: Any) -> None:
    calls = _count_calls(s3_store, "before-send.s3.GetObject")
    with pytest.raises(KeyError) as missing:
        s3_store.read("nope.png")
    assert missing.value.args == ("nope.png",)
    assert calls[0] == 1  # a 404 is never retried

    ghost = s3_store_factory("no-such-bucket-alc")
    with pytest.raises(ConfigError, match=r"create it or fix storage\.bucket"):
        ghost.read("a.png")
    with pytest.raises(ConfigError, match=r"'no-such-bucket-alc'.*create it or fix storage"):
        ghost.check()
    with pytest.raises(ConfigError):
        list(ghost.list_objects())


@pytest.mark.s3
def test_s3_put_upload_dir_and_check(s3_store: S3Store, tmp_path: Path) -> None:
    assert s3_store.check()["prefix_empty"] is True
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "one.png").write_bytes(b"1")
    (tmp_path / "two.PNG").write_bytes(b"2")
    (tmp_path / "readme.txt").write_bytes(b"no")
    assert s3_store.upload_dir(tmp_path) == 2
    s3_store.put("three.png", b"3")
    assert [i.key for i in s3_store.list_objects()] == ["sub/one.png", "three.png", "two.PNG"]
    assert s3_store.read("sub/one.png") == b"1"
    report = s3_store.check()
    assert report["listable"] is True
    assert report["prefix_empty"] is False


@pytest.mark.s3
def test_s3_read_many_in_order_with_bounded_concurrency(
    s3_client: Any, s3_bucket: str, s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"k{i:02d}.png" for i in range(12)]
    _put(s3_client, s3_bucket, keys)
    in_flight = 0
    peak = 0
    lock = threading.Lock()
    real_read = s3_store.read

    def counting_read(key: str) -> bytes:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            time.sleep(0.02)  # long enough for reads to overlap
            return real_read(key)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(s3_store, "read", counting_read)
    wanted = [*reversed(keys[:6]), "missing.png", *keys[6:]]

    results = list(s3_store.read_many(wanted, max_workers=3))

    assert [k for k, _ in results] == wanted
    for key, data in results:
        if key == "missing.png":
            assert isinstance(data, KeyError)
        else:
            assert data == key.encode()
    assert 2 <= peak <= 3


@pytest.mark.s3
def test_s3_throttling_is_retried_and_403_is_not(s3_bucket: str, s3_store_factory: Any) -> None:
    store = s3_store_factory(s3_bucket, retry_attempts=3, retry_max_wait_s=0.01)
    store.put("a.png", b"A")
    answers = ["SlowDown", "SlowDown"]
    calls = [0]

    def inject(**_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        calls[0] += 1
        if not answers:
            return None  # let the real request through
        code = answers.pop(0)
        status = 503 if code == "SlowDown" else 403
        parsed = {
            "Error": {"Code": code, "Message": code},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        return AWSResponse("http://x", status, HTTPHeaders(), None), parsed

    store._client.meta.events.register("before-call.s3.GetObject", inject)
    assert store.read("a.png") == b"A"
    assert calls[0] == 3

    answers[:] = ["AccessDenied", "AccessDenied", "AccessDenied"]
    calls[0] = 0
    with pytest.raises(AuthError, match=r"storage\.access_key_id"):
        store.read("a.png")
    assert calls[0] == 1

    answers[:] = ["SlowDown"] * 5
    calls[0] = 0
    with pytest.raises(ServiceUnavailable, match="after retries"):
        store.read("a.png")
    assert calls[0] == 3


@pytest.mark.s3
def test_s3_endpoint_down_is_service_unavailable_after_bounded_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint = f"http://127.0.0.1:{_free_closed_port()}"
    store = S3Store(
        "pool",
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="AKIDEXAMPLE",
        secret_access_key=FAKE_SECRET_ACCESS_KEY,
        retry_attempts=3,
        retry_max_wait_s=0.01,
        connect_timeout_s=1.0,
    )
    attempts = _count_calls(store, "before-send.s3")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="connector.retry"):
        with pytest.raises(ServiceUnavailable) as err:
            store.read("a.png")
        with pytest.raises(ServiceUnavailable, match="start the storage service"):
            store.check()
    assert endpoint in str(err.value)
    assert "storage.endpoint_url" in str(err.value)
    assert attempts[0] == 3 + 3
    assert time.monotonic() - started < 10
    assert FAKE_SECRET_ACCESS_KEY not in caplog.text
    # one WARNING when the outage starts, naming the call; the other retries at DEBUG
    retries = [r.getMessage() for r in caplog.records if r.name == "connector.retry"]
    assert len(retries) == 1
    assert retries[0].startswith("S3: GET s3://pool/a.png: attempt 1 failed (")
    assert "<unknown>" not in caplog.text


@pytest.mark.s3
def test_s3_wrong_credentials_are_auth_errors_naming_the_fix(
    s3_bucket: str, s3_store_factory: Any, s3_iam_auth: Callable[[], tuple[str, str]]
) -> None:
    key_id, secret = s3_iam_auth()

    def store_with(key_id: str, secret: str) -> S3Store:
        return s3_store_factory(
            s3_bucket, access_key_id=key_id, secret_access_key=secret, retry_attempts=3
        )

    good = store_with(key_id, secret)
    good.put("a.png", b"A")  # the positive control: the server really checks, and accepts these
    assert good.read("a.png") == b"A"

    unknown_key = store_with("AKIAUNKNOWN000000000", secret)
    wrong_secret = store_with(key_id, "not-the-secret-at-all")
    for store, code in (
        (unknown_key, "InvalidAccessKeyId"),
        (wrong_secret, "SignatureDoesNotMatch"),
    ):
        attempts = _count_calls(store, "before-send.s3")
        with pytest.raises(AuthError) as err:
            store.read("a.png")
        assert code in str(err.value)
        assert "storage.access_key_id / storage.secret_access_key" in str(err.value)
        assert attempts[0] == 1  # 403 is never retried
        with pytest.raises(AuthError):
            store.check()
        with pytest.raises(AuthError):
            list(store.list_objects())
        shown = "".join(traceback.format_exception(err.value)) + repr(store) + store.describe()
        assert secret not in shown
        assert "not-the-secret-at-all" not in shown


# --------------------------------------------------------------------------- secrets


def test_s3_repr_and_describe_hide_secrets() -> None:
    store = S3Store(
        "bkt",
        "pool",
        endpoint_url="http://user:pw-in-url@minio:9000",
        access_key_id="AKIA-VISIBLE-NOT",
        secret_access_key="super-secret-value",
        session_token="session-token-value",
    )
    shown = repr(store) + str(store) + store.describe()
    for secret in ("super-secret-value", "session-token-value", "AKIA-VISIBLE-NOT", "pw-in-url"):
        assert secret not in shown
    assert "bkt" in repr(store)
    assert "pool/" in repr(store)
    assert "http://minio:9000" in repr(store)
    assert store.describe() == "s3://bkt/pool/ at http://minio:9000"


def test_s3_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match=r"storage\.bucket"):
        S3Store("")
    with pytest.raises(ConfigError, match=r"storage\.extensions"):
        S3Store("b", extensions=())
    with pytest.raises(ValueError, match="page_size"):
        S3Store("b", page_size=5000)


# --------------------------------------------------------------------------- LocalStore


def _local(tmp_path: Path, keys: list[str], **kwargs: Any) -> LocalStore:
    store = LocalStore(tmp_path / "pool", **kwargs)
    for key in keys:
        store.put(key, key.encode())
    return store


def test_local_lists_in_key_order_and_filters(tmp_path: Path) -> None:
    store = _local(tmp_path, [*TRICKY_KEYS, "c/IMG.JPEG", "notes.txt", "d/e.txt"])
    (tmp_path / "pool" / "empty.png").mkdir()  # a directory named like an image
    infos = list(store.list_objects())
    assert [i.key for i in infos] == sorted([*TRICKY_KEYS, "c/IMG.JPEG"])
    a = next(i for i in infos if i.key == "a/b.png")
    assert a.size == len(b"a/b.png")
    assert store.read("a/b.png") == b"a/b.png"


def test_local_start_after_matches_a_filter_of_the_full_listing(tmp_path: Path) -> None:
    store = _local(tmp_path, TRICKY_KEYS)
    full = [i.key for i in store.list_objects()]
    for watermark in [*full, "", "a/", "a/z", "b", "b/c/", "b/c/e", "zzz", "0"]:
        expected = [k for k in full if k > watermark]
        assert [i.key for i in store.list_objects(start_after=watermark)] == expected, watermark


def test_local_etag_changes_when_a_file_is_rewritten(tmp_path: Path) -> None:
    store = _local(tmp_path, ["a.png"])
    before = next(iter(store.list_objects())).etag
    store.put("a.png", b"different, longer content")
    assert next(iter(store.list_objects())).etag != before


def test_local_put_replaces_atomically_with_ordinary_permissions(tmp_path: Path) -> None:
    store = _local(tmp_path, ["a/b.png"])
    store.put("a/b.png", b"new")
    assert store.read("a/b.png") == b"new"
    assert sorted(p.name for p in (tmp_path / "pool" / "a").iterdir()) == ["b.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "pool" / "a" / "b.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_local_read_missing_and_traversal(tmp_path: Path) -> None:
    store = _local(tmp_path, ["a/b.png"])
    (tmp_path / "secret.png").write_bytes(b"outside")
    (tmp_path / "pool" / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(KeyError):
        store.read("a/missing.png")
    with pytest.raises(KeyError):
        store.read("a")  # a folder, not an object
    for bad in ("../secret.png", "a/../../secret.png", "/etc/passwd", "", "a\\b.png", "link.png"):
        with pytest.raises(ValueError, match="invalid key"):
            store.read(bad)
    assert store.read("a/b.png") == b"a/b.png"
    (tmp_path / "pool" / "inner.png").symlink_to(tmp_path / "pool" / "a" / "b.png")
    assert [i.key for i in store.list_objects()] == ["a/b.png", "inner.png"]  # not link.png
    assert store.read("inner.png") == b"a/b.png"


def test_local_url_for(tmp_path: Path) -> None:
    plain = _local(tmp_path, ["a b.png"])
    assert plain.url_for("a b.png") == (tmp_path / "pool" / "a b.png").as_uri()
    ls = LocalStore(
        tmp_path / "pool", url_template="/data/local-files/?d={path}", document_root=tmp_path
    )
    assert ls.url_for("a b.png") == "/data/local-files/?d=pool/a%20b.png"
    with pytest.raises(ConfigError, match="document root"):
        LocalStore(tmp_path, url_template="{path}", document_root=tmp_path / "pool")
    assert "file://" in ls.describe()


def test_local_check_and_read_many(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"create it or fix storage\.local_root"):
        LocalStore(tmp_path / "nowhere").check()
    store = _local(tmp_path, ["x.png", "y.png"])
    assert store.check()["prefix_empty"] is False
    results = list(store.read_many(["y.png", "gone.png", "x.png"], max_workers=2))
    assert [k for k, _ in results] == ["y.png", "gone.png", "x.png"]
    assert results[0][1] == b"y.png"
    assert isinstance(results[1][1], KeyError)


@pytest.mark.s3
def test_upload_digits_helper(
    s3_client: Any, s3_bucket: str, s3_store: S3Store, tmp_path: Path
) -> None:
    # the digits_dir fixture's shape, small, without loading scikit-learn
    images = [LabeledImage(f"digit-{i:05d}.png", str(i % 10)) for i in (7, 3, 11, 5)]
    for img in images:
        (tmp_path / img.key).write_bytes(img.key.encode())
    (tmp_path / "labels.csv").write_text("path,label\n")
    keys = upload_digits(s3_client, s3_bucket, "pool/", (tmp_path, images), limit=3)
    assert keys == sorted(img.key for img in images)[:3]
    assert [i.key for i in s3_store.list_objects()] == keys
    assert s3_store.read(keys[0]) == (tmp_path / keys[0]).read_bytes()
    assert upload_digits(s3_client, s3_bucket, "other/", tmp_path) == sorted(
        img.key for img in images
    )
