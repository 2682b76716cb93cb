"""The audit read model: operator actions from events:auth and events:device (never emits events)."""

from __future__ import annotations

from libs.events.pg import Conn
from libs.events.projection import Delivery, Projection
from libs.events.service import ServiceHost

from . import domain as d
from . import store as db

AUDIT_CONSUMER = "auth.audit"


def audit_projection(host: ServiceHost) -> Projection:
    """The ``audit`` projection (live consumer and ``rebuild audit`` share it)."""
    return Projection(
        name="audit",
        consumer=AUDIT_CONSUMER,
        streams=(host.stream("events:auth"), host.stream("events:device")),
        tables=("audit_log",),
        types=d.AUDITED,
        apply=apply_audit,
    )


async def apply_audit(conn: Conn, batch: list[Delivery]) -> None:
    """Write one audit line per operator action in the batch."""
    rows = []
    for delivery in batch:
        entry = d.audit_entry(delivery.event)
        if entry is not None:
            rows.append((delivery.envelope.id, delivery.envelope.occurred_at, entry))
    if rows:
        await db.insert_audit(conn, rows)
