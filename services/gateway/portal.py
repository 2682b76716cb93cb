"""Portal sockets (``GET /ws/portal``) and the portal itself (``/``): the live view of a workspace's fleet.

Protocol (subprotocol ``fleet.portal.v1``): the browser's first frame is ``{type:"hello", token,
workspace_id?}`` (the operator token never goes in the URL); the gateway answers ``snapshot`` with
every device of the workspace, then coalesced deltas every ``flush_s``: ``status``, ``device``,
``device_removed``, ``metrics`` (from the latest-metrics cache, at most every ``metrics_s``) and
``command``, ``pipeline`` (group lag and heartbeat -> portal latency, every ``pipeline_s``); with
``{type:"tail", on:true}`` also ``event`` frames (the events view). Every gateway
instance reads the streams itself (no consumer group), so portals may connect to any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import msgspec
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, Response

from libs.events import metrics
from libs.events.envelope import UndecodableEntry, UnknownEventType, decode_entry, decode_event, entry_key
from libs.events.identity import Claims, TokenError
from libs.events.schemas import REGISTRY
from libs.events.schemas.device import DeviceStatusChanged
from libs.events.service import ServiceHost

from . import pipeline
from .portal_view import Coalescer, FleetView, Frame, tail_allowed, tail_data, workspace_of

log = logging.getLogger(__name__)
PROTOCOL = "fleet.portal.v1"
STATIC = Path(__file__).with_name("static")
TAIL_STREAMS = ("events:gateway",)  # shown in the events view only
_encode = msgspec.json.Encoder().encode


class PortalSocket:
    """One connected portal: its workspace, its queue of frames and whether it tails events."""

    def __init__(self, ws: WebSocket, workspace_id: str, claims: Claims, token: str) -> None:
        self.ws, self.workspace_id, self.claims, self.token = ws, workspace_id, claims, token
        self.queue = Coalescer()
        self.tail = False
        self.wake = asyncio.Event()

    def push(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.queue.add(frame)
        if frames:
            self.wake.set()


class PortalHub:
    """Folds the streams into the fleet view and fans changes out to this instance's portal sockets."""

    def __init__(self, host: ServiceHost) -> None:
        s = host.settings
        self.host = host
        self.view = FleetView()
        self.sockets: dict[str, set[PortalSocket]] = {}
        self.ready = asyncio.Event()
        self.flush_s = float(getattr(s, "portal_flush_s", 0.1))
        self.metrics_s = float(getattr(s, "portal_metrics_s", 2.0))
        self.max_queue = int(getattr(s, "portal_max_queue", 5000))
        self.hello_timeout_s = float(getattr(s, "portal_hello_timeout_s", 5.0))
        self.recheck_s = float(getattr(s, "portal_token_recheck_s", 30.0))
        self.origins = frozenset(getattr(s, "portal_allowed_origins", ()))
        self.pipeline_s = float(getattr(s, "portal_pipeline_s", 5.0))
        self.pipeline = pipeline.Pipeline()
        metrics.gauge("fleet_gateway_portals", "open portal sockets", (), _portals)

    # ---- streams --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Load ``events:device`` whole, then follow every stream; errors are logged and retried."""
        redis = self.host.redis
        assert redis is not None
        cursors: dict[str, str] = {}
        backoff = 0.1
        while not stop.is_set():
            try:
                if not cursors:
                    cursors = await self._start(redis)
                block = 500 if self.ready.is_set() else None  # loading: read without waiting
                reply: Any = await redis.xread(cursors, count=1000, block=block)  # type: ignore[arg-type]
                if not reply and not self.ready.is_set():
                    self.ready.set()
                for stream, entries in reply or []:
                    name = stream.decode()
                    for entry_id, fields in entries:
                        eid = entry_id.decode()
                        if entry_key(eid) <= entry_key(cursors[name]):
                            continue
                        cursors[name] = eid
                        self._apply(name, eid, fields, live=self.ready.is_set())
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the portal must not go dark for good on a Redis blip
                log.warning("portal feed paused: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)

    async def _start(self, redis: Any) -> dict[str, str]:
        """Device events from the start (the fleet view); commands and the tail from now on."""
        cursors = {self.host.stream("events:device"): "0-0"}
        for s in (*TAIL_STREAMS, "events:commands"):
            last = await redis.xrevrange(self.host.stream(s), count=1)
            cursors[self.host.stream(s)] = last[0][0].decode() if last else "0-0"
        return cursors

    def _apply(self, stream: str, entry_id: str, fields: dict[bytes, bytes], *, live: bool) -> None:
        try:
            envelope = decode_entry(fields)
            event = decode_event(envelope, REGISTRY)
        except (UndecodableEntry, UnknownEventType):
            return
        frames = [] if stream.endswith(TAIL_STREAMS) else self.view.apply(event)
        workspace = workspace_of(event)
        if not live or workspace is None or workspace not in self.sockets:
            return
        sockets = self.sockets[workspace]
        if frames and isinstance(event, DeviceStatusChanged):
            self.pipeline.pushed(envelope, event, len(sockets))
        tail: list[Frame] = []
        if any(sock.tail for sock in sockets):  # the events view is open somewhere: build it once
            tail.append(
                {
                    "type": "event",
                    "stream": stream.removeprefix(self.host.settings.stream_prefix),
                    "id": entry_id,
                    "event_type": envelope.type,
                    "at": envelope.occurred_at.isoformat(),
                    "data": tail_data(event),
                }
            )
        for sock in sockets:
            shown = sock.tail and tail_allowed(envelope.type, sock.claims.roles.get(workspace))
            sock.push(frames + tail if shown else frames)

    async def poll_metrics(self, stop: asyncio.Event) -> None:
        """Every ``metrics_s``, the latest metrics of the devices portals are looking at (changes only)."""
        redis = self.host.redis
        assert redis is not None
        prefix = self.host.stream("telemetry:latest:")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.metrics_s)
            try:
                for workspace in list(self.sockets):
                    ids = self.view.device_ids(workspace)
                    for start in range(0, len(ids), 500):
                        chunk = ids[start : start + 500]
                        values = await redis.mget([prefix + d for d in chunk])
                        frames = self._metrics_frames(workspace, chunk, values)
                        for sock in self.sockets.get(workspace, ()):
                            sock.push(frames)
            except Exception as exc:
                log.warning("portal metrics poll failed: %s", exc)

    async def poll_pipeline(self, stop: asyncio.Event) -> None:
        """Every ``pipeline_s``, the pipeline's health to every portal of this gateway."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.pipeline_s)
            if not self.sockets:
                continue
            try:
                frame = await pipeline.frame(self.host.redis, self.host.settings.stream_prefix, self.pipeline)
            except Exception as exc:
                log.warning("portal pipeline poll failed: %s", exc)
                continue
            for group in list(self.sockets.values()):
                for sock in group:
                    sock.push([frame])

    def _metrics_frames(self, workspace: str, ids: list[str], values: list[Any]) -> list[Frame]:
        frames = []
        for device_id, raw in zip(ids, values, strict=True):
            if raw is None:
                continue
            try:
                cached = msgspec.json.decode(raw)
                metrics, seen = dict(cached.get("metrics") or {}), cached.get("received_at")
            except (msgspec.DecodeError, AttributeError, TypeError, ValueError):
                continue
            if self.view.set_metrics(workspace, device_id, metrics, seen):
                frames.append({"type": "metrics", "device_id": device_id, "metrics": metrics, "at": seen})
        return frames

    # ---- sockets --------------------------------------------------------------------------------

    def origin_ok(self, ws: WebSocket) -> bool:
        """Same-origin, or an origin the settings allow; non-browser clients send none."""
        origin = ws.headers.get("origin")
        if origin is None or origin in self.origins:
            return True
        return urlparse(origin).netloc == ws.headers.get("host")

    async def serve(self, ws: WebSocket) -> None:
        """One portal socket, from handshake to close."""
        offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        if PROTOCOL not in offered or not self.origin_ok(ws):
            await ws.close(code=1008)  # before accept: the handshake is refused (403)
            return
        await ws.accept(subprotocol=PROTOCOL)
        sock = await self._hello(ws)
        if sock is None:
            return
        self.sockets.setdefault(sock.workspace_id, set()).add(sock)
        sender = asyncio.create_task(self._send_loop(sock))
        try:
            await self._receive_loop(sock)
        except WebSocketDisconnect:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            group = self.sockets.get(sock.workspace_id)
            if group is not None:
                group.discard(sock)
                if not group:
                    del self.sockets[sock.workspace_id]

    async def _hello(self, ws: WebSocket) -> PortalSocket | None:
        identity = self.host.identity
        assert identity is not None
        try:
            hello = msgspec.json.decode(await asyncio.wait_for(ws.receive_text(), self.hello_timeout_s))
            token = hello["token"] if isinstance(hello, dict) and hello.get("type") == "hello" else ""
            claims = identity.claims(token if isinstance(token, str) else "")
        except (TimeoutError, msgspec.DecodeError, KeyError, TokenError, WebSocketDisconnect):
            await _close(ws, 1008, "authentication required")
            return None
        wanted = hello.get("workspace_id") or claims.ws
        if claims.typ != "operator" or not isinstance(wanted, str) or wanted not in claims.roles:
            await _close(ws, 1008, "not an operator of this workspace")
            return None
        sock = PortalSocket(ws, wanted, claims, token)
        sock.tail = bool(hello.get("tail"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), 10)
        snapshot = {"type": "snapshot", "workspace_id": wanted, "devices": self.view.snapshot(wanted)}
        await ws.send_text(_encode(snapshot).decode())
        return sock

    async def _receive_loop(self, sock: PortalSocket) -> None:
        identity = self.host.identity
        assert identity is not None
        checked = time.monotonic()
        while True:
            try:
                text = await asyncio.wait_for(sock.ws.receive_text(), self.recheck_s)
            except TimeoutError:
                text = None
            if time.monotonic() - checked >= self.recheck_s:  # logged out, revoked or expired: close
                try:
                    identity.claims(sock.token)
                except TokenError:
                    await _close(sock.ws, 1008, "session ended")
                    return
                checked = time.monotonic()
            if text is None:
                continue
            try:
                frame = msgspec.json.decode(text)
            except msgspec.DecodeError:
                continue
            if isinstance(frame, dict) and frame.get("type") == "tail":
                sock.tail = bool(frame.get("on"))

    async def _send_loop(self, sock: PortalSocket) -> None:
        while True:
            await sock.wake.wait()
            sock.wake.clear()
            if len(sock.queue) > self.max_queue:  # a portal that cannot keep up is closed, not buffered
                await _close(sock.ws, 1013, "too slow")
                return
            for frame in sock.queue.drain():
                await sock.ws.send_text(_encode(frame).decode())
            await asyncio.sleep(self.flush_s)  # coalesce what arrives meanwhile


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=code, reason=reason)


def portal_router(hub: PortalHub) -> APIRouter:
    """``/ws/portal``, the portal page at ``/`` and its files under ``/static``."""
    r = APIRouter()

    @r.websocket("/ws/portal")
    async def portal_socket(ws: WebSocket) -> None:
        await hub.serve(ws)

    @r.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    files = {p.name: p for p in STATIC.iterdir() if p.suffix in (".js", ".css", ".html")}

    @r.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in files:  # only the portal's own files, never a path
            return Response(status_code=404)
        return FileResponse(files[name], headers={"Cache-Control": "no-cache"})

    return r


_hubs: dict[int, tuple[ServiceHost, PortalHub]] = {}


def _portals() -> list[tuple[dict[str, str], float]]:
    return [({}, float(sum(len(g) for _h, hub in list(_hubs.values()) for g in hub.sockets.values())))]


def hub_of(host: ServiceHost) -> PortalHub:
    """The host's portal hub (one per host: its routes and its background tasks share it)."""
    found = _hubs.get(id(host))
    if found is None or found[0] is not host:
        found = _hubs[id(host)] = (host, PortalHub(host))
    return found[1]


def portal_routers(host: ServiceHost) -> list[APIRouter]:
    """The portal's routes (for ``ServiceSpec.routers``)."""
    return [portal_router(hub_of(host))]


def portal_background(host: ServiceHost) -> list[Any]:
    """The portal's stream follower and metrics poller (for ``ServiceSpec.background``)."""
    hub = hub_of(host)
    return [hub.run, hub.poll_metrics, hub.poll_pipeline]
