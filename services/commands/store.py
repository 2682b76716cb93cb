"""All SQL of the commands service (asyncpg); operator reads are scoped by workspace."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from libs.events.pg import Conn

from .domain import Command

_COLUMNS = (
    "command_id, workspace_id, device_id, command_type, parameters, state, created_at, expires_at, "
    "created_by, sent_at, delivered_at, finished_at, attempts, via, result, error, output, "
    "reported_status, executed_at, duration_ms, finished_by, idempotency_key, request_hash"
)
_OPEN = "state IN ('queued', 'sent', 'delivered')"


def _json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


def _command(row: Mapping[str, Any]) -> Command:
    values = dict(row)
    values["parameters"] = msgspec.json.decode(values["parameters"])
    values["result"] = msgspec.json.decode(values["result"]) if values["result"] is not None else None
    return Command(**values)


async def insert(conn: Conn, c: Command, reply_status: int | None, reply: dict[str, Any] | None) -> bool:
    """Insert a new command; False if its workspace already has one under its idempotency key."""
    row = await conn.fetchval(
        "INSERT INTO commands (command_id, workspace_id, device_id, command_type, parameters, state, "
        "created_at, expires_at, created_by, idempotency_key, request_hash, reply_status, reply) "
        "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13::jsonb) "
        "ON CONFLICT (workspace_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
        "RETURNING 1",
        c.command_id,
        c.workspace_id,
        c.device_id,
        c.command_type,
        _json(c.parameters),
        c.state,
        c.created_at,
        c.expires_at,
        c.created_by,
        c.idempotency_key,
        c.request_hash,
        reply_status,
        _json(reply),
    )
    return row is not None


async def by_key(conn: Conn, workspace_id: str, key: str) -> tuple[Command, int, Any] | None:
    """The command a workspace queued under an idempotency key, with the first answer given."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, reply_status, reply FROM commands "
        "WHERE workspace_id = $1 AND idempotency_key = $2",
        workspace_id,
        key,
    )
    if row is None:
        return None
    values = dict(row)
    status, reply = values.pop("reply_status"), values.pop("reply")
    return _command(values), int(status or 201), msgspec.json.decode(reply) if reply else None


async def get(conn: Conn, command_id: str, *, lock: bool = False) -> Command | None:
    """A command by id, whatever its workspace (callers check who may see it)."""
    sql = f"SELECT {_COLUMNS} FROM commands WHERE command_id = $1" + (" FOR UPDATE" if lock else "")
    row = await conn.fetchrow(sql, command_id)
    return _command(row) if row else None


async def lock_many(conn: Conn, command_ids: Sequence[str]) -> dict[str, Command]:
    """Commands by id, locked in id order (concurrent batches never deadlock)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM commands WHERE command_id = ANY($1::text[]) ORDER BY command_id FOR UPDATE",
        sorted(set(command_ids)),
    )
    return {r["command_id"]: _command(r) for r in rows}


async def history(conn: Conn, workspace_id: str, device_id: str, *, limit: int, offset: int) -> list[Command]:
    """A device's commands, newest first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM commands WHERE device_id = $1 AND workspace_id = $2 "
        "ORDER BY created_at DESC, command_id DESC LIMIT $3 OFFSET $4",
        device_id,
        workspace_id,
        limit,
        offset,
    )
    return [_command(r) for r in rows]


async def listing(
    conn: Conn, workspace_id: str, device_id: str | None, states: list[str] | None, *, limit: int, offset: int
) -> list[Command]:
    """A workspace's commands (of one device, in some states), newest first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM commands WHERE workspace_id = $1 "
        "AND ($2::text IS NULL OR device_id = $2) AND ($3::text[] IS NULL OR state = ANY($3)) "
        "ORDER BY created_at DESC, command_id DESC LIMIT $4 OFFSET $5",
        workspace_id,
        device_id,
        states,
        limit,
        offset,
    )
    return [_command(r) for r in rows]


async def open_for(
    conn: Conn, workspace_id: str, device_id: str, now: datetime, *, limit: int, lock: bool = False
) -> list[Command]:
    """A device's open commands not yet past their TTL, oldest first (its FIFO); when locking, rows
    are locked in id order like every other multi-row lock here, so no two lockers deadlock."""
    picked = (
        f"SELECT command_id FROM commands WHERE device_id = $1 AND workspace_id = $2 AND {_OPEN} "
        "AND expires_at > $3 ORDER BY created_at, command_id LIMIT $4"
    )
    if lock:
        sql = f"SELECT {_COLUMNS} FROM commands WHERE command_id IN ({picked}) ORDER BY command_id FOR UPDATE"
    else:
        sql = f"SELECT {_COLUMNS} FROM commands WHERE command_id IN ({picked})"
    rows = await conn.fetch(sql, device_id, workspace_id, now, limit)
    found = [_command(r) for r in rows]
    return sorted(found, key=lambda c: (c.created_at, c.command_id))


async def open_ids(conn: Conn, workspace_id: str, device_id: str) -> list[str]:
    """The ids of a device's open commands (expired or not)."""
    rows = await conn.fetch(
        f"SELECT command_id FROM commands WHERE device_id = $1 AND workspace_id = $2 AND {_OPEN}",
        device_id,
        workspace_id,
    )
    return [r["command_id"] for r in rows]


async def due(conn: Conn, now: datetime, limit: int) -> list[Command]:
    """Open commands past their TTL, locked (other sweepers skip them)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM commands WHERE {_OPEN} AND expires_at <= $1 "
        "ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )
    return [_command(r) for r in rows]


async def save(conn: Conn, commands: Sequence[Command]) -> None:
    """Store the lifecycle fields of changed commands."""
    if not commands:
        return
    await conn.executemany(
        "UPDATE commands SET state = $2, sent_at = $3, delivered_at = $4, finished_at = $5, "
        "attempts = $6, via = $7, result = $8::jsonb, error = $9, output = $10, reported_status = $11, "
        "executed_at = $12, duration_ms = $13, finished_by = $14 WHERE command_id = $1",
        [
            (
                c.command_id,
                c.state,
                c.sent_at,
                c.delivered_at,
                c.finished_at,
                c.attempts,
                c.via,
                _json(c.result),
                c.error,
                c.output,
                c.reported_status,
                c.executed_at,
                c.duration_ms,
                c.finished_by,
            )
            for c in commands
        ],
    )


async def open_count(conn: Conn) -> dict[str, int]:
    """Open commands per state (for the backlog gauge)."""
    rows = await conn.fetch(f"SELECT state, count(*) AS n FROM commands WHERE {_OPEN} GROUP BY state")
    return {r["state"]: int(r["n"]) for r in rows}
