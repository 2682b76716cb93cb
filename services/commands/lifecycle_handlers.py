"""Reactions to other services' events (consumer group ``commands.lifecycle``).

The gateway pushed (sent), the device acked (delivered) or answered (finished) on a socket; telemetry
handed commands out in an S heartbeat answer (sent); the registry deleted a device (its open commands
are cancelled: nothing can deliver them any more). One transaction per read batch records each
envelope in ``processed_events`` (a redelivery is skipped), locks the commands in id order, folds the
batch into them and emits the lifecycle events.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from libs.events.pg import Conn
from libs.events.projection import Delivery, claim_events
from libs.events.schemas import Event
from libs.events.schemas.device import DeviceDeleted
from libs.events.schemas.gateway import CommandAcked, CommandPushed, CommandResultReceived
from libs.events.schemas.telemetry import CommandsPiggybacked

from . import metrics, store
from .dialects import aware, event_report
from .domain import Command, decide_cancel, decide_deliver, decide_result, decide_send
from .handlers import Commands

log = logging.getLogger(__name__)
CONSUMER = "commands.lifecycle"
GATEWAY, TELEMETRY, DEVICE = "events:gateway", "events:telemetry", "events:device"
TYPES = {
    GATEWAY: frozenset(
        {"gateway.command_pushed.v1", "gateway.command_acked.v1", "gateway.command_result.v1"}
    ),
    TELEMETRY: frozenset({"telemetry.commands_piggybacked.v1"}),
    DEVICE: frozenset({"device.deleted.v1"}),
}
# A socket dialect -> the transport ``via`` names in CommandSent / CommandFinished.
VIA = {"agent": "agent", "s": "s_ws", "w": "w_ws"}
DELETED_BY = "system:device_deleted"

Step = CommandPushed | CommandAcked | CommandResultReceived | CommandsPiggybacked | DeviceDeleted


class Lifecycle:
    """The batch handler of ``commands.lifecycle`` over the queue's outbox."""

    def __init__(self, commands: Commands) -> None:
        self.commands = commands

    async def handle(self, batch: list[Delivery]) -> None:
        """Apply each new event once, the whole batch in one transaction."""
        async with self.commands.outbox.transaction() as tx:
            fresh = await claim_events(tx.conn, CONSUMER, [d.envelope.id for d in batch])
            steps = await steps_of(tx.conn, [d for d in batch if d.envelope.id in fresh])
            if not steps:
                return
            commands = await store.lock_many(tx.conn, [cid for cid, _e, _at in steps])
            changed: dict[str, Command] = {}
            events: list[Event] = []
            for command_id, event, at in steps:
                c = commands.get(command_id)
                if c is None or (c.device_id, c.workspace_id) != (event.device_id, event.workspace_id):
                    log.warning("%s for unknown command %s ignored", type(event).__name__, command_id)
                    continue
                new, out = apply_step(c, event, aware(at))
                if out:
                    commands[command_id] = changed[command_id] = new
                    events += out
            await store.save(tx.conn, list(changed.values()))
            tx.emit(events)
        metrics.count(events)


async def steps_of(conn: Conn, batch: list[Delivery]) -> list[tuple[str, Step, datetime]]:
    """The commands each event moves along, with its time (a deleted device: all its open ones)."""
    steps: list[tuple[str, Step, datetime]] = []
    for d in batch:
        event = d.event
        if isinstance(event, DeviceDeleted):
            ids = await store.open_ids(conn, event.workspace_id, event.device_id)
            steps += [(cid, event, d.envelope.occurred_at) for cid in ids]
        elif isinstance(event, CommandsPiggybacked):
            steps += [(cid, event, event.at) for cid in dict.fromkeys(event.command_ids)]
        elif isinstance(event, CommandPushed | CommandAcked | CommandResultReceived):
            steps.append((event.command_id, event, event.at))
    return steps


def apply_step(c: Command, event: Step, at: datetime) -> tuple[Command, Sequence[Event]]:
    """One event's decision for one command (timestamps are the event's own)."""
    if isinstance(event, DeviceDeleted):
        return (c, []) if c.terminal else decide_cancel(c, by=DELETED_BY, now=at)
    if isinstance(event, CommandsPiggybacked):
        return decide_send(c, via="s_heartbeat", now=at)
    if isinstance(event, CommandPushed):
        return decide_send(c, via=VIA.get(event.dialect, event.dialect), now=at)
    if isinstance(event, CommandAcked):
        return decide_deliver(c, now=at)
    report = event_report(
        event.status,
        result=event.result,
        error=event.error,
        output=event.output,
        executed_at=aware(event.executed_at) if event.executed_at is not None else None,
        duration_ms=event.duration_ms,
    )
    new, out, verdict = decide_result(c, report, via=VIA.get(event.dialect, event.dialect), now=at)
    if verdict != "accepted":
        log.info("result for command %s %s (it is %s)", c.command_id, verdict, c.state)
    return new, out
