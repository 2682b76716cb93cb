"""Presence use-cases: fold a batch of heartbeats/connections per device, and sweep passed deadlines.

The live path writes states, the registry mirror and ``device.status_changed`` outbox rows in one
transaction with the batch's processed_events rows; a rebuild runs the same fold and emits nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from libs.events.outbox import Outbox
from libs.events.pg import Conn
from libs.events.projection import Delivery, Projection, unapplied
from libs.events.schemas import Event
from libs.events.schemas.device import DeviceStatusChanged
from libs.events.schemas.gateway import AgentConnected, AgentDisconnected
from libs.events.schemas.telemetry import HeartbeatReceived

from . import presence_store
from .presence import Beat, Connected, Disconnected, Presence, Signal, Timing, Transition, advance, observe
from .presence import timing_from as _timing

log = logging.getLogger(__name__)
CONSUMER = "device.presence"
HEARTBEATS, GATEWAY = "telemetry:heartbeats", "events:gateway"
TYPES = frozenset({"telemetry.heartbeat.v1", "gateway.agent_connected.v1", "gateway.agent_disconnected.v1"})
Emit = Callable[[Sequence[Event]], Any]


def signal_of(event: Event) -> tuple[str, Signal, dict[str, Any] | None] | None:
    """The device and presence signal an event carries (backfilled heartbeats carry none)."""
    if isinstance(event, HeartbeatReceived):
        if event.backfill:
            return None
        beat = Beat(event.received_at, event.status, event.seq, event.sent_at)
        return event.device_id, beat, dict(event.metrics) or None
    if isinstance(event, AgentConnected):
        return event.device_id, Connected(event.at), None
    if isinstance(event, AgentDisconnected):
        return event.device_id, Disconnected(event.at, event.reason), None
    return None


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


def _fold(
    state: Presence, signals: list[tuple[Signal, dict[str, Any] | None]], timing: Timing
) -> tuple[Presence, list[Transition], dict[str, Any] | None]:
    out: list[Transition] = []
    metrics = None
    for signal, m in signals:
        new = observe(state, signal, timing, out)
        if m is not None and (new.last_seq, new.last_time) != (state.last_seq, state.last_time):
            metrics = m  # only an accepted heartbeat's metrics are the latest
        state = new
    return state, out, metrics


async def apply_batch(
    conn: Conn,
    batch: list[Delivery],
    *,
    defaults: Timing,
    emit: Emit | None,
    quiet_before: datetime | None = None,
) -> None:
    """Fold a batch per device, save every touched device at once, emit only real transitions."""
    per_device: dict[str, list[tuple[Signal, dict[str, Any] | None]]] = {}
    for d in batch:
        if (found := signal_of(d.event)) is not None:
            per_device.setdefault(found[0], []).append((found[1], found[2]))
    if not per_device:
        return
    rows = await presence_store.lock(conn, sorted(per_device))
    saved, events = [], []
    base = {"heartbeat_interval_s": defaults.interval_s, "heartbeat_timeout_s": defaults.timeout_s}
    for device_id, row in rows.items():
        state = row.state
        if quiet_before is not None:
            state = dataclasses.replace(state, quiet_before=quiet_before)
        timing = _timing(row.metadata, row.workspace, base)
        state, out, metrics = _fold(state, per_device[device_id], timing)
        saved.append((device_id, state, metrics))
        events += status_events(device_id, row.workspace_id, out)
    await presence_store.save(conn, saved)
    if emit is not None and events:
        emit(events)


class PresenceService:
    """The live presence consumer and sweeper of one host."""

    def __init__(self, outbox: Callable[[], Outbox], defaults: Timing, *, sweep_s: float = 0.2) -> None:
        self._outbox, self.defaults, self.sweep_s = outbox, defaults, sweep_s

    async def handle(self, batch: list[Delivery]) -> None:
        """Batch handler: one transaction per read batch, each event applied once."""
        async with self._outbox().transaction() as tx:
            todo = await unapplied(tx.conn, ("presence",), CONSUMER, batch)
            if todo:
                await apply_batch(tx.conn, todo, defaults=self.defaults, emit=tx.emit)

    async def sweep_once(self, now: datetime | None = None, limit: int = 500) -> int:
        """Apply passed deadlines of up to ``limit`` devices in one transaction; returns how many."""
        now = now or datetime.now(UTC)
        async with self._outbox().transaction() as tx:
            rows = await presence_store.due(tx.conn, now, limit)
            saved = []
            for row in rows:
                out: list[Transition] = []
                state = advance(row.state, now, out)
                saved.append((row.device_id, state, None))
                tx.emit(status_events(row.device_id, row.workspace_id, out))
            await presence_store.save(tx.conn, saved)
        return len(rows)

    async def run_sweeper(self, stop: asyncio.Event) -> None:
        """Sweep every ``sweep_s`` until ``stop`` is set; errors are logged and retried."""
        while not stop.is_set():
            try:
                while await self.sweep_once() >= 500:
                    pass
            except Exception as exc:  # a database blip must not end the sweeper
                log.warning("presence sweeper: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.sweep_s)


def projection(streams: tuple[str, str], defaults: Timing, *, quiet_before: datetime) -> Projection:
    """The presence read model for ``fleet rebuild device presence``: same fold, no events."""

    async def apply(conn: Conn, batch: list[Delivery]) -> None:
        await apply_batch(conn, batch, defaults=defaults, emit=None, quiet_before=quiet_before)

    return Projection(
        name="presence",
        consumer=CONSUMER,
        streams=streams,
        tables=("presence",),
        types=TYPES,
        apply=apply,
    )
