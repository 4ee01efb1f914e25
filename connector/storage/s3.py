"""Object storage: the pool of images, in an S3-compatible bucket or a local folder.

This is the only module that imports ``boto3`` (house rule 2). ``S3Store`` lives here;
``LocalStore`` lives in ``connector.storage.local`` (no boto3) and is re-exported. Both
implement ``connector.contracts.ports.ObjectStore``:

- ``list_objects(start_after)`` streams image objects in key order (S3's UTF-8 binary
  order, which is also Python's ``str`` order), page by page. The cycle keeps the last
  key it saw as a watermark and asks only for keys after it; a key written *before* the
  watermark in that order (e.g. ``a.png`` after ``z.png`` was listed) is only found by a
  full rescan (``start_after=None``), which the cycle runs now and then.
- ``S3Store.read_many`` keeps at most ``max_workers`` reads in flight (a sliding window),
  so a million keys never become a million futures; ``LocalStore.read_many`` reads in
  the caller's thread (page-cache reads hide no latency worth a thread pool).

Errors a user can hit name the fix: a missing key is ``KeyError``; rejected credentials
are ``AuthError``; a missing bucket or folder is ``ConfigError``; an endpoint that stays
down after the shared retry policy (``connector.retry``) is ``ServiceUnavailable``.
Secrets are handed to boto3 and never kept, logged or shown in a repr.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from connector import retry
from connector.contracts.errors import AuthError, ConfigError, ConnectorError, ServiceUnavailable
from connector.contracts.ports import ObjectInfo
from connector.retry import TRANSIENT_HTTP_STATUS
from connector.storage.local import (
    IMAGE_EXTENSIONS,
    LocalStore,
    matches_extension,
    normalise_extensions,
)
from connector.storage.window import read_many_ordered

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "LocalStore",
    "S3Store",
    "classify_error",
    "is_transient",
    "read_many_ordered",
]

T = TypeVar("T")

# fmt: off
#: S3 error codes that mean "slow down / try again", whatever the HTTP status.
THROTTLING_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable",
})
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
#: Rejected credentials or permissions: never retried, the fix is in the settings.
_AUTH_CODES = frozenset({
    "403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed",
})
# fmt: on


# --------------------------------------------------------------------------- errors


def _client_error_parts(exc: ClientError) -> tuple[str, int | None]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """True for errors worth a retry: connection trouble, timeouts, 5xx, throttling.

    4xx answers (missing key, bad credentials, missing bucket) are never transient.
    """
    if isinstance(exc, ClientError):
        code, status = _client_error_parts(exc)
        return code in THROTTLING_CODES or status in TRANSIENT_HTTP_STATUS
    if isinstance(exc, SSLError):  # a certificate problem does not heal by waiting
        return False
    return isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError)


def classify_error(
    exc: BaseException, *, where: str, bucket: str, key: str | None = None
) -> BaseException:
    """Translate a boto3/botocore error into the error a user should see.

    ``where`` names the store without secrets (``s3://bucket/prefix at http://host``).
    Errors it does not know are returned unchanged.
    """
    if isinstance(exc, ClientError):
        code, status = _client_error_parts(exc)
        if code in _MISSING_BUCKET_CODES or (key is None and status == 404):
            return ConfigError(
                f"bucket {bucket!r} does not exist ({where}); create it or fix storage.bucket"
            )
        if key is not None and (code in _MISSING_KEY_CODES or status == 404):
            return KeyError(key)
        if code in _AUTH_CODES or status == 403:
            return AuthError(
                f"object storage rejected the credentials ({code or status}) for {where}; "
                "fix storage.access_key_id / storage.secret_access_key (or the AWS "
                "environment/profile they come from), or grant them s3:ListBucket and "
                f"s3:GetObject on bucket {bucket!r}"
            )
        if is_transient(exc):
            return ServiceUnavailable(
                f"object storage at {where} keeps failing ({code or status}) after retries; "
                "check the storage service's health and storage.endpoint_url"
            )
        return ConnectorError(f"object storage error at {where}: {code or status}: {exc}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AuthError(
            f"no complete credentials for {where}; set storage.access_key_id and "
            "storage.secret_access_key (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or "
            "an AWS profile)"
        )
    if isinstance(exc, BotoCoreError) and is_transient(exc):
        return ServiceUnavailable(
            f"cannot reach object storage at {where} after retries ({type(exc).__name__}); "
            "start the storage service or fix storage.endpoint_url"
        )
    return exc


def _without_userinfo(url: str | None) -> str | None:
    """An endpoint URL fit for logs: ``http://user:pass@host`` loses ``user:pass@``."""
    if not url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


# --------------------------------------------------------------------------- S3

_SESSION_LOCK = threading.Lock()
_SESSION: boto3.session.Session | None = None


def _shared_session() -> boto3.session.Session:
    """One boto3 session per process: loading the S3 service model costs ~0.2 s a time.

    Credentials given to ``S3Store`` go to its own client, never into this session.
    """
    global _SESSION  # noqa: PLW0603 (created lazily: no I/O at import time)
    if _SESSION is None:
        _SESSION = boto3.session.Session()
    return _SESSION


class S3Store:
    """An S3-compatible bucket (AWS, MinIO, moto) under a key prefix.

    Credentials come from the arguments or, when those are None, boto3's usual chain
    (environment, shared profile, instance role). botocore's own retries are off: the
    shared policy retries transient errors (``retry_attempts`` tries in all, jittered
    exponential waits capped at ``retry_max_wait_s``). TLS certificates are verified,
    against ``ca_bundle`` when given. Keys in and out are relative to
    ``prefix`` (normalised to end with ``/``).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
        max_pool_connections: int = 16,
        page_size: int = 1000,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        retry_attempts: int = 5,
        retry_max_wait_s: float = 20.0,
        ca_bundle: Path | None = None,
    ) -> None:
        if not bucket:
            raise ConfigError("storage.bucket is empty; set it to the pool bucket's name")
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be in 1..1000 (S3's limit), got {page_size}")
        self.bucket = bucket
        prefix = prefix.lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.endpoint_url = endpoint_url
        self.extensions = normalise_extensions(extensions)
        self.page_size = page_size
        self.retry_attempts = retry_attempts
        self.retry_max_wait_s = retry_max_wait_s
        self._outages = retry.Outages()
        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max_pool_connections,
            signature_version="s3v4",
            # MinIO and moto serve buckets by path; AWS accepts both.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        with _SESSION_LOCK:  # creating clients on one session is not thread-safe
            self._client = _shared_session().client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                aws_session_token=session_token,
                config=config,
                # TLS is always verified; a private CA's bundle replaces the system's.
                verify=str(ca_bundle) if ca_bundle else True,
            )

    def __repr__(self) -> str:
        return (
            f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"endpoint_url={_without_userinfo(self.endpoint_url)!r})"
        )

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        endpoint = _without_userinfo(self.endpoint_url)
        return f"{where} at {endpoint}" if endpoint else where

    def _call(
        self, what: str, fn: Callable[..., T], *, missing: str | None = None, **kwargs: Any
    ) -> T:
        """``fn(**kwargs)`` under the shared retry policy, its errors translated for a person.

        ``what`` names the call in retry log lines. ``missing`` is the key a 404 means is
        missing (a 404 on a bucket call is the bucket).
        """
        return retry.call(
            lambda: fn(**kwargs),
            what=f"S3: {what}",
            is_transient=is_transient,
            translate=lambda exc: classify_error(
                exc, where=self.describe(), bucket=self.bucket, key=missing
            ),
            attempts=self.retry_attempts,
            max_wait_s=self.retry_max_wait_s,
            outages=self._outages,
        )

    def list_objects(self, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Image objects under the prefix in key order, strictly after ``start_after``.

        One page (``page_size`` keys) is held at a time. Directory placeholders (keys
        ending in ``/``) and other extensions are skipped.
        """
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix,
            "MaxKeys": self.page_size,
        }
        if start_after:
            kwargs["StartAfter"] = self.prefix + start_after
        while True:
            page = self._call(f"LIST {self.url_for('')}", self._client.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                full = obj["Key"]
                rel = full[len(self.prefix) :]
                if not rel or full.endswith("/") or not matches_extension(rel, self.extensions):
                    continue
                yield ObjectInfo(
                    key=rel,
                    etag=str(obj.get("ETag", "")).strip('"'),
                    size=int(obj.get("Size", 0)),
                    last_modified=obj.get("LastModified"),
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    def _get(self, key: str) -> bytes:
        resp = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        with resp["Body"] as body:  # a read that fails mid-body is retried whole
            data: bytes = body.read()
        return data

    def local_path(self, key: str) -> Path | None:
        """Never local: labeled items go through the labeled cache."""
        return None

    def read(self, key: str) -> bytes:
        """The object's bytes; ``KeyError`` if it does not exist."""
        return self._call(f"GET {self.url_for(key)}", self._get, missing=key, key=key)

    def read_many(
        self, keys: Iterable[str], max_workers: int = 8
    ) -> Iterator[tuple[str, bytes | Exception]]:
        return read_many_ordered(self.read, keys, max_workers)

    def url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def put(self, key: str, data: bytes) -> None:
        """Upload ``data`` as ``key`` (relative to the prefix). For the demo and tests."""
        self._call(
            f"PUT {self.url_for(key)}",
            self._client.put_object,
            Bucket=self.bucket,
            Key=self.prefix + key,
            Body=data,
        )

    def upload_dir(self, local_dir: Path, extensions: Iterable[str] | None = None) -> int:
        """Upload the images under ``local_dir`` (keys = relative POSIX paths); returns a count."""
        source = LocalStore(local_dir, extensions=extensions or self.extensions)
        count = 0
        for info in source.list_objects():
            self.put(info.key, source.read(info.key))
            count += 1
        log.info("uploaded %d objects from %s to %s", count, local_dir, self.describe())
        return count

    def create_bucket(self) -> None:
        """Create the bucket if it is missing (demo set-up; a real pool already exists)."""
        try:
            self._call(f"HEAD bucket {self.bucket}", self._client.head_bucket, Bucket=self.bucket)
            return
        except ConfigError:
            pass
        region = self._client.meta.region_name
        extra: dict[str, Any] = {}
        if region and region != "us-east-1":  # S3 wants the region named outside us-east-1
            extra["CreateBucketConfiguration"] = {"LocationConstraint": region}
        self._call(
            f"create bucket {self.bucket}", self._client.create_bucket, Bucket=self.bucket, **extra
        )

    def check(self) -> dict[str, Any]:
        """Verify the bucket exists and can be listed; raise an error naming the fix."""
        self._call(f"HEAD bucket {self.bucket}", self._client.head_bucket, Bucket=self.bucket)
        page = self._call(
            f"LIST {self.url_for('')}",
            self._client.list_objects_v2,
            Bucket=self.bucket,
            Prefix=self.prefix,
            MaxKeys=1,
        )
        return {
            "backend": "s3",
            "location": self.describe(),
            "bucket_exists": True,
            "listable": True,
            "prefix_empty": not page.get("KeyCount", len(page.get("Contents", []))),
        }


# --------------------------------------------------------------------------- local
