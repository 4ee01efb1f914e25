"""A local S3 server for development: moto's, in this process, on a loopback port.

Used by ``al-connector demo``; ``moto[server]`` is a test/demo dependency.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from connector.devtools.servers import DevServerError, http_ok


@dataclass
class S3Server:
    """moto's S3 server in this process (threaded), on a free loopback port."""

    url: str
    access_key_id: str
    secret_access_key: str
    region: str
    _server: Any = field(repr=False)

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # best effort at shutdown; never masks an error
            self._server.stop()

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_s3_server(host: str = "127.0.0.1", port: int = 0) -> S3Server:
    """Start moto's S3 server (``moto[server]``, a test/demo dependency) on loopback.

    moto accepts any credentials; fixed fake ones are returned for the clients.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    url = f"http://{bound_host}:{bound_port}"
    deadline = time.monotonic() + 30
    while http_ok(f"{url}/moto-api/data.json") is None:
        if time.monotonic() > deadline:
            server.stop()
            raise DevServerError(f"moto S3 server did not answer on {url} within 30s")
        time.sleep(0.1)
    return S3Server(url, "alc-demo-access-key", "alc-demo-secret-key", "us-east-1", server)
