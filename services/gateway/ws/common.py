"""What the device sockets share: the log filter for path tokens, the handshake's session check, the
frame loop (size and rate checked first) and the connection announcement."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from fastapi import WebSocket
from starlette.types import Message

from libs.events.identity import Claims, Credential, TokenError
from libs.events.schemas import agent as A
from libs.events.service import ServiceHost

from ..config import Settings
from ..domain import Inbound, frame
from ..handlers import Connection, Gateway, Render, gateway_of

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
        """The next ASGI message, or None once the connection is being closed by the server.

        Waits in the endpoint's own task (no helper task per read: sockets mostly wait here);
        :meth:`Connection.abort` cancels that wait, and only that cancellation is absorbed.
        """
        if conn.close_code is not None:
            return None
        task = asyncio.current_task()
        assert task is not None
        outside = task.cancelling()  # cancellations requested by others before this wait
        conn.reader = task
        try:
            return await ws.receive()
        except asyncio.CancelledError:
            if conn.take_abort(task) and task.cancelling() <= outside:
                return None
            raise
        finally:
            conn.reader = None

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


def connection(
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
    return conn
