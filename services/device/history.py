"""The status timeline: a projection of ``device.status_changed`` events (live, and by rebuild)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from libs.events.pg import Conn
from libs.events.projection import Delivery, Projection
from libs.events.schemas.device import DeviceStatusChanged

CONSUMER = "device.history"
TYPES = frozenset({"device.status_changed.v1"})


async def apply(conn: Conn, batch: list[Delivery]) -> None:
    """Insert each transition once (the envelope id is the key)."""
    rows = [
        (d.envelope.id, e.device_id, e.workspace_id, e.status, e.previous, e.reason, e.at)
        for d in batch
        if isinstance(e := d.event, DeviceStatusChanged)
    ]
    if rows:
        await conn.executemany(
            "INSERT INTO status_history (event_id, device_id, workspace_id, status, previous, reason, at) "
            "VALUES ($1::uuid, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            rows,
        )


def projection(stream: str) -> Projection:
    """``fleet rebuild device history``: the timeline from the (never trimmed) device stream."""
    return Projection(
        name="history",
        consumer=CONSUMER,
        streams=(stream,),
        tables=("status_history",),
        types=TYPES,
        apply=apply,
    )


async def timeline(
    conn: Conn, workspace_id: str, device_id: str, *, limit: int, before: datetime | None
) -> list[dict[str, Any]]:
    """A device's transitions, newest first (scoped by workspace)."""
    rows = await conn.fetch(
        "SELECT status, previous, reason, at FROM status_history WHERE device_id = $1 AND workspace_id = $2 "
        "AND ($3::timestamptz IS NULL OR at < $3) ORDER BY at DESC, event_id DESC LIMIT $4",
        device_id,
        workspace_id,
        before,
        limit,
    )
    return [dict(r) for r in rows]
