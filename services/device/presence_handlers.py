"""Presence use-cases: fold a batch of heartbeats/connections per device, and sweep passed deadlines.

The live path writes states and ``device.status_changed`` outbox rows in one transaction. Each
device row keeps the last entry it applied from each stream, so a redelivered or older entry is
skipped without a processed_events row per heartbeat. A rebuild runs the same fold and emits nothing.
The sweeper applies deadlines only up to what the consumer has handled: a backlog (or a worker that
was down) must not make devices look offline while their heartbeats wait in the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from libs.events.envelope import entry_key
from libs.events.outbox import Outbox
from libs.events.pg import Conn
from libs.events.projection import Delivery, Projection, unapplied
from libs.events.schemas import Event
from libs.events.schemas.device import DeviceStatusChanged
from libs.events.schemas.gateway import AgentConnected, AgentDisconnected, GatewayAlive
from libs.events.schemas.telemetry import HeartbeatReceived

from . import presence_store
from .presence import Beat, Connected, Disconnected, Presence, Signal, Timing, Transition, advance, observe
from .presence import timing_from as _timing
from .presence_store import Save

log = logging.getLogger(__name__)
CONSUMER = "device.presence"
HEARTBEATS, GATEWAY = "telemetry:heartbeats", "events:gateway"
TYPES = frozenset(
    {
        "telemetry.heartbeat.v1",
        "gateway.agent_connected.v1",
        "gateway.agent_disconnected.v1",
        "gateway.alive.v1",
    }
)
TABLES = ("presence", "presence_gateways")
Emit = Callable[[Sequence[Event], dict[str, str] | None], Any]
Horizon = Callable[[], Awaitable[datetime]]


@dataclass(frozen=True)
class Found:
    """A delivery's presence signal: its device, its source stream ("hb"/"gw") and entry."""

    device_id: str
    source: str
    entry_id: str
    signal: Signal | None  # None: a backfilled heartbeat (moves the position, not the state)
    metrics: dict[str, Any] | None = None
    trace: dict[str, str] = field(default_factory=dict)  # the delivery's trace context


def signal_of(d: Delivery) -> Found | None:
    """The device and presence signal a delivery carries (backfilled heartbeats carry none)."""
    event = d.event
    if isinstance(event, HeartbeatReceived):
        if event.backfill:
            return Found(event.device_id, "hb", d.entry_id, None)
        beat = Beat(event.received_at, event.status, event.seq, event.sent_at, event.boot)
        return Found(event.device_id, "hb", d.entry_id, beat, dict(event.metrics) or None, d.trace)
    if isinstance(event, AgentConnected):
        connected = Connected(event.at, event.connection_id, event.gateway_id)
        return Found(event.device_id, "gw", d.entry_id, connected, trace=d.trace)
    if isinstance(event, AgentDisconnected):
        signal = Disconnected(event.at, event.reason, event.connection_id)
        return Found(event.device_id, "gw", d.entry_id, signal, trace=d.trace)
    return None


def gateways_seen(batch: list[Delivery]) -> dict[str, datetime]:
    """Per gateway instance, its latest sign of life in the batch (an announcement or a connection)."""
    seen: dict[str, datetime] = {}
    for d in batch:
        event = d.event
        if isinstance(event, GatewayAlive | AgentConnected) and event.gateway_id:
            seen[event.gateway_id] = max(event.at, seen.get(event.gateway_id, event.at))
    return seen


def status_events(device_id: str, workspace_id: str, out: list[Transition]) -> list[Event]:
    """The ``device.status_changed`` events of a device's transitions."""
    return [
        DeviceStatusChanged(
            device_id=device_id,
            workspace_id=workspace_id,
            status=t.status,
            previous=t.previous,
            reason=t.reason,
            at=t.at,
        )
        for t in out
    ]


def _newer(entry_id: str, position: str | None) -> bool:
    return position is None or entry_key(entry_id) > entry_key(position)


def _fold(
    state: Presence, row: presence_store.Row, found: list[Found], timing: Timing
) -> tuple[Save, list[Transition], list[dict[str, str]]]:
    """The device's new state, its transitions and, for each, the trace context of its cause."""
    out: list[Transition] = []
    traces: list[dict[str, str]] = []
    metrics = None
    positions = dict(row.positions)
    for f in found:
        if not _newer(f.entry_id, positions.get(f.source)):
            continue  # applied before (a redelivery), or older than what this device already has
        positions[f.source] = f.entry_id
        if f.signal is None:
            continue
        new = observe(state, f.signal, timing, out)
        traces += [f.trace] * (len(out) - len(traces))
        if f.metrics is not None and (new.last_seq, new.last_time) != (state.last_seq, state.last_time):
            metrics = f.metrics  # only an accepted heartbeat's metrics are the latest
        state = new
    return Save(row.device_id, state, positions, metrics), out, traces


