"""All SQL of presence (asyncpg): lock and load states, save them with the registry mirror, find due ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from libs.events.pg import Conn

from .presence import Presence

_STATE = (
    "status, reason, last_seen, last_seq, last_time, late_at, offline_at, connected, last_late, "
    "flap_window_s, quiet_before"
)
_P_STATE = ", ".join(f"p.{c.strip()}" for c in _STATE.split(","))


@dataclass(frozen=True)
class Row:
    """A device's presence with what its timing depends on."""

    device_id: str
    workspace_id: str
    state: Presence
    metadata: dict[str, Any]
    workspace: dict[str, Any]


def _state(r: Any) -> Presence:
    return Presence(**{k.strip(): r[k.strip()] for k in _STATE.split(",")})


async def lock(conn: Conn, device_ids: Sequence[str]) -> dict[str, Row]:
    """Create missing rows for live registry devices, then lock and load them (in id order)."""
    await conn.execute(
        "INSERT INTO presence (device_id, workspace_id) SELECT device_id, workspace_id FROM devices "
        "WHERE device_id = ANY($1::text[]) AND deleted_at IS NULL ORDER BY device_id "
        "ON CONFLICT DO NOTHING",
        list(device_ids),
    )
    rows = await conn.fetch(
        f"SELECT p.device_id, p.workspace_id, {_P_STATE}, d.metadata, "
        "w.heartbeat_interval_s, w.heartbeat_timeout_s "
        "FROM presence p JOIN devices d USING (device_id) "
        "LEFT JOIN presence_workspaces w ON w.workspace_id = p.workspace_id "
        "WHERE p.device_id = ANY($1::text[]) AND d.deleted_at IS NULL ORDER BY p.device_id FOR UPDATE OF p",
        list(device_ids),
    )
    return {r["device_id"]: _row(r) for r in rows}


def _row(r: Any) -> Row:
    ws = {"heartbeat_interval_s": r["heartbeat_interval_s"], "heartbeat_timeout_s": r["heartbeat_timeout_s"]}
    return Row(r["device_id"], r["workspace_id"], _state(r), msgspec.json.decode(r["metadata"]), ws)


async def due(conn: Conn, now: datetime, limit: int) -> list[Row]:
    """Lock rows whose deadline passed, skipping rows another replica or consumer holds."""
    rows = await conn.fetch(
        f"SELECT p.device_id, p.workspace_id, {_P_STATE}, '{{}}'::text AS metadata, "
        "NULL::float8 AS heartbeat_interval_s, NULL::float8 AS heartbeat_timeout_s "
        "FROM presence p WHERE p.next_at <= $1 ORDER BY p.next_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )
    return [_row(r) for r in rows]


async def save(conn: Conn, items: Sequence[tuple[str, Presence, dict[str, Any] | None]]) -> None:
    """Write states and mirror status, reason, last_seen (and latest metrics) into the registry."""
    if not items:
        return
    await conn.executemany(
        "UPDATE presence SET status = $2, reason = $3, last_seen = $4, last_seq = $5, last_time = $6, "
        "late_at = $7, offline_at = $8, next_at = $9, connected = $10, last_late = $11, "
        "flap_window_s = $12, quiet_before = $13 WHERE device_id = $1",
        [
            (
                d, p.status, p.reason, p.last_seen, p.last_seq, p.last_time, p.late_at, p.offline_at,
                p.next_at, p.connected, p.last_late, p.flap_window_s, p.quiet_before,
            )
            for d, p, _m in items
        ],
    )  # fmt: skip
    await conn.execute(
        "UPDATE devices d SET status = t.status, status_reason = t.reason, last_seen = t.last_seen, "
        "metrics = COALESCE(t.metrics::jsonb, d.metrics) "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[]) "
        "AS t(device_id, status, reason, last_seen, metrics) WHERE d.device_id = t.device_id",
        [d for d, _p, _m in items],
        [p.status for _d, p, _m in items],
        [p.reason for _d, p, _m in items],
        [p.last_seen for _d, p, _m in items],
        [None if m is None else msgspec.json.encode(m).decode() for _d, _p, m in items],
    )


async def set_workspace_timing(
    conn: Conn, workspace_id: str, interval_s: float | None, timeout_s: float | None
) -> None:
    """Set (or clear, with None) a workspace's heartbeat interval and timeout."""
    await conn.execute(
        "INSERT INTO presence_workspaces VALUES ($1, $2, $3) ON CONFLICT (workspace_id) DO UPDATE "
        "SET heartbeat_interval_s = $2, heartbeat_timeout_s = $3",
        workspace_id,
        interval_s,
        timeout_s,
    )
