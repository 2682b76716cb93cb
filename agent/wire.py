"""The agent's wire: each HTTP request and the agent socket, turned into the protocol event it means.

Routes (all under ``server_url``, which may be the single ``fleet up`` port):

- ``POST /api/v1/device/auth`` ``{deviceId, deviceSecret}`` -> ``{token, expiresIn}``;
- ``GET /api/v1/agent/ws`` (``ws://`` or ``wss://`` derived from the URL), subprotocol
  ``fleet.agent.v1``, the session in ``Authorization: Bearer`` (never in the URL); frames are
  ``libs.events.schemas.agent``;
- ``POST /api/v1/agent/heartbeat`` while the socket is down, ``POST /api/v1/agent/heartbeats`` to
  replay the spool, both with ``X-Device-Session``.

No state of its own: ``agent.runner`` keeps the token, the spool and the socket's outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from agent import events as e
from agent.config import Credentials
from libs.events.schemas.agent import PROTOCOL, AgentFrame, Heartbeat, ServerFrame

AUTH_PATH = "/api/v1/device/auth"
WS_PATH = "/api/v1/agent/ws"
HEARTBEAT_PATH = "/api/v1/agent/heartbeat"
BATCH_PATH = "/api/v1/agent/heartbeats"

log = logging.getLogger("agent.runner")  # the operator reads one logger for the agent's I/O
_decode_frame = msgspec.json.Decoder(ServerFrame).decode
_encode = msgspec.json.Encoder().encode
Put = Callable[[e.Event], None]


class _NoDebug(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets logs every handshake header (the session token) at DEBUG: never let it."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_ws_logger = _NoDebug(logging.getLogger("websockets.client"), {})


def ws_url(server_url: str) -> str:
    """The agent socket URL under ``server_url`` (http -> ws, https -> wss)."""
    parts = urlsplit(server_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + WS_PATH, "", ""))


def url(server_url: str, path: str) -> str:
    """An HTTP route under ``server_url``."""
    return server_url.rstrip("/") + path


def heartbeat_body(hb: Heartbeat, boot: str) -> dict[str, Any]:
    """The HTTP body of an agent heartbeat (also what the spool keeps)."""
    sent_at = hb.sent_at.isoformat().replace("+00:00", "Z")
    return {"seq": hb.seq, "sent_at": sent_at, "status": hb.status, "metrics": dict(hb.metrics), "boot": boot}


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _session(token: str | None) -> dict[str, str]:
    return {"X-Device-Session": token or ""}


async def authenticate(
    http: httpx.AsyncClient, server_url: str, creds: Credentials
) -> tuple[e.Event, str | None]:
    """``POST /api/v1/device/auth``: AuthSucceeded with the session token, or AuthFailed."""
    body = {"deviceId": creds.device_id, "deviceSecret": creds.device_secret}
    try:
        answer = await http.post(url(server_url, AUTH_PATH), json=body)
        if answer.status_code != 200:
            status = int(answer.status_code)
            return e.AuthFailed(now=time.monotonic(), status=status, retry_after_s=_retry_after(answer)), None
        data = answer.json()
        token = str(data["token"])
        expires_in = float(data.get("expiresIn") or 3600)
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        log.debug("[%s] authentication not answered: %s", creds.device_id, type(exc).__name__)
        return e.AuthFailed(now=time.monotonic()), None
    return e.AuthSucceeded(now=time.monotonic(), expires_in_s=expires_in), token


def _next_heartbeat_ms(answer: httpx.Response) -> int | None:
    value = answer.json().get("nextHeartbeat")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def post_heartbeat(
    http: httpx.AsyncClient, server_url: str, hb: Heartbeat, boot: str, token: str | None
) -> e.Event:
    """``POST /api/v1/agent/heartbeat``: HeartbeatAnswered (with the server's interval) or HeartbeatFailed."""
    try:
        answer = await http.post(
            url(server_url, HEARTBEAT_PATH), json=heartbeat_body(hb, boot), headers=_session(token)
        )
        if answer.status_code == 200:
            nxt = _next_heartbeat_ms(answer)
            return e.HeartbeatAnswered(now=time.monotonic(), seq=hb.seq, next_heartbeat_ms=nxt)
        return e.HeartbeatFailed(now=time.monotonic(), seq=hb.seq, status=int(answer.status_code))
    except (httpx.HTTPError, ValueError, AttributeError):
        return e.HeartbeatFailed(now=time.monotonic(), seq=hb.seq)


async def post_batch(
    http: httpx.AsyncClient, server_url: str, items: list[Any], token: str | None
) -> int | None:
    """``POST /api/v1/agent/heartbeats`` with spooled bodies: the HTTP status, or None without an answer."""
    try:
        answer = await http.post(
            url(server_url, BATCH_PATH), json={"heartbeats": items}, headers=_session(token)
        )
    except httpx.HTTPError:
        return None
    return int(answer.status_code)


async def socket_session(
    server_url: str,
    token: str | None,
    *,
    outbox: asyncio.Queue[AgentFrame | None],
    attach: Callable[[bool], None],
    put: Put,
    open_timeout: float,
    who: str,
) -> None:
    """One socket's life: handshake, reader, writer; always ends with SocketClosed.

    ``attach(True)`` once the handshake succeeded (frames put in ``outbox`` are sent from then on,
    ``None`` closes), ``attach(False)`` when the socket is gone.
    """
    code: int | None = None
    refused: int | None = None
    try:
        async with connect(
            ws_url(server_url),
            subprotocols=[Subprotocol(PROTOCOL)],
            additional_headers={"Authorization": f"Bearer {token or ''}"},
            open_timeout=open_timeout,
            max_size=1 << 20,
            compression=None,
            logger=_ws_logger,
        ) as ws:
            attach(True)
            put(e.SocketOpened(now=time.monotonic()))
            writer = asyncio.create_task(_writer(ws, outbox))
            try:
                await _reader(ws, put, who)
            finally:
                writer.cancel()
            code = ws.close_code
    except InvalidStatus as exc:
        refused = exc.response.status_code
    except (OSError, TimeoutError, WebSocketException) as exc:
        log.debug("[%s] agent socket: %s", who, type(exc).__name__)
    finally:
        attach(False)
        put(e.SocketClosed(now=time.monotonic(), code=code, handshake_status=refused))


async def _reader(ws: ClientConnection, put: Put, who: str) -> None:
    with contextlib.suppress(WebSocketException):
        async for message in ws:
            try:
                frame = _decode_frame(message)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("[%s] undecodable frame from the server ignored", who)
                continue
            put(e.FrameReceived(now=time.monotonic(), frame=frame, wall=datetime.now(UTC)))


async def _writer(ws: ClientConnection, outbox: asyncio.Queue[AgentFrame | None]) -> None:
    """The socket's only writer, so frames leave in the order the protocol chose."""
    with contextlib.suppress(WebSocketException):
        while (frame := await outbox.get()) is not None:
            await ws.send(_encode(frame).decode())
        await ws.close(1000)