async def apply_batch(
    conn: Conn,
    batch: list[Delivery],
    *,
    defaults: Timing,
    emit: Emit | None,
    quiet_before: datetime | None = None,
) -> None:
    """Fold a batch per device, save every touched device at once, emit only real transitions."""
    per_device: dict[str, list[Found]] = {}
    for d in batch:
        if (found := signal_of(d)) is not None:
            per_device.setdefault(found.device_id, []).append(found)
    await presence_store.gateways_seen(conn, gateways_seen(batch))
    if not per_device:
        return
    rows = await presence_store.lock(conn, sorted(per_device))
    saved: list[Save] = []
    events: list[tuple[Event, dict[str, str]]] = []
    base = {"heartbeat_interval_s": defaults.interval_s, "heartbeat_timeout_s": defaults.timeout_s}
    for device_id, row in rows.items():
        state = row.state
        if quiet_before is not None:
            state = msgspec.structs.replace(state, quiet_before=quiet_before)
        timing = _timing(row.metadata, row.workspace, base)
        save, out, traces = _fold(state, row, per_device[device_id], timing)
        saved.append(save)
        events += zip(status_events(device_id, row.workspace_id, out), traces, strict=True)
    await presence_store.save(conn, saved)
    if emit is not None:
        for event, trace in events:  # each change continues the trace of the entry that caused it
            emit([event], trace or None)


class PresenceService:
    """The live presence consumer and sweeper of one host."""

    def __init__(
        self,
        outbox: Callable[[], Outbox],
        defaults: Timing,
        horizon: Horizon,
        *,
        sweep_s: float = 0.2,
        gateway_timeout_s: float = 20.0,
    ) -> None:
        self._outbox, self.defaults, self.horizon, self.sweep_s = outbox, defaults, horizon, sweep_s
        self.gateway_timeout = timedelta(seconds=gateway_timeout_s)

    async def handle(self, batch: list[Delivery]) -> None:
        """Batch handler: one transaction per read batch, each entry applied once (by stream position)."""
        async with self._outbox().transaction() as tx:
            todo = await unapplied(tx.conn, TABLES, CONSUMER, batch, claim=False)
            if todo:
                await apply_batch(tx.conn, todo, defaults=self.defaults, emit=tx.emit)

    async def sweep_once(self, now: datetime | None = None, limit: int = 500) -> int:
        """Apply deadlines passed by ``now`` (default: the horizon) of up to ``limit`` devices."""
        now = now or await self.horizon()
        async with self._outbox().transaction() as tx:
            rows = await presence_store.due(tx.conn, now, limit)
            saved = []
            for row in rows:
                out: list[Transition] = []
                state = advance(row.state, now, out)
                saved.append(Save(row.device_id, state, row.positions))
                tx.emit(status_events(row.device_id, row.workspace_id, out))
            await presence_store.save(tx.conn, saved)
        return len(rows) + await self.sweep_orphans(now, limit)

    async def sweep_orphans(self, now: datetime, limit: int = 500) -> int:
        """Disconnect devices whose gateway stopped announcing itself ``gateway_timeout`` before
        ``now`` (it died without closing their sockets): offline, reason ``socket_closed``, at the
        moment it was given up on."""
        async with self._outbox().transaction() as tx:
            found = await presence_store.orphaned(tx.conn, now - self.gateway_timeout, limit)
            saved = []
            for row, gateway_seen in found:
                out: list[Transition] = []
                given_up = gateway_seen + self.gateway_timeout
                lost = Disconnected(given_up, connection_id=row.state.connection_id or "")
                state = observe(row.state, lost, self.defaults, out)
                saved.append(Save(row.device_id, state, row.positions))
                tx.emit(status_events(row.device_id, row.workspace_id, out))
            await presence_store.save(tx.conn, saved)
        return len(found)

    async def run_sweeper(self, stop: asyncio.Event) -> None:
        """Sweep every ``sweep_s`` until ``stop`` is set; errors are logged and retried."""
        while not stop.is_set():
            try:
                while await self.sweep_once() >= 500:
                    pass
            except Exception as exc:  # a database or Redis blip must not end the sweeper
                log.warning("presence sweeper: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.sweep_s)


def horizon_of(oldest_unhandled_ms: Callable[[], Awaitable[list[int | None]]], grace_s: float) -> Horizon:
    """The time up to which deadlines may be applied: now, but never past the oldest heartbeat or
    connection event the consumer has not handled yet, less ``grace_s`` for requests still in
    flight between their ``received_at`` and their stream entry."""

    async def horizon() -> datetime:
        now = datetime.now(UTC)
        pending = [ms for ms in await oldest_unhandled_ms() if ms is not None]
        if pending:
            now = min(now, datetime.fromtimestamp(min(pending) / 1000, UTC))
        return now - timedelta(seconds=grace_s)

    return horizon


def projection(streams: tuple[str, str], defaults: Timing, *, quiet_before: datetime) -> Projection:
    """The presence read model for ``fleet rebuild device presence``: same fold, no events."""

    async def apply(conn: Conn, batch: list[Delivery]) -> None:
        await apply_batch(conn, batch, defaults=defaults, emit=None, quiet_before=quiet_before)

    return Projection(
        name="presence",
        consumer=CONSUMER,
        streams=streams,
        tables=TABLES,
        types=TYPES,
        apply=apply,
    )
