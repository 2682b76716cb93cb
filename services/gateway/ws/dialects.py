"""Dialect S (``GET /api/v1/device/ws``) and dialect W (``GET /ws/device/{token}``) of PROTOCOLS.md."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from fastapi import WebSocket

from ..domain import (
    Beat,
    Inbound,
    Outcome,
    frame,
    offered,
    parse_s,
    parse_w,
    s_command,
    s_subprotocol,
    stamp,
    w_command,
)
from ..handlers import Connection
from .common import Socket, connection, header_token

log = logging.getLogger(__name__)


async def s_socket(sock: Socket, ws: WebSocket) -> None:
    """``GET /api/v1/device/ws``: a session in ``X-Device-Session`` or ``Sec-WebSocket-Protocol``."""
    choice = s_subprotocol(offered(ws.headers.get("sec-websocket-protocol", "")))
    who = sock.device_session(header_token(ws)) or sock.device_session(choice.token)
    if who is None:
        await ws.close(1008)
        return
    await ws.accept(subprotocol=choice.echo if choice.echo is not None else None)
    conn = connection(sock, ws, who, "s", s_command)
    conn.offer(
        frame({"type": "connected", "deviceId": conn.device_id, "timestamp": stamp(datetime.now(UTC))})
    )
    await sock.serve(ws, conn, parse_s, s_handle)


async def s_handle(sock: Socket, conn: Connection, inbound: Inbound) -> bool:
    """Answer one dialect S frame (a heartbeat is acknowledged once it is stored)."""
    if isinstance(inbound, Beat):
        try:
            await sock.gateway.heartbeat(conn, inbound)
        except Exception as exc:
            log.error("heartbeat of device %s not stored: %s", conn.device_id, type(exc).__name__)
        else:
            conn.offer(frame({"type": "heartbeat_ack", "timestamp": stamp(datetime.now(UTC))}))
    elif isinstance(inbound, Outcome):
        await _result(sock, conn, inbound)
    return False


async def _result(sock: Socket, conn: Connection, outcome: Outcome) -> None:
    try:
        await sock.gateway.result(conn, outcome)
    except Exception as exc:
        log.error("result of command %s not stored: %s", outcome.command_id, type(exc).__name__)


async def w_socket(sock: Socket, ws: WebSocket, token: str) -> None:
    """``GET /ws/device/{token}``: the device's W token in the path (never logged)."""
    identity = sock.host.identity
    address = ws.client.host if ws.client else "unknown"
    cred = None
    if identity is not None and 0 < len(token) <= 256:
        cred = identity.feed.index.credential(token, "token")
        if cred is None and sock.gateway.unknown_tokens.check(address, time.time()) == "ok":
            cred = await identity.device_secret(token, "token")
    if cred is None:
        await ws.close(1008)  # before accept: HTTP 403
        return
    await ws.accept()
    conn = connection(sock, ws, cred, "w", w_command)
    await sock.serve(ws, conn, parse_w, w_handle)


async def w_handle(sock: Socket, conn: Connection, inbound: Inbound) -> bool:
    """Answer one dialect W frame: ``ping`` -> ``pong`` (and a heartbeat); results are recorded."""
    if isinstance(inbound, Beat):
        try:
            await sock.gateway.heartbeat(conn, inbound)
        except Exception as exc:
            log.error("heartbeat of device %s not stored: %s", conn.device_id, type(exc).__name__)
        conn.offer(frame({"type": "pong"}))
    elif isinstance(inbound, Outcome):
        await _result(sock, conn, inbound)
    return False
