"""The image's HEALTHCHECK: the service's ``/readyz`` (API), or its Redis answering (worker).

``FLEET_SERVICE`` names the service (set by the image); the port is ``<SERVICE>_PORT`` or the
service's default. A worker container has no HTTP port: compose runs this with ``worker``.
Exit 0 healthy, 1 not (Docker's convention); standard library only, so a check costs a few ms.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

# The services' default ports (services/<name>/config.py; tests/unit/test_compose.py checks them).
PORTS = {"gateway": 8000, "auth": 8001, "telemetry": 8002, "commands": 8003, "device": 8004}


def api_ready(service: str) -> bool:
    """``GET /readyz`` answers 200 (Redis, Postgres and migrations are ok)."""
    port = os.environ.get(f"{service.upper()}_PORT") or PORTS[service]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def redis_answers(service: str) -> bool:
    """The worker's Redis answers PING (its streams are what it works on)."""
    url = os.environ.get(f"{service.upper()}_REDIS_URL") or os.environ.get("REDIS_URL", "")
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=3) as s:
            if parts.password:
                user = urllib.parse.unquote(parts.username or "default")
                s.sendall(_command("AUTH", user, urllib.parse.unquote(parts.password)))
                if not s.recv(64).startswith(b"+OK"):
                    return False
            s.sendall(_command("PING"))
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _command(*words: str) -> bytes:
    out = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def main(argv: list[str]) -> int:
    service = os.environ.get("FLEET_SERVICE", "")
    if service not in PORTS:
        print(f"FLEET_SERVICE must be one of {', '.join(PORTS)}, not {service!r}", file=sys.stderr)
        return 1
    role = argv[1] if len(argv) > 1 else "api"
    healthy = redis_answers(service) if role == "worker" else api_ready(service)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
