"""All SQL of the auth service, and the transaction that stores state with its events."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from libs.events.outbox import Outbox, OutboxTx
from libs.events.pg import Conn
from libs.events.schemas import Event
from libs.events.schemas import auth as A

from .domain import AuditEntry, Member, Workspace

log = logging.getLogger(__name__)


Tx = OutboxTx


class Store(Outbox):
    """Transactions whose events go to the outbox at commit and straight to the stream after it."""

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, stream: str) -> None:
        super().__init__(pool, redis, producer="auth", stream=stream)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Conn]:
        """A connection for queries."""
        async with self.pool.acquire() as conn:
            yield conn


# ---- operators and workspaces ------------------------------------------------------------------


async def operators_exist(conn: Conn) -> bool:
    """Whether any operator exists; locks the table so two bootstraps cannot both succeed."""
    await conn.execute("LOCK TABLE operators IN SHARE ROW EXCLUSIVE MODE")
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM operators)"))


async def insert_workspace(conn: Conn, ws: Workspace, now: datetime) -> None:
    """A new workspace."""
    await conn.execute(
        "INSERT INTO workspaces (id, name, open_enrolment, created_at) VALUES ($1, $2, $3, $4)",
        ws.workspace_id,
        ws.name,
        ws.open_enrolment,
        now,
    )


async def insert_operator(
    conn: Conn, operator_id: str, email: str, password_hash: str, now: datetime
) -> bool:
    """A new operator; False if the email is taken."""
    row = await conn.fetchval(
        "INSERT INTO operators (id, email, password_hash, created_at, password_changed_at) "
        "VALUES ($1, $2, $3, $4, $4) ON CONFLICT (email) DO NOTHING RETURNING 1",
        operator_id,
        email,
        password_hash,
        now,
    )
    return row is not None


async def insert_membership(
    conn: Conn, operator_id: str, workspace_id: str, role: str, now: datetime
) -> None:
    """An operator joins a workspace."""
    await conn.execute(
        "INSERT INTO memberships (operator_id, workspace_id, role, created_at) VALUES ($1, $2, $3, $4)",
        operator_id,
        workspace_id,
        role,
        now,
    )


async def operator_by_email(conn: Conn, email: str) -> asyncpg.Record | None:
    """``id, email, password_hash`` of an operator."""
    return await conn.fetchrow("SELECT id::text, email, password_hash FROM operators WHERE email = $1", email)


async def operator_by_id(conn: Conn, operator_id: str, *, lock: bool = False) -> asyncpg.Record | None:
    """``id, email, password_hash`` of an operator (optionally locked for update)."""
    sql = "SELECT id::text, email, password_hash FROM operators WHERE id = $1"
    return await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), operator_id)


async def set_password_hash(
    conn: Conn, operator_id: str, password_hash: str, changed: datetime | None
) -> None:
    """Store a new hash (``changed`` set when the password itself changed, not on a rehash)."""
    await conn.execute(
        "UPDATE operators SET password_hash = $2, "
        "password_changed_at = coalesce($3, password_changed_at) WHERE id = $1",
        operator_id,
        password_hash,
        changed,
    )


async def memberships_of(conn: Conn, operator_id: str, *, share: bool = False) -> list[asyncpg.Record]:
    """``workspace_id, name, role, open_enrolment, created_at`` of each membership, oldest first.

    ``share`` locks the membership rows until commit, so a role change waits for the session
    being opened (and then revokes it) instead of racing it.
    """
    return await conn.fetch(
        "SELECT w.id::text AS workspace_id, w.name, m.role, w.open_enrolment, w.created_at "
        "FROM memberships m JOIN workspaces w ON w.id = m.workspace_id "
        "WHERE m.operator_id = $1 ORDER BY m.created_at, w.id" + (" FOR SHARE OF m" if share else ""),
        operator_id,
    )


async def password_hash_shared(conn: Conn, operator_id: str) -> str | None:
    """The operator's password hash, row locked against a concurrent change until commit."""
    value = await conn.fetchval("SELECT password_hash FROM operators WHERE id = $1 FOR SHARE", operator_id)
    return None if value is None else str(value)


async def workspace(conn: Conn, workspace_id: str, *, lock: bool = False) -> Workspace | None:
    """A workspace by id."""
    sql = "SELECT id::text, name, open_enrolment FROM workspaces WHERE id = $1"
    row = await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), workspace_id)
    return Workspace(row["id"], row["name"], row["open_enrolment"]) if row else None


async def update_workspace(conn: Conn, workspace_id: str, changes: dict[str, Any]) -> None:
    """Apply a WorkspaceUpdated's changes."""
    await conn.execute(
        "UPDATE workspaces SET name = coalesce($2, name), "
        "open_enrolment = coalesce($3, open_enrolment) WHERE id = $1",
        workspace_id,
        changes.get("name"),
        changes.get("open_enrolment"),
    )


