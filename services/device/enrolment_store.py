"""SQL of enrolment tokens and the agents they enrolled (asyncpg); tokens only as SHA-256."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from libs.events.pg import Conn

from .domain import EnrolmentToken

_COLUMNS = (
    "token_id, workspace_id, name, site_id, device_type, groups, labels, max_uses, uses, expires_at, "
    "created_at, created_by, revoked_at"
)


def _token(row: Mapping[str, Any]) -> EnrolmentToken:
    values = dict(row)
    values["groups"] = list(values["groups"])
    values["labels"] = msgspec.json.decode(values["labels"])
    return EnrolmentToken(**values)


async def insert_token(conn: Conn, t: EnrolmentToken, secret_sha256: str) -> None:
    """Store a new token under its hash."""
    await conn.execute(
        f"INSERT INTO enrolment_tokens ({_COLUMNS}, secret_sha256) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14)",
        t.token_id,
        t.workspace_id,
        t.name,
        t.site_id,
        t.device_type,
        t.groups,
        msgspec.json.encode(t.labels).decode(),
        t.max_uses,
        t.uses,
        t.expires_at,
        t.created_at,
        t.created_by,
        t.revoked_at,
        secret_sha256,
    )


async def get_token(
    conn: Conn, workspace_id: str, token_id: str, *, lock: bool = False
) -> EnrolmentToken | None:
    """A token of the workspace (locked for update when asked)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM enrolment_tokens WHERE token_id = $1 AND workspace_id = $2"
        + (" FOR UPDATE" if lock else ""),
        token_id,
        workspace_id,
    )
    return _token(row) if row else None


async def token_by_hash(conn: Conn, secret_sha256: str) -> tuple[EnrolmentToken, str] | None:
    """The token with this hash, locked (uses are counted under the lock), and its stored hash."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, secret_sha256 FROM enrolment_tokens WHERE secret_sha256 = $1 FOR UPDATE",
        secret_sha256,
    )
    if row is None:
        return None
    values = dict(row)
    stored = values.pop("secret_sha256")
    return _token(values), stored


async def list_tokens(conn: Conn, workspace_id: str) -> list[EnrolmentToken]:
    """The workspace's tokens, newest first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM enrolment_tokens WHERE workspace_id = $1 "
        "ORDER BY created_at DESC, token_id DESC",
        workspace_id,
    )
    return [_token(r) for r in rows]


async def save_token(conn: Conn, t: EnrolmentToken) -> None:
    """Store a token's uses and revocation."""
    await conn.execute(
        "UPDATE enrolment_tokens SET uses = $2, revoked_at = $3 WHERE token_id = $1",
        t.token_id,
        t.uses,
        t.revoked_at,
    )


async def enrolled_device(conn: Conn, token_id: str, agent_sha256: str) -> tuple[str, str, datetime] | None:
    """The live device of an agent of a token, its last registry-minted secret credential, and
    when the agent first enrolled (for that device)."""
    row = await conn.fetchrow(
        "SELECT a.device_id, a.credential_id, a.first_enrolled_at FROM enrolment_agents a "
        "JOIN devices d USING (device_id) "
        "WHERE a.token_id = $1 AND a.agent_sha256 = $2 AND d.deleted_at IS NULL",
        token_id,
        agent_sha256,
    )
    return (row[0], row[1], row[2]) if row else None


async def remember_agent(
    conn: Conn, token_id: str, agent_sha256: str, device_id: str, credential_id: str, now: datetime
) -> None:
    """Record (or move, after its device was deleted) an agent's device and credential; the first
    enrolment time is kept while the device stays the same."""
    await conn.execute(
        "INSERT INTO enrolment_agents "
        "(token_id, agent_sha256, device_id, credential_id, enrolled_at, first_enrolled_at) "
        "VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (token_id, agent_sha256) DO UPDATE SET "
        "first_enrolled_at = CASE WHEN enrolment_agents.device_id = EXCLUDED.device_id "
        "THEN enrolment_agents.first_enrolled_at ELSE EXCLUDED.first_enrolled_at END, "
        "device_id = EXCLUDED.device_id, credential_id = EXCLUDED.credential_id, "
        "enrolled_at = EXCLUDED.enrolled_at",
        token_id,
        agent_sha256,
        device_id,
        credential_id,
        now,
    )
