"""The device sockets: the agent protocol, dialect S and dialect W (PROTOCOLS.md).

Each socket: authenticate the handshake (never from the query string), accept, announce the
connection, push the device's open commands oldest first, then read frames one at a time (size and
rate checked first) until the device leaves; a writer task sends what is queued for it.

The three paths are served by a plain ASGI hook in front of the FastAPI app (:func:`device_sockets`):
a device socket lives for days, and FastAPI's routing and middleware keep a chain of coroutines,
exit stacks and a copied scope alive for as long as it does (~8 KB a socket, measured). The portal
socket (``/ws/portal``) and HTTP routes still go through FastAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from libs.events.service import ServiceHost

from .agent import agent_socket
from .common import RedactPathTokens, Socket, install_redaction, redact
from .dialects import s_socket, w_socket

__all__ = ["AGENT_PATH", "S_PATH", "W_PREFIX", "RedactPathTokens", "device_sockets", "redact"]

AGENT_PATH, S_PATH, W_PREFIX = "/api/v1/agent/ws", "/api/v1/device/ws", "/ws/device/"

Endpoint = Callable[[WebSocket], Awaitable[None]]


def device_sockets(host: ServiceHost, app: ASGIApp) -> ASGIApp:
    """``app`` with the three device socket paths served directly (everything else passes through)."""
    install_redaction()
    sock = Socket(host)

    def endpoint(path: str) -> Endpoint | None:
        if path == AGENT_PATH:
            return lambda ws: agent_socket(sock, ws)
        if path == S_PATH:
            return lambda ws: s_socket(sock, ws)
        token = path[len(W_PREFIX) :] if path.startswith(W_PREFIX) else ""
        if token and "/" not in token:
            return lambda ws: w_socket(sock, ws, token)
        return None

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        found = endpoint(_route_path(scope)) if scope["type"] == "websocket" else None
        if found is None:
            await app(scope, receive, send)
            return
        await found(WebSocket(scope, receive, send))

    return asgi


def _route_path(scope: Scope) -> str:
    """The path below the scope's root_path (what a router matches)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root) else path