async def members(conn: Conn, workspace_id: str, *, lock: bool = False) -> list[Member]:
    """The members of a workspace (locked for update when deciding on them)."""
    sql = "SELECT operator_id::text, role FROM memberships WHERE workspace_id = $1 ORDER BY created_at"
    rows = await conn.fetch(sql + (" FOR UPDATE" if lock else ""), workspace_id)
    return [Member(r["operator_id"], r["role"]) for r in rows]


async def member_rows(conn: Conn, workspace_id: str) -> list[asyncpg.Record]:
    """``operator_id, email, role, joined_at`` of each member, oldest first."""
    return await conn.fetch(
        "SELECT o.id::text AS operator_id, o.email, m.role, m.created_at AS joined_at "
        "FROM memberships m JOIN operators o ON o.id = m.operator_id "
        "WHERE m.workspace_id = $1 ORDER BY m.created_at, o.id",
        workspace_id,
    )


async def set_role(conn: Conn, operator_id: str, workspace_id: str, role: str) -> None:
    """Change a member's role."""
    await conn.execute(
        "UPDATE memberships SET role = $3 WHERE operator_id = $1 AND workspace_id = $2",
        operator_id,
        workspace_id,
        role,
    )


async def delete_membership(conn: Conn, operator_id: str, workspace_id: str) -> None:
    """Remove a member."""
    await conn.execute(
        "DELETE FROM memberships WHERE operator_id = $1 AND workspace_id = $2", operator_id, workspace_id
    )


# ---- device credentials ------------------------------------------------------------------------


async def lock_device_kind(conn: Conn, device_id: str, kind: str) -> None:
    """Serialise rotations of one device's credential kind (until the transaction ends)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"cred:{device_id}:{kind}")


async def minted(conn: Conn, device_id: str, kind: str) -> tuple[list[str], set[str]]:
    """Ids of credentials minted here for a device/kind: live ones (oldest first), and revoked ones."""
    rows = await conn.fetch(
        "SELECT id::text, revoked_at IS NOT NULL AS revoked FROM credentials "
        "WHERE device_id = $1 AND kind = $2 ORDER BY created_at",
        device_id,
        kind,
    )
    return [r["id"] for r in rows if not r["revoked"]], {r["id"] for r in rows if r["revoked"]}


async def record_credential_events(conn: Conn, events: Sequence[Event], now: datetime) -> None:
    """Store CredentialIssued and CredentialRevoked decisions."""
    for e in events:
        if isinstance(e, A.CredentialRevoked):
            await conn.execute(
                "UPDATE credentials SET revoked_at = $2 WHERE id::text = $1 AND revoked_at IS NULL",
                e.credential_id,
                now,
            )
        elif isinstance(e, A.CredentialIssued):
            await conn.execute(
                "UPDATE credentials SET revoked_at = $2 WHERE id::text = $1 AND revoked_at IS NULL",
                e.replaces or "",
                now,
            )
            await conn.execute(
                "INSERT INTO credentials (id, device_id, workspace_id, kind, secret_sha256, replaces, "
                "created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                e.credential_id,
                e.device_id,
                e.workspace_id,
                e.kind,
                e.secret_sha256,
                e.replaces,
                now,
                e.by,
            )


# ---- audit -------------------------------------------------------------------------------------


async def insert_audit(conn: Conn, rows: Sequence[tuple[str, datetime, AuditEntry]]) -> None:
    """Audit lines keyed by event id (a replayed event is written once)."""
    await conn.executemany(
        "INSERT INTO audit_log (event_id, workspace_id, at, actor, action, subject, details) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) ON CONFLICT (event_id) DO NOTHING",
        [
            (eid, _scrub(a.workspace_id), at, _scrub(a.actor), a.action, _scrub(a.subject), _jsonb(a.details))
            for eid, at, a in rows
        ],
    )


async def audit_page(
    conn: Conn, workspace_id: str, *, limit: int, offset: int, action: str | None
) -> list[asyncpg.Record]:
    """A workspace's audit lines, newest first."""
    return await conn.fetch(
        "SELECT event_id::text, at, actor, action, subject, details::text AS details FROM audit_log "
        "WHERE workspace_id = $1 AND ($2::text IS NULL OR action = $2) "
        "ORDER BY at DESC, event_id DESC LIMIT $3 OFFSET $4",
        workspace_id,
        action,
        limit,
        offset,
    )


def _jsonb(details: dict[str, Any]) -> str:
    """JSON for a jsonb column, which refuses NUL characters (they are dropped)."""
    return json.dumps(_scrub(details))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_scrub(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value
