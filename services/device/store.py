"""All SQL of the device service (asyncpg); every read is scoped by workspace."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from libs.events.pg import Conn

from .domain import Device, Site

# Registry columns, with presence's status, reason, last_seen and latest metrics (read-only here).
_DEVICE_COLUMNS = (
    "d.device_id, d.workspace_id, d.name, d.device_type, d.site_id, d.groups, d.labels, d.metadata, "
    "d.disabled, d.created_at, d.updated_at, d.ip_address, coalesce(p.status, 'offline') AS status, "
    "coalesce(p.reason, 'never_seen') AS status_reason, p.last_seen, p.metrics"
)
_FROM = "devices d LEFT JOIN presence p USING (device_id)"
_LIVE = "d.deleted_at IS NULL"


@dataclass(frozen=True)
class DeviceFilter:
    """Listing filters (all optional)."""

    status: str | None = None
    site_id: str | None = None
    group: str | None = None
    label: tuple[str, str] | None = None
    text: str | None = None


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _device(row: Mapping[str, Any]) -> Device:
    values = dict(row)
    values["groups"] = list(values["groups"])
    values["labels"] = msgspec.json.decode(values["labels"])
    values["metadata"] = msgspec.json.decode(values["metadata"])
    values["metrics"] = msgspec.json.decode(values["metrics"]) if values.get("metrics") else {}
    return Device(**values)


def like_pattern(text: str) -> str:
    """``%text%`` with LIKE wildcards in ``text`` taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def device_id_taken(conn: Conn, device_id: str) -> bool:
    """Whether any device, live or deleted, has this id."""
    return bool(await conn.fetchval("SELECT 1 FROM devices WHERE device_id = $1", device_id))


async def get_device(conn: Conn, workspace_id: str, device_id: str, *, lock: bool = False) -> Device | None:
    """A live device of the workspace (locked for update when asked)."""
    sql = f"SELECT {_DEVICE_COLUMNS} FROM {_FROM} WHERE d.device_id = $1 AND d.workspace_id = $2 AND {_LIVE}"
    row = await conn.fetchrow(sql + (" FOR UPDATE OF d" if lock else ""), device_id, workspace_id)
    return _device(row) if row else None


async def insert_device(conn: Conn, d: Device) -> bool:
    """Insert a new device; False if its id is taken (a concurrent registration won)."""
    row = await conn.fetchval(
        "INSERT INTO devices (device_id, workspace_id, name, device_type, site_id, groups, labels, "
        "metadata, disabled, created_at, updated_at, ip_address) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, $11, $12) "
        "ON CONFLICT (device_id) DO NOTHING RETURNING 1",
        d.device_id,
        d.workspace_id,
        d.name,
        d.device_type,
        d.site_id,
        d.groups,
        _json(d.labels),
        _json(d.metadata),
        d.disabled,
        d.created_at,
        d.updated_at,
        d.ip_address,
    )
    return row is not None


async def insert_devices(conn: Conn, devices: list[Device]) -> int:
    """Insert new devices in one statement; returns how many were inserted (a taken id is skipped)."""
    status = await conn.execute(
        "INSERT INTO devices (device_id, workspace_id, name, device_type, site_id, groups, labels, "
        "metadata, disabled, created_at, updated_at, ip_address) "
        "SELECT t.device_id, t.workspace_id, t.name, t.device_type, t.site_id, "
        "ARRAY(SELECT jsonb_array_elements_text(t.groups)), t.labels, t.metadata, false, t.at, t.at, NULL "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[], "
        "$8::jsonb[], $9::timestamptz[]) "
        "AS t(device_id, workspace_id, name, device_type, site_id, groups, labels, metadata, at) "
        "ON CONFLICT (device_id) DO NOTHING",
        [d.device_id for d in devices],
        [d.workspace_id for d in devices],
        [d.name for d in devices],
        [d.device_type for d in devices],
        [d.site_id for d in devices],
        [_json(d.groups) for d in devices],  # text[] cannot be unnested per row: a JSON array each
        [_json(d.labels) for d in devices],
        [_json(d.metadata) for d in devices],
        [d.created_at for d in devices],
    )
    return int(status.split()[-1])


async def update_device(conn: Conn, d: Device) -> None:
    """Store the editable fields of a device."""
    await conn.execute(
        "UPDATE devices SET name = $2, site_id = $3, groups = $4, labels = $5::jsonb, "
        "metadata = $6::jsonb, disabled = $7, updated_at = $8 WHERE device_id = $1",
        d.device_id,
        d.name,
        d.site_id,
        d.groups,
        _json(d.labels),
        _json(d.metadata),
        d.disabled,
        d.updated_at,
    )


async def delete_device(conn: Conn, device_id: str, now: datetime) -> None:
    """Soft-delete: the row stays so its id is never reused."""
    await conn.execute(
        "UPDATE devices SET deleted_at = $2, updated_at = $2 WHERE device_id = $1", device_id, now
    )


def _where(workspace_id: str, f: DeviceFilter) -> tuple[str, list[Any]]:
    clauses, args = ["d.workspace_id = $1", _LIVE], [workspace_id]

    def add(sql: str, value: Any) -> None:
        args.append(value)
        clauses.append(sql.replace("?", f"${len(args)}"))

    if f.status is not None:
        add("coalesce(p.status, 'offline') = ?", f.status)
    if f.site_id is not None:
        add("d.site_id = ?", f.site_id)
    if f.group is not None:
        add("? = ANY(d.groups)", f.group)
    if f.label is not None:
        add("d.labels @> ?::jsonb", _json({f.label[0]: f.label[1]}))
    if f.text is not None:
        add("(d.name ILIKE ? ESCAPE '\\' OR d.device_id ILIKE ? ESCAPE '\\')", like_pattern(f.text))
    return " AND ".join(clauses), args


async def list_devices(
    conn: Conn, workspace_id: str, f: DeviceFilter, *, limit: int, offset: int
) -> tuple[list[Device], int]:
    """A page of the workspace's live devices, newest first, and the total matching."""
    where, args = _where(workspace_id, f)
    total = await conn.fetchval(f"SELECT count(*) FROM {_FROM} WHERE {where}", *args)
    n = len(args)
    rows = await conn.fetch(
        f"SELECT {_DEVICE_COLUMNS} FROM {_FROM} WHERE {where} "
        f"ORDER BY d.created_at DESC, d.device_id DESC LIMIT ${n + 1} OFFSET ${n + 2}",
        *args,
        limit,
        offset,
    )
    return [_device(r) for r in rows], int(total)


async def get_site(conn: Conn, site_id: str) -> Site | None:
    """A site by its (global) id, whatever its workspace."""
    row = await conn.fetchrow(
        "SELECT site_id, workspace_id, name, location, description, created_at FROM sites WHERE site_id = $1",
        site_id,
    )
    return Site(**dict(row)) if row else None


async def insert_site(conn: Conn, s: Site) -> bool:
    """Insert a site; False if the id is taken."""
    row = await conn.fetchval(
        "INSERT INTO sites (site_id, workspace_id, name, location, description, created_at) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (site_id) DO NOTHING RETURNING 1",
        s.site_id,
        s.workspace_id,
        s.name,
        s.location,
        s.description,
        s.created_at,
    )
    return row is not None


async def list_sites(conn: Conn, workspace_id: str) -> list[Site]:
    """The workspace's sites, newest first."""
    rows = await conn.fetch(
        "SELECT site_id, workspace_id, name, location, description, created_at FROM sites "
        "WHERE workspace_id = $1 ORDER BY created_at DESC, site_id DESC",
        workspace_id,
    )
    return [Site(**dict(r)) for r in rows]
