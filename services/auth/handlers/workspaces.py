"""Workspaces and their operators."""

from __future__ import annotations

import secrets
from typing import Any, cast

from libs.events.envelope import new_id
from libs.events.http import Operator
from libs.events.schemas import auth as A

from .. import domain as d
from .. import store as db
from .context import Auth, is_uuid, iso, now_utc

# ---- workspaces --------------------------------------------------------------------------------


def _workspace_body(m: Any) -> dict[str, Any]:
    return {
        "workspace_id": m["workspace_id"],
        "name": m["name"],
        "open_enrolment": m["open_enrolment"],
        "role": m["role"],
        "created_at": iso(m["created_at"]),
    }


async def list_workspaces(auth: Auth, op: Operator) -> list[dict[str, Any]]:
    """The caller's workspaces."""
    async with auth.store.read() as conn:
        return [_workspace_body(m) for m in await db.memberships_of(conn, op.operator_id)]


async def _membership(conn: Any, op: Operator, workspace_id: str) -> Any:
    """The caller's membership row in a workspace; NotFound if they have none."""
    if is_uuid(workspace_id):
        for m in await db.memberships_of(conn, op.operator_id):
            if m["workspace_id"] == workspace_id:
                return m
    raise d.NotFound("NOT_FOUND", "workspace not found")


async def get_workspace(auth: Auth, op: Operator, workspace_id: str) -> dict[str, Any]:
    """One of the caller's workspaces."""
    async with auth.store.read() as conn:
        return _workspace_body(await _membership(conn, op, workspace_id))


async def create_workspace(auth: Auth, op: Operator, name: str, open_enrolment: bool) -> dict[str, Any]:
    """A new workspace owned by the caller (their current token does not carry it yet)."""
    op.require(*d.MANAGERS)
    name, ws, now = d.clean_name(name), new_id(), now_utc()
    async with auth.transaction() as tx:
        row = await db.operator_by_id(tx.conn, op.operator_id)
        if row is None:
            raise d.Unauthorized("UNAUTHORIZED", "missing, invalid or expired token")
        await db.insert_workspace(tx.conn, d.Workspace(ws, name, open_enrolment), now)
        await db.insert_membership(tx.conn, op.operator_id, ws, "owner", now)
        tx.emit(
            d.decide_create_workspace(
                workspace_id=ws,
                name=name,
                open_enrolment=open_enrolment,
                operator_id=op.operator_id,
                email=row["email"],
                by=op.operator_id,
            )
        )
    return {
        "workspace_id": ws,
        "name": name,
        "open_enrolment": open_enrolment,
        "role": "owner",
        "created_at": iso(now),
        "note": "log in again to act in this workspace (the current token does not include it)",
    }


async def update_workspace(
    auth: Auth, op: Operator, workspace_id: str, name: str | None, open_enrolment: bool | None
) -> dict[str, Any]:
    """Rename a workspace or switch open enrolment (its owners only)."""
    name = d.clean_name(name) if name is not None else None
    async with auth.transaction() as tx:
        member = await _membership(tx.conn, op, workspace_id)
        if member["role"] not in d.MANAGERS:
            raise d.Forbidden("FORBIDDEN", "needs role owner")
        current = await db.workspace(tx.conn, workspace_id, lock=True)
        assert current is not None
        events = d.decide_update_workspace(
            current, name=name, open_enrolment=open_enrolment, by=op.operator_id
        )
        for e in events:
            await db.update_workspace(tx.conn, workspace_id, dict(cast(A.WorkspaceUpdated, e).changes))
        tx.emit(events)
    async with auth.store.read() as conn:
        return _workspace_body(await _membership(conn, op, workspace_id))


# ---- operators (members of the current workspace) ------------------------------------------------


def _member_body(m: Any, workspace_id: str) -> dict[str, Any]:
    return {
        "operator_id": m["operator_id"],
        "email": m["email"],
        "role": m["role"],
        "workspace_id": workspace_id,
        "joined_at": iso(m["joined_at"]),
    }


async def list_members(auth: Auth, op: Operator) -> list[dict[str, Any]]:
    """The operators of the caller's current workspace."""
    async with auth.store.read() as conn:
        return [_member_body(m, op.workspace_id) for m in await db.member_rows(conn, op.workspace_id)]


async def _member(conn: Any, workspace_id: str, operator_id: str) -> dict[str, Any]:
    for m in await db.member_rows(conn, workspace_id):
        if m["operator_id"] == operator_id:
            return _member_body(m, workspace_id)
    raise d.NotFound("NOT_FOUND", "operator not found")


async def add_member(auth: Auth, op: Operator, email: str, role: str, password: str | None) -> dict[str, Any]:
    """Add an operator to the workspace by email, creating the account if needed."""
    op.require(*d.MANAGERS)
    email, role = d.normalize_email(email), d.check_role(role)
    temporary = None if password is not None else secrets.token_urlsafe(18)
    password = d.check_password(password if password is not None else cast(str, temporary))
    async with auth.store.read() as conn:
        existing = await db.operator_by_email(conn, email)
    password_hash = await auth.passwords.hash(password) if existing is None else ""
    now = now_utc()
    async with auth.transaction() as tx:
        operator_id, created = new_id(), existing is None
        if not created or not await db.insert_operator(tx.conn, operator_id, email, password_hash, now):
            row = await db.operator_by_email(tx.conn, email)
            assert row is not None
            operator_id, created = row["id"], False
        members = await db.members(tx.conn, op.workspace_id, lock=True)
        tx.emit(
            d.decide_add_member(
                members,
                operator_id=operator_id,
                workspace_id=op.workspace_id,
                email=email,
                role=role,
                by=op.operator_id,
            )
        )
        await db.insert_membership(tx.conn, operator_id, op.workspace_id, role, now)
    body = {
        "operator_id": operator_id,
        "email": email,
        "role": role,
        "workspace_id": op.workspace_id,
        "created": created,
    }
    if created and temporary is not None:
        body["temporary_password"] = temporary
    return body


async def change_role(auth: Auth, op: Operator, operator_id: str, role: str) -> dict[str, Any]:
    """Change a member's role (their sessions restart)."""
    op.require(*d.MANAGERS)
    role = d.check_role(role)
    if not is_uuid(operator_id):
        raise d.NotFound("NOT_FOUND", "operator not found")
    async with auth.transaction() as tx:
        members = await db.members(tx.conn, op.workspace_id, lock=True)
        events = d.decide_change_role(
            members,
            operator_id=operator_id,
            workspace_id=op.workspace_id,
            role=role,
            by=op.operator_id,
            now=now_utc(),
        )
        if events:
            await db.set_role(tx.conn, operator_id, op.workspace_id, role)
        tx.emit(events)
        return await _member(tx.conn, op.workspace_id, operator_id)


async def remove_member(auth: Auth, op: Operator, operator_id: str) -> None:
    """Remove a member from the workspace (the last owner stays)."""
    op.require(*d.MANAGERS)
    if not is_uuid(operator_id):
        raise d.NotFound("NOT_FOUND", "operator not found")
    async with auth.transaction() as tx:
        members = await db.members(tx.conn, op.workspace_id, lock=True)
        tx.emit(
            d.decide_remove_member(
                members,
                operator_id=operator_id,
                workspace_id=op.workspace_id,
                by=op.operator_id,
                now=now_utc(),
            )
        )
        await db.delete_membership(tx.conn, operator_id, op.workspace_id)
