"""The device sockets: the agent protocol, dialect S and dialect W (PROTOCOLS.md), on one router.

Each socket: authenticate the handshake (never from the query string), accept, announce the
connection, push the device's open commands oldest first, then read frames one at a time (size and
rate checked first) until the device leaves; a writer task sends what is queued for it.
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from libs.events.service import ServiceHost

from .agent import agent_socket
from .common import RedactPathTokens, Socket, install_redaction, redact
from .dialects import s_socket, w_socket

__all__ = ["RedactPathTokens", "redact", "routers"]


def routers(host: ServiceHost) -> list[APIRouter]:
    """The three device socket routes."""
    install_redaction()
    sock = Socket(host)
    r = APIRouter()

    @r.websocket("/api/v1/agent/ws")
    async def agent(websocket: WebSocket) -> None:
        await agent_socket(sock, websocket)

    @r.websocket("/api/v1/device/ws")
    async def dialect_s(websocket: WebSocket) -> None:
        await s_socket(sock, websocket)

    @r.websocket("/ws/device/{token}")
    async def dialect_w(websocket: WebSocket, token: str) -> None:
        await w_socket(sock, websocket, token)

    return [r]
