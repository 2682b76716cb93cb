"""The agent's local health endpoint: ``GET http://127.0.0.1:<FLEET_AGENT_HEALTH_PORT>/health``.

Answers 200 when the agent is healthy (authenticated, and a heartbeat was stored within three
heartbeat intervals), else 503, with the JSON document::

    {"status": "healthy"|"unhealthy", "uptime": seconds, "heartbeatCount": n, "heartbeatErrors": n,
     "websocket": "connected"|"opening"|"open"|"disconnected", "lastHeartbeat": ISO time|null,
     "spooled": n}

A minimal HTTP/1.1 responder on ``asyncio.start_server`` (one request per connection), bound to
127.0.0.1 only; port 0 disables it. Other paths are 404, other methods 405.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from functools import partial
from typing import Any

Probe = Callable[[], tuple[bool, dict[str, Any]]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_MAX_HEADER_LINES = 100
_READ_TIMEOUT_S = 5.0


async def start_health_server(port: int, probe: Probe, host: str = "127.0.0.1") -> asyncio.Server | None:
    """Serve ``/health`` on ``host:port`` (None when the port is 0)."""
    if port == 0:
        return None
    return await asyncio.start_server(partial(_serve, probe), host, port)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The method and path of the request; the headers are read and ignored."""
    line = await reader.readline()
    parts = line.decode("latin-1").split()
    for _ in range(_MAX_HEADER_LINES):
        if (await reader.readline()) in (b"\r\n", b"\n", b""):
            break
    return (parts[0], parts[1]) if len(parts) >= 2 else ("", "")


def _response(status: int, body: dict[str, Any], *, head: bool = False) -> bytes:
    payload = json.dumps(body).encode()
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else payload)


def answer(method: str, path: str, probe: Probe) -> bytes:
    """The full HTTP response to one request."""
    if path.split("?", 1)[0] != "/health":
        return _response(404, {"error": "not found"})
    if method not in ("GET", "HEAD"):
        return _response(405, {"error": "method not allowed"})
    healthy, doc = probe()
    return _response(200 if healthy else 503, doc, head=method == "HEAD")


async def _serve(probe: Probe, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        method, path = await asyncio.wait_for(_read_request(reader), _READ_TIMEOUT_S)
        writer.write(answer(method, path, probe))
        await writer.drain()
    except (TimeoutError, ConnectionError, ValueError):
        pass  # a client that goes away or says nothing gets nothing
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
