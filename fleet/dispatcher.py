"""One ASGI app in front of the composed services: routes each request to a service's own app.

The dispatcher answers the platform-wide ``/healthz``, ``/readyz`` and ``/metrics`` (one process, one
registry: every service's figures in one scrape) itself, forwards HTTP and
WebSocket scopes by :mod:`fleet.routes`, and acknowledges the lifespan protocol without passing it
on: ``fleet up`` starts and stops the services itself.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from .routes import ROUTES, Route, check_routes, resolve

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ReadinessProbe = Callable[[], Awaitable[Mapping[str, Mapping[str, str]]]]
# The Prometheus scrape: the body and its content type.
MetricsProbe = Callable[[], Awaitable[tuple[bytes, str]]]


class Dispatcher:
    """The platform's single ASGI app."""

    def __init__(
        self,
        apps: Mapping[str, ASGIApp],
        readiness: ReadinessProbe,
        routes: Sequence[Route] = ROUTES,
        metrics: MetricsProbe | None = None,
    ) -> None:
        check_routes(routes, apps.keys())
        self.apps = dict(apps)
        self.routes = tuple(routes)
        self.readiness = readiness
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI connection."""
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind not in ("http", "websocket"):
            raise RuntimeError(f"unsupported ASGI scope type {kind!r}")
        path = _route_path(scope)
        if kind == "http" and (path in ("/healthz", "/readyz") or (path == "/metrics" and self.metrics)):
            await self._own(scope, send, path)
            return
        target = resolve(path, self.routes, self.apps.keys())
        if target is None:
            await _not_found(scope, receive, send, path)
            return
        child = dict(scope)
        child["root_path"] = scope.get("root_path", "") + target.root_path
        await self.apps[target.service](child, receive, send)

    async def _own(self, scope: Scope, send: Send, path: str) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            body = _error("METHOD_NOT_ALLOWED", f"{scope['method']} is not allowed on {path}")
            await send_json(send, 405, body, [(b"allow", b"GET, HEAD")])
        elif path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
        elif path == "/metrics" and self.metrics is not None:
            body, content_type = await self.metrics()
            head = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            await send({"type": "http.response.body", "body": body})
        else:
            checks = await self.readiness()
            ready = all(v == "ok" for c in checks.values() for v in c.values())
            body = {"status": "ready" if ready else "not_ready", "services": checks}
            await send_json(send, 200 if ready else 503, body)


def _route_path(scope: Scope) -> str:
    """The path below the server's own root_path (what routing looks at)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


async def send_json(send: Send, status: int, body: Any, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """A complete JSON HTTP response."""
    payload = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + list(headers)})
    await send({"type": "http.response.body", "body": payload})


async def _not_found(scope: Scope, receive: Receive, send: Send, path: str) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect; closing before accepting makes the server answer 403
        await send({"type": "websocket.close", "code": 1008})
        return
    await send_json(send, 404, _error("NOT_FOUND", f"no route for {path}"))


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown; the launcher owns the services' lifecycles."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
