"""All SQL of presence (asyncpg): lock and load states, save them (one row per device), find due ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from libs.events.pg import Conn

from .presence import Presence

_STATE = (
    "status, reason, last_seen, last_seq, last_time, boot, late_at, offline_at, connected, connection_id, "
    "gateway_id, last_late, flap_window_s, quiet_before"
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
    positions: dict[str, str | None]  # per source ("hb", "gw"): the last stream entry applied


@dataclass(frozen=True)
class Save:
    """A device's new state, its new stream positions and (if a heartbeat was accepted) its metrics."""

    device_id: str
    state: Presence
    positions: dict[str, str | None]
    metrics: dict[str, Any] | None = None


_STATE_KEYS = tuple(k.strip() for k in _STATE.split(","))


def _state(r: Any) -> Presence:
    return Presence(**{k: r[k] for k in _STATE_KEYS})


def _number(expr: str) -> str:
    return f"CASE WHEN jsonb_typeof({expr}) = 'number' THEN ({expr})::float8 END"


# Only what timing needs from the device's metadata, not the whole document.
_SELECT = (
    f"SELECT p.device_id, p.workspace_id, {_P_STATE}, p.hb_entry, p.gw_entry, "
    + _number("d.metadata->'heartbeat_interval_s'")
    + " AS d_interval, "
    + _number("d.metadata->'heartbeat_timeout_s'")
    + " AS d_timeout, "
    + "w.heartbeat_interval_s, w.heartbeat_timeout_s "
    "FROM presence p JOIN devices d USING (device_id) "
    "LEFT JOIN presence_workspaces w ON w.workspace_id = p.workspace_id "
    "WHERE p.device_id = ANY($1::text[]) AND d.deleted_at IS NULL ORDER BY p.device_id FOR UPDATE OF p"
)


async def lock(conn: Conn, device_ids: Sequence[str]) -> dict[str, Row]:
    """Lock and load the devices' rows (in id order), creating missing ones for live registry devices."""
    rows = await conn.fetch(_SELECT, list(device_ids))
    found = {r["device_id"]: _row(r) for r in rows}
    if missing := sorted(set(device_ids) - set(found)):
        await conn.execute(
            "INSERT INTO presence (device_id, workspace_id) SELECT device_id, workspace_id FROM devices "
            "WHERE device_id = ANY($1::text[]) AND deleted_at IS NULL ORDER BY device_id "
            "ON CONFLICT DO NOTHING",
            missing,
        )
        found.update({r["device_id"]: _row(r) for r in await conn.fetch(_SELECT, missing)})
    return found


def _row(r: Any) -> Row:
    ws = {"heartbeat_interval_s": r["heartbeat_interval_s"], "heartbeat_timeout_s": r["heartbeat_timeout_s"]}
    device = {"heartbeat_interval_s": r["d_interval"], "heartbeat_timeout_s": r["d_timeout"]}
    positions = {"hb": r["hb_entry"], "gw": r["gw_entry"]}
    return Row(r["device_id"], r["workspace_id"], _state(r), device, ws, positions)


