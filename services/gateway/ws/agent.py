"""The agent protocol on ``GET /api/v1/agent/ws`` (subprotocol ``fleet.agent.v1``, frames in
``libs/events/schemas/agent.py``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from fastapi import WebSocket

from libs.events.schemas import agent as A

from ..domain import (
    Beat,
    Goodbye,
    Greeting,
    Inbound,
    Outcome,
    Received,
    Refused,
    agent_command,
    agent_subprotocol,
    frame,
    offered,
    parse_agent,
)
from ..handlers import Connection
from .common import Socket, connection, header_token

log = logging.getLogger(__name__)


async def agent_socket(sock: Socket, ws: WebSocket) -> None:
    """``GET /api/v1/agent/ws``: subprotocol ``fleet.agent.v1``; ``hello`` first, then frames."""
    choice = agent_subprotocol(offered(ws.headers.get("sec-websocket-protocol", "")))
    who = sock.device_session(header_token(ws)) or sock.device_session(choice.token if choice else None)
    if choice is None or who is None:
        await ws.close(1008)  # before accept: the handshake is refused (HTTP 403)
        return
    await ws.accept(subprotocol=choice.echo)
    conn = connection(sock, ws, who, "agent", agent_command)
    try:
        raw = await asyncio.wait_for(sock.next_frame(ws, conn), sock.settings.hello_timeout_s)
    except TimeoutError:
        raw = None
    first = parse_agent(raw, now=datetime.now(UTC)) if raw is not None else None
    if not isinstance(first, Greeting):
        if raw is not None:
            conn.offer(frame(A.Error(code="hello_required", message="the first frame must be hello")))
        conn.abort(1008, "hello required")
        await conn.finish()
        return
    conn.boot = first.boot
    welcome = A.Welcome(
        device_id=conn.device_id,
        connection_id=conn.connection_id,
        heartbeat_interval_ms=sock.settings.heartbeat_interval_ms,
        server_time=datetime.now(UTC),
    )
    conn.offer(frame(welcome))
    await sock.serve(ws, conn, lambda raw: parse_agent(raw, now=datetime.now(UTC)), agent_handle)


async def agent_handle(sock: Socket, conn: Connection, inbound: Inbound) -> bool:
    """Answer one agent frame; True on ``bye``."""
    gw = sock.gateway
    if isinstance(inbound, Beat):
        try:
            await gw.heartbeat(conn, inbound)
        except Exception as exc:
            conn.offer(frame(A.Error(code="heartbeat_not_stored", message=type(exc).__name__)))
        else:
            conn.offer(frame(A.HeartbeatAck(seq=inbound.seq or 0)))
    elif isinstance(inbound, Outcome):
        try:
            duplicate = await gw.result(conn, inbound)
        except PermissionError as exc:
            conn.offer(frame(A.Error(code="not_your_command", message=str(exc))))
        except Exception as exc:
            conn.offer(frame(A.Error(code="result_not_stored", message=type(exc).__name__)))
        else:
            conn.offer(frame(A.ResultAck(command_id=inbound.command_id, duplicate=duplicate)))
    elif isinstance(inbound, Received):
        try:
            await gw.acked(conn, inbound.command_id)
        except Exception as exc:
            log.error("could not publish the ack of command %s: %s", inbound.command_id, exc)
    elif isinstance(inbound, Refused):
        conn.offer(frame(A.Error(code=inbound.code, message=inbound.message)))
    return isinstance(inbound, Goodbye)
