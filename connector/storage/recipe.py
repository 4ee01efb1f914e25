"""How another process opens the pool's store: a recipe that travels, its secrets masked.

The Ray workers of ``connector.scoring`` read their shards' images straight from the
bucket, so each opens its own store. ``StoreRecipe`` is what they are sent: the bucket,
prefix, endpoint and region, the CA bundle's certificates (the daemon's path means
nothing on another machine), and the keys when the settings hand them over, as
``SecretStr``: the recipe's repr, and so any log line or error that shows it, masks them.
A local folder travels as its path: it must be mounted at the same path on the workers.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from connector.contracts.ports import ObjectStore


@dataclass(frozen=True)
class StoreRecipe:
    """The pool's store, as the arguments that open it (``open``) in any process."""

    kind: Literal["s3", "local"]
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = field(default=None, repr=False)
    secret_access_key: SecretStr | None = field(default=None, repr=False)
    #: The PEM text of ``storage.ca_bundle``, written to a file where the store opens.
    ca_bundle_pem: bytes | None = field(default=None, repr=False)
    local_root: Path | None = None
    local_url_template: str | None = None
    local_document_root: Path | None = None
    #: More ``S3Store`` keyword arguments (retries, timeouts), e.g. the tests' fast ones.
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """Where it points, without secrets."""
        if self.kind == "local":
            return f"folder {self.local_root}"
        return f"s3://{self.bucket}/{self.prefix}" + (
            " (keys sent)" if self.secret_access_key is not None else " (workers' own keys)"
        )

    def open(self) -> ObjectStore:
        """The store, opened in this process (the S3 client is created here, not sent)."""
        if self.kind == "local":
            from connector.storage.local import LocalStore

            assert self.local_root is not None
            return LocalStore(
                self.local_root,
                url_template=self.local_url_template,
                document_root=self.local_document_root,
            )
        from connector.storage.s3 import S3Store

        assert self.bucket is not None
        ca_bundle = None
        if self.ca_bundle_pem is not None:
            # botocore takes a path; the file holds public certificates, not a secret.
            with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as out:
                out.write(self.ca_bundle_pem)
            ca_bundle = Path(out.name)
        return S3Store(
            self.bucket,
            self.prefix,
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key_id=_reveal(self.access_key_id),
            secret_access_key=_reveal(self.secret_access_key),
            ca_bundle=ca_bundle,
            **self.options,
        )


def _reveal(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
