"""Container health check: exit 0 when the connector's /healthz answers 200, else 1.

Used by the image's HEALTHCHECK and by docker-compose. The slim base image has no curl,
and the daemon's heartbeat (not just an open port) is what /healthz reports. The port is
ALC_SERVER__PORT (the image sets 9108); keep it in the environment, not only in the TOML
file, when you change it.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("ALC_SERVER__PORT") or "9108"
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:  # URLError, HTTPError (503 = stale heartbeat), timeouts
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
