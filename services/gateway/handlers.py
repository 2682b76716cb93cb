"""Use-cases of the gateway: sockets come and go, commands go out, heartbeats and results come in.

Every fact is appended to Redis through one :class:`BatchingPublisher` (acknowledged before the
device is answered): connections, pushes, acks and results on ``events:gateway``, heartbeats on
``telemetry:heartbeats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from opentelemetry import metrics

from libs.events import metrics as prometheus
from libs.events.batching import BatchingPublisher
from libs.events.open_commands import OpenCommand, OpenCommands, pushable
from libs.events.open_commands_feed import OpenCommandsFeed
from libs.events.publisher import Publisher
from libs.events.schemas import Event
from libs.events.schemas.gateway import (
    AgentConnected,
    AgentDisconnected,
    CommandAcked,
    CommandPushed,
    CommandResultReceived,
    GatewayAlive,
)
from libs.events.schemas.telemetry import HeartbeatReceived
from libs.events.service import ServiceHost

from .config import Settings
from .domain import Beat, FrameRate, Outcome

log = logging.getLogger(__name__)

GATEWAY, HEARTBEATS, COMMANDS = "events:gateway", "telemetry:heartbeats", "events:commands"

Render = Callable[[OpenCommand, int], str]
Send = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


class Connection:
    """One device socket: who it is, and a bounded queue of frames that one writer task sends.

    Nothing waits on a slow device: frames are queued without waiting, and a full queue closes the
    socket (1013) instead of holding up the feed or other sockets. An idle socket holds no queue and
    no writer task (both exist only while frames are going out): at 10,000 sockets per process the
    per-socket objects are most of the memory.
    """

    __slots__ = (
        "_close_fn",
        "_closer",
        "_done",
        "_limit",
        "_out",
        "_reader_aborted",
        "_send",
        "_writer",
        "boot",
        "close_code",
        "connection_id",
        "device_id",
        "dialect",
        "gateway",
        "pushed",
        "reader",
        "render",
        "valid",
        "workspace_id",
    )  # fmt: skip

    def __init__(
        self,
        gateway: Gateway,
        *,
        device_id: str,
        workspace_id: str,
        dialect: str,
        render: Render,
        send: Send,
        close: Close,
    ) -> None:
        self.gateway = gateway
        self.device_id, self.workspace_id, self.dialect = device_id, workspace_id, dialect
        self.connection_id = uuid.uuid4().hex
        self.render, self._send, self._close_fn = render, send, close
        self._out: deque[tuple[str, OpenCommand | None]] | None = None
        self._limit = gateway.settings.send_queue
        self.pushed: set[str] | None = None
        self.boot: str | None = None
        # whether the credential behind the socket still holds (revocation closes the socket)
        self.valid: Callable[[], bool] = _always
        self.close_code: int | None = None
        self.reader: asyncio.Task[Any] | None = None  # the endpoint's task while it waits for a frame
        self._reader_aborted = False
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._done = False  # the endpoint is finishing (or the socket failed): nothing more is queued

    def offer(self, text: str, cmd: OpenCommand | None = None) -> bool:
        """Queue a frame; a full queue closes the socket (the device does not read)."""
        if self.close_code is not None or self._done:
            return False
        out = self._out
        if out is None:
            out = self._out = deque()
        if len(out) >= self._limit:
            log.warning("closing a %s socket of device %s: send queue full", self.dialect, self.device_id)
            self.abort(1013, "send queue full")
            return False
        out.append((text, cmd))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(out), name=f"ws-writer-{self.dialect}")
        return True

    @property
    def queued(self) -> int:
        """Frames waiting to be sent."""
        return len(self._out) if self._out is not None else 0

    def push(self, cmd: OpenCommand, now: datetime) -> None:
        """Queue a command once per socket; each push to a socket is the command's next attempt."""
        if (self.pushed is not None and cmd.command_id in self.pushed) or not pushable(cmd, now):
            return
        cmd.attempts += 1
        if self.offer(self.render(cmd, cmd.attempts), cmd):
            if self.pushed is None:
                self.pushed = set()
            self.pushed.add(cmd.command_id)

    def abort(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` (once), dropping what is still queued."""
        if self.close_code is not None:
            return
        self.close_code = code
        if self.reader is not None:  # the endpoint waits for a frame: stop that wait
            self._reader_aborted = True
            self.reader.cancel()
        self._closer = asyncio.create_task(self._close(code, reason))

    def take_abort(self, task: asyncio.Task[Any]) -> bool:
        """Whether :meth:`abort` cancelled ``task`` (the waiting reader); that cancellation is undone.

        The caller re-raises when someone else cancelled the task too (a timeout, the server
        shutting down): their cancellation must still arrive.
        """
        if not self._reader_aborted:
            return False
        self._reader_aborted = False
        task.uncancel()
        return True

    async def _close(self, code: int, reason: str) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        self._out = None
        with contextlib.suppress(Exception):
            await self._close_fn(code, reason)

    async def finish(self) -> None:
        """The socket ended: let the writer send what is queued (briefly), or the close complete.

        A close to a device that does not read waits for buffer space that may never come: after a
        few seconds the endpoint returns anyway and the server drops the connection.
        """
        self._done = True
        if self._closer is not None:
            await asyncio.wait({self._closer}, timeout=5)
            return
        writer = self._writer
        if writer is None:
            return
        _done, late = await asyncio.wait({writer}, timeout=2)
        for task in late:
            task.cancel()
        await asyncio.gather(writer, return_exceptions=True)

    async def _write_loop(self, out: deque[tuple[str, OpenCommand | None]]) -> None:
        try:
            while out:
                text, cmd = out.popleft()
                try:
                    await self._send(text)
                except Exception:  # the socket is gone; the reader sees the disconnect
                    self._done = True
                    out.clear()
                    return
                if cmd is not None:
                    await self.gateway.pushed(self, cmd)
        finally:
            self._writer = None
            if self._out is out and not out:
                self._out = None


def _always() -> bool:
    return True


class Gateway:
    """The sockets of this instance, the open commands, and the events they cause."""

    def __init__(self, host: ServiceHost) -> None:
        assert host.redis is not None, "start the host before serving"
        s = host.settings
        assert isinstance(s, Settings)
        self.settings = s
        self.gateway_id = host.consumer
        self.events, self.heartbeats = host.stream(GATEWAY), host.stream(HEARTBEATS)
        self.publisher = Publisher(host.redis, producer="gateway")
        self.batcher = BatchingPublisher(self.publisher, max_delay_s=0.001)
        self.book = OpenCommands(remember=s.remember_finished)
        self.feed = OpenCommandsFeed(
            host.redis, host.stream(COMMANDS), commands=self.book, on_queued=self.on_queued
        )
        self.sockets: dict[str, dict[str, Connection]] = {}
        self.rate = FrameRate(s.frame_rate_per_s, s.flood_factor)
        self.unknown_tokens = FrameRate(10, 1)  # per client address: each miss re-reads the identity index
        _live.add(self)
        _instrument()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow ``events:commands``, watch for revocations and announce this instance until the host
        stops, then flush."""
        side = [asyncio.create_task(self.watch_revocations(stop)), asyncio.create_task(self.beacon(stop))]
        try:
            await self.feed.run(stop)
        finally:
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            await self.batcher.aclose()

    async def beacon(self, stop: asyncio.Event) -> None:
        """Publish ``gateway.alive.v1`` every ``beacon_s`` (a failed one is logged; the next may land)."""
        every = self.settings.beacon_s
        while not stop.is_set():
            alive = GatewayAlive(
                gateway_id=self.gateway_id,
                at=datetime.now(UTC),
                connections=sum(len(c) for c in self.sockets.values()),
                interval_s=every,
            )
            try:
                await self.publish(self.events, alive)
            except Exception as exc:
                log.warning("could not announce gateway %s: %s", self.gateway_id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def watch_revocations(self, stop: asyncio.Event) -> None:
        """Close (1008) every socket whose session or credential was revoked since it opened."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.revocation_check_s)
            for conns in list(self.sockets.values()):
                for conn in list(conns.values()):
                    if not conn.valid():
                        log.info("closing a %s socket of device %s: revoked", conn.dialect, conn.device_id)
                        conn.abort(1008, "revoked")

    def connection(self, **kw: Any) -> Connection:
        """A new, not yet attached connection."""
        return Connection(self, **kw)

    async def publish(self, stream: str, event: Event) -> None:
        """Append one event; returns once Redis acknowledged it."""
        await self.batcher.publish(stream, self.publisher.envelope(event))

    async def open(self, conn: Connection) -> None:
        """The device is connected: announce it, attach the socket and push its open commands."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.feed.ready.wait(), 10)
        await self.publish(
            self.events,
            AgentConnected(
                device_id=conn.device_id,
                workspace_id=conn.workspace_id,
                gateway_id=self.gateway_id,
                dialect=conn.dialect,
                at=datetime.now(UTC),
                connection_id=conn.connection_id,
            ),
        )
        # attach and flush with no await between: a command queued meanwhile is in the flush
        self.sockets.setdefault(conn.device_id, {})[conn.connection_id] = conn
        now = datetime.now(UTC)
        for cmd in self.book.pending(conn.device_id, now):
            conn.push(cmd, now)

    async def close(self, conn: Connection, reason: str) -> None:
        """Detach the socket and announce the disconnect."""
        mine = self.sockets.get(conn.device_id, {})
        if mine.pop(conn.connection_id, None) is None:
            return  # never attached (closed before it was announced)
        if not mine:
            self.sockets.pop(conn.device_id, None)
        event = AgentDisconnected(
            device_id=conn.device_id,
            workspace_id=conn.workspace_id,
            gateway_id=self.gateway_id,
            dialect=conn.dialect,
            at=datetime.now(UTC),
            reason=reason,
            connection_id=conn.connection_id,
        )
        try:
            await self.publish(self.events, event)
        except Exception as exc:
            log.error("could not publish a disconnect of device %s: %s", conn.device_id, exc)

    def on_queued(self, cmd: OpenCommand) -> None:
        """A command was queued: push it to the device's sockets on this instance."""
        now = datetime.now(UTC)
        for conn in list(self.sockets.get(cmd.device_id, {}).values()):
            conn.push(cmd, now)

    async def pushed(self, conn: Connection, cmd: OpenCommand) -> None:
        """A command frame was written to a socket."""
        event = CommandPushed(
            command_id=cmd.command_id,
            device_id=conn.device_id,
            workspace_id=conn.workspace_id,
            gateway_id=self.gateway_id,
            dialect=conn.dialect,
            at=datetime.now(UTC),
            connection_id=conn.connection_id,
        )
        try:
            await self.publish(self.events, event)
        except Exception as exc:
            log.error("could not publish the push of command %s: %s", cmd.command_id, exc)

    async def heartbeat(self, conn: Connection, beat: Beat) -> None:
        """Append a heartbeat to ``telemetry:heartbeats`` (raises if Redis did not take it)."""
        now = datetime.now(UTC)
        event = HeartbeatReceived(
            device_id=conn.device_id,
            workspace_id=conn.workspace_id,
            received_at=now,
            status=beat.status,
            seq=beat.seq,
            sent_at=beat.sent_at,
            boot=conn.boot,
            metrics=dict(beat.metrics),
            dialect=conn.dialect,
        )
        await self.batcher.publish(self.heartbeats, self.publisher.envelope(event, occurred_at=now))

    async def acked(self, conn: Connection, command_id: str) -> None:
        """The agent confirmed a command's receipt."""
        event = CommandAcked(
            command_id=command_id,
            device_id=conn.device_id,
            workspace_id=conn.workspace_id,
            at=datetime.now(UTC),
        )
        await self.publish(self.events, event)

    async def result(self, conn: Connection, outcome: Outcome) -> bool:
        """Record a result; returns True for a duplicate (already recorded: not published again)."""
        cmd = self.book.open.get(outcome.command_id)
        if cmd is not None and cmd.device_id != conn.device_id:
            raise PermissionError("another device's command")
        if not self.book.answer(outcome.command_id):
            return True
        event = CommandResultReceived(
            command_id=outcome.command_id,
            device_id=conn.device_id,
            workspace_id=conn.workspace_id,
            dialect=conn.dialect,
            status=outcome.status,
            at=datetime.now(UTC),
            result=outcome.result,
            error=outcome.error,
            output=outcome.output,
            executed_at=outcome.executed_at,
            duration_ms=outcome.duration_ms,
        )
        try:
            await self.publish(self.events, event)
        except BaseException:
            if cmd is not None:
                cmd.answered = False  # not recorded: the device's retry must not be a duplicate
            raise
        return False

    def counts(self) -> dict[str, int]:
        """Open sockets per dialect."""
        out: dict[str, int] = {}
        for conns in self.sockets.values():
            for conn in conns.values():
                out[conn.dialect] = out.get(conn.dialect, 0) + 1
        return out


_gateways: dict[int, tuple[ServiceHost, Gateway]] = {}
_live: weakref.WeakSet[Gateway] = weakref.WeakSet()
_instruments: list[Any] = []


def gateway_of(host: ServiceHost) -> Gateway:
    """The host's gateway (built on first use, once the host is started)."""
    found = _gateways.get(id(host))
    if found is None or found[0] is not host:
        found = _gateways[id(host)] = (host, Gateway(host))
    return found[1]


async def run_gateway(host: ServiceHost, stop: asyncio.Event) -> None:
    """The host's background task: the command feed and the publisher, until the host stops."""
    try:
        await gateway_of(host).run(stop)
    finally:
        _gateways.pop(id(host), None)


def _instrument() -> None:
    """The ``fleet.gateway.connections`` gauge (open device sockets per dialect), registered once."""
    if _instruments:
        return
    prometheus.gauge(
        "fleet_gateway_agents",
        "open device sockets per dialect",
        ("dialect",),
        lambda: [({"dialect": d}, float(n)) for d, n in _totals().items()],
    )
    meter = metrics.get_meter("fleet.gateway")
    _instruments.append(
        meter.create_observable_gauge(
            "fleet.gateway.connections", callbacks=[_observe], description="open device sockets"
        )
    )


def _totals() -> dict[str, int]:
    totals: dict[str, int] = {}
    for gw in list(_live):
        for dialect, n in gw.counts().items():
            totals[dialect] = totals.get(dialect, 0) + n
    return totals


def _observe(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    for dialect, n in _totals().items():
        yield metrics.Observation(n, {"dialect": dialect})