async def due(conn: Conn, now: datetime, limit: int) -> list[Row]:
    """Lock rows whose deadline passed, skipping rows another replica or consumer holds."""
    rows = await conn.fetch(
        f"SELECT p.device_id, p.workspace_id, {_P_STATE}, p.hb_entry, p.gw_entry, "
        "NULL::float8 AS d_interval, NULL::float8 AS d_timeout, NULL::float8 AS heartbeat_interval_s, "
        "NULL::float8 AS heartbeat_timeout_s "
        "FROM presence p WHERE p.next_at <= $1 ORDER BY p.next_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )
    return [_row(r) for r in rows]


async def gateways_seen(conn: Conn, seen: dict[str, datetime]) -> None:
    """Record each gateway's latest sign of life (never moving one back)."""
    if seen:
        await conn.execute(
            "INSERT INTO presence_gateways (gateway_id, last_seen) "
            "SELECT * FROM unnest($1::text[], $2::timestamptz[]) ORDER BY 1 "
            "ON CONFLICT (gateway_id) DO UPDATE "
            "SET last_seen = greatest(presence_gateways.last_seen, EXCLUDED.last_seen)",
            list(seen),
            list(seen.values()),
        )


async def orphaned(conn: Conn, silent_since: datetime, limit: int) -> list[tuple[Row, datetime]]:
    """Lock connected devices whose gateway was last heard of before ``silent_since``, with that time
    (rows another replica or consumer holds are skipped)."""
    rows = await conn.fetch(
        f"SELECT p.device_id, p.workspace_id, {_P_STATE}, p.hb_entry, p.gw_entry, "
        "NULL::float8 AS d_interval, NULL::float8 AS d_timeout, NULL::float8 AS heartbeat_interval_s, "
        "NULL::float8 AS heartbeat_timeout_s, g.last_seen AS gateway_seen "
        "FROM presence p JOIN presence_gateways g USING (gateway_id) "
        "WHERE p.connected AND g.last_seen < $1 ORDER BY p.device_id LIMIT $2 FOR UPDATE OF p SKIP LOCKED",
        silent_since,
        limit,
    )
    return [(_row(r), r["gateway_seen"]) for r in rows]


async def save(conn: Conn, items: Sequence[Save]) -> None:
    """Write each device's state, positions and latest metrics: one row per device, one statement."""
    if not items:
        return
    cols: dict[str, tuple[str, list[Any]]] = {
        "device_id": ("text", [i.device_id for i in items]),
        "status": ("text", [i.state.status for i in items]),
        "reason": ("text", [i.state.reason for i in items]),
        "last_seen": ("timestamptz", [i.state.last_seen for i in items]),
        "last_seq": ("int8", [i.state.last_seq for i in items]),
        "last_time": ("timestamptz", [i.state.last_time for i in items]),
        "boot": ("text", [i.state.boot for i in items]),
        "late_at": ("timestamptz", [i.state.late_at for i in items]),
        "offline_at": ("timestamptz", [i.state.offline_at for i in items]),
        "next_at": ("timestamptz", [i.state.next_at for i in items]),
        "connected": ("bool", [i.state.connected for i in items]),
        "connection_id": ("text", [i.state.connection_id for i in items]),
        "gateway_id": ("text", [i.state.gateway_id for i in items]),
        "last_late": ("timestamptz", [i.state.last_late for i in items]),
        "flap_window_s": ("float8", [i.state.flap_window_s for i in items]),
        "quiet_before": ("timestamptz", [i.state.quiet_before for i in items]),
        "hb_entry": ("text", [i.positions.get("hb") for i in items]),
        "gw_entry": ("text", [i.positions.get("gw") for i in items]),
        "metrics": (
            "text",
            [None if i.metrics is None else msgspec.json.encode(i.metrics).decode() for i in items],
        ),
    }
    names = list(cols)
    arrays = ", ".join(f"${n}::{cols[name][0]}[]" for n, name in enumerate(names, 1))
    sets = ", ".join(f"{c} = t.{c}" for c in names[1:] if c != "metrics")
    await conn.execute(
        f"UPDATE presence p SET {sets}, metrics = coalesce(t.metrics::jsonb, p.metrics) "
        f"FROM unnest({arrays}) AS t({', '.join(names)}) WHERE p.device_id = t.device_id",
        *(cols[name][1] for name in names),
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


async def workspace_timing(conn: Conn, workspace_id: str) -> tuple[float | None, float | None]:
    """A workspace's heartbeat interval and timeout (None where the service default applies)."""
    row = await conn.fetchrow(
        "SELECT heartbeat_interval_s, heartbeat_timeout_s FROM presence_workspaces WHERE workspace_id = $1",
        workspace_id,
    )
    return (row[0], row[1]) if row else (None, None)
