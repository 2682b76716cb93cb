"""The device sockets: the agent protocol, dialect S and dialect W (PROTOCOLS.md), on one router.

Each socket: authenticate the handshake (never from the query string), accept, announce the
connection, push the device's open commands oldest first, then read frames one at a time (size and
rate checked first) until the device leaves; a writer task sends what is queued for it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fastapi import APIRouter, WebSocket
from starlette.types import Message

from libs.events.identity import Claims, Credential, TokenError
from libs.events.schemas import agent as A
from libs.events.service import ServiceHost

from .config import Settings
from .domain import (
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
    parse_s,
    parse_w,
    s_command,
    s_subprotocol,
    stamp,
    w_command,
)
from .handlers import Connection, Gateway, Render, gateway_of

log = logging.getLogger(__name__)

Handle = Callable[["Socket", Connection, Inbound], Awaitable[bool]]

_PATH_TOKEN = re.compile(r"(/ws/device/)[^/\s\"?#]+")


def redact(text: str) -> str:
    """A log text with the path token of ``/ws/device/{token}`` replaced."""
    return _PATH_TOKEN.sub(r"\1<redacted>", text)


class RedactPathTokens(logging.Filter):
    """Rewrites log records that would carry a dialect W path token (uvicorn logs socket paths)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the message and its arguments; never drops a record."""
        if isinstance(record.msg, str) and "/ws/device/" in record.msg:
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact(a) if isinstance(a, str) and "/ws/device/" in a else a for a in record.args
            )
        return True


_FILTER = RedactPathTokens()


def install_redaction() -> None:
    """Put the filter on uvicorn's loggers and on every root handler (idempotent)."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "websockets.server"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


class Socket:
    """The endpoints' view of one host."""

    def __init__(self, host: ServiceHost) -> None:
        self.host = host
        s = host.settings
        assert isinstance(s, Settings)
        self.settings = s

    @property
    def gateway(self) -> Gateway:
        """The host's gateway."""
        return gateway_of(self.host)

    def device_session(self, token: str | None) -> Claims | None:
        """The claims of a valid, unrevoked device session token."""
        identity = self.host.identity
        if not token or identity is None:
            return None
        try:
            claims = identity.claims(token)
        except TokenError:
            return None
        return claims if claims.typ == "device" else None

    def still_valid(self, who: Claims | Credential) -> Callable[[], bool]:
        """Whether the session or credential behind a socket still holds: not revoked, its device
        neither deleted nor disabled. A session's expiry is not checked (S clients re-authenticate
        over HTTP and keep their socket)."""
        identity = self.host.identity
        assert identity is not None
        index = identity.feed.index
        if isinstance(who, Credential):
            return lambda: index.credential_usable(who)

        def valid() -> bool:
            try:
                index.check(who)
            except TokenError:
                return False
            return True

        return valid

    async def next_frame(self, ws: WebSocket, conn: Connection) -> str | bytes | None:
        """The next frame within the size and rate limits; None when the socket is done."""
        while True:
            msg = await self.receive(ws, conn)
            if msg is None or msg["type"] == "websocket.disconnect":
                return None
            raw: str | bytes = msg["text"] if msg.get("text") is not None else msg.get("bytes") or b""
            size = len(raw.encode()) if isinstance(raw, str) else len(raw)
            if size > self.settings.max_frame_bytes:
                conn.abort(1009, f"frame over {self.settings.max_frame_bytes} bytes")
                return None
            verdict = self.gateway.rate.check(conn.device_id, time.time())
            if verdict == "ok":
                return raw
            if verdict == "flood":
                conn.abort(1008, "too many frames")
                return None
            if conn.dialect == "agent":
                conn.offer(frame(A.Error(code="rate_limited", message="frame dropped: too many frames")))

    @staticmethod
    async def receive(ws: WebSocket, conn: Connection) -> Message | None:
        """The next ASGI message, or None once the connection is being closed by the server."""
        if conn.closing.is_set():
            return None
        recv = asyncio.ensure_future(ws.receive())
        closing = asyncio.ensure_future(conn.closing.wait())
        try:
            await asyncio.wait({recv, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the caller gives up (the hello timeout): no read left behind
            closing.cancel()
            if not recv.done():
                recv.cancel()
        return recv.result() if not recv.cancelled() else None

    async def serve(
        self, ws: WebSocket, conn: Connection, parse: Callable[[str | bytes], Inbound], handle: Handle
    ) -> None:
        """Announce the connection, then read frames until the device leaves; announce the close."""
        reason = "socket_closed"
        try:
            try:
                await self.gateway.open(conn)
            except Exception as exc:
                log.error("device %s not connected: %s", conn.device_id, type(exc).__name__)
                conn.abort(1011, "try again")
                return
            while (raw := await self.next_frame(ws, conn)) is not None:
                if await handle(self, conn, parse(raw)):
                    reason = "agent_shutdown"
                    conn.abort(1000, "bye")
                    break
        finally:
            await self.gateway.close(conn, reason)
            await conn.finish()


def header_token(ws: WebSocket) -> str | None:
    """A session from ``X-Device-Session``, ``X-Device-Token`` or ``Authorization: Bearer``."""
    h = ws.headers
    token = h.get("x-device-session") or h.get("x-device-token")
    if token:
        return token.strip()
    scheme, _, value = h.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _connection(
    sock: Socket, ws: WebSocket, who: Claims | Credential, dialect: str, render: Render
) -> Connection:
    async def close(code: int, reason: str) -> None:
        await ws.close(code, reason)

    device_id, workspace_id = (
        (who.sub, who.ws) if isinstance(who, Claims) else (who.device_id, who.workspace_id)
    )
    conn = sock.gateway.connection(
        device_id=device_id,
        workspace_id=workspace_id,
        dialect=dialect,
        render=render,
        send=ws.send_text,
        close=close,
    )
    conn.valid = sock.still_valid(who)
    conn.start()
    return conn


# ---------------------------------------------------------------- the agent protocol


async def agent_socket(sock: Socket, ws: WebSocket) -> None:
    """``GET /api/v1/agent/ws``: subprotocol ``fleet.agent.v1``; ``hello`` first, then frames."""
    choice = agent_subprotocol(offered(ws.headers.get("sec-websocket-protocol", "")))
    who = sock.device_session(header_token(ws)) or sock.device_session(choice.token if choice else None)
    if choice is None or who is None:
        await ws.close(1008)  # before accept: the handshake is refused (HTTP 403)
        return
    await ws.accept(subprotocol=choice.echo)
    conn = _connection(sock, ws, who, "agent", agent_command)
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


# ---------------------------------------------------------------- dialect S


async def s_socket(sock: Socket, ws: WebSocket) -> None:
    """``GET /api/v1/device/ws``: a session in ``X-Device-Session`` or ``Sec-WebSocket-Protocol``."""
    choice = s_subprotocol(offered(ws.headers.get("sec-websocket-protocol", "")))
    who = sock.device_session(header_token(ws)) or sock.device_session(choice.token)
    if who is None:
        await ws.close(1008)
        return
    await ws.accept(subprotocol=choice.echo if choice.echo is not None else None)
    conn = _connection(sock, ws, who, "s", s_command)
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


# ---------------------------------------------------------------- dialect W


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
    conn = _connection(sock, ws, cred, "w", w_command)
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
