"""Bootstrap, operator sessions and passwords."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any

from libs.events.envelope import new_id
from libs.events.http import Operator
from libs.events.schemas import auth as A

from .. import domain as d
from .. import store as db
from .context import Auth, now_utc

# ---- bootstrap and sessions --------------------------------------------------------------------


async def bootstrap(
    auth: Auth, email: str, password: str, name: str | None, open_enrolment: bool
) -> dict[str, Any]:
    """The first workspace and its owner."""
    email, password = d.normalize_email(email), d.check_password(password)
    name = d.clean_name(name or "Default workspace", "workspace_name")
    async with auth.store.read() as conn:
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM operators)"):
            raise d.Conflict("ALREADY_BOOTSTRAPPED", "the platform already has operators; log in instead")
    password_hash = await auth.passwords.hash(password)
    ws, op, now = new_id(), new_id(), now_utc()
    async with auth.transaction() as tx:
        events = d.decide_bootstrap(
            operators_exist=await db.operators_exist(tx.conn),
            workspace_id=ws,
            operator_id=op,
            email=email,
            name=name,
            open_enrolment=open_enrolment,
        )
        await db.insert_workspace(tx.conn, d.Workspace(ws, name, open_enrolment), now)
        await db.insert_operator(tx.conn, op, email, password_hash, now)
        await db.insert_membership(tx.conn, op, ws, "owner", now)
        tx.emit(events)
    return {"workspace_id": ws, "operator_id": op, "email": email, "role": "owner"}


async def login(
    auth: Auth, email: str, password: str, workspace_id: str | None, client: str
) -> dict[str, Any]:
    """Check the password (rate limits first) and open an operator session."""
    email = email.strip().lower()
    lim = auth.limits
    await lim.enforce((lim.login_address, client), (lim.login_account, email))
    row = None
    with contextlib.suppress(d.Invalid):  # an impossible email is simply unknown
        async with auth.store.read() as conn:
            row = await db.operator_by_email(conn, d.normalize_email(email))
    if row is None:
        await auth.passwords.dummy_verify(password)
        raise d.Unauthorized("INVALID_CREDENTIALS", "wrong email or password")
    if not await auth.passwords.verify(row["password_hash"], password):
        raise d.Unauthorized("INVALID_CREDENTIALS", "wrong email or password")
    # A success clears the account's failures (the owner proved the password); the per-address
    # count stays, so one good account cannot be used to reset a password-spraying address.
    await lim.reset(lim.login_account, email)
    rehash = (
        await auth.passwords.hash(password) if auth.passwords.needs_rehash(row["password_hash"]) else None
    )
    return await _open_session(auth, row["id"], row["password_hash"], workspace_id, client, rehash)


async def _open_session(
    auth: Auth, operator_id: str, verified: str, requested: str | None, client: str, rehash: str | None
) -> dict[str, Any]:
    async with auth.transaction() as tx:
        # A password change committed since the hash was verified wins: its revocation time would
        # come before this session's iat and not cover it.
        if await db.password_hash_shared(tx.conn, operator_id) != verified:
            raise d.Unauthorized("INVALID_CREDENTIALS", "wrong email or password")
        memberships = await db.memberships_of(tx.conn, operator_id, share=True)
        roles = {m["workspace_id"]: m["role"] for m in memberships}
        ws, role = d.choose_workspace(roles, requested)
        now, ttl = time.time(), auth.settings.operator_session_ttl_s
        claims = d.operator_claims(
            operator_id=operator_id, workspace_id=ws, roles=roles, now=now, ttl_s=ttl, jti=new_id()
        )
        if rehash is not None:
            await db.set_password_hash(tx.conn, operator_id, rehash, None)
        expires = datetime.fromtimestamp(claims.exp, UTC)
        tx.emit(
            [
                A.OperatorLoggedIn(
                    operator_id=operator_id,
                    workspace_id=ws,
                    session_id=claims.jti,
                    expires_at=expires,
                    client=client,
                )
            ]
        )
    token = auth.identity.signer.issue(claims)
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": ttl,
        "workspace_id": ws,
        "role": role,
    }


async def logout(auth: Auth, op: Operator) -> None:
    """Revoke the caller's session everywhere."""
    expires = datetime.fromtimestamp(op.claims.exp, UTC)
    async with auth.transaction() as tx:
        tx.emit(
            [
                A.OperatorLoggedOut(
                    operator_id=op.operator_id,
                    workspace_id=op.workspace_id,
                    session_id=op.session_id,
                    expires_at=expires,
                )
            ]
        )


async def me(auth: Auth, op: Operator) -> dict[str, Any]:
    """Who the caller is, and every workspace they belong to."""
    async with auth.store.read() as conn:
        row = await db.operator_by_id(conn, op.operator_id)
        ms = await db.memberships_of(conn, op.operator_id)
    if row is None:
        raise d.Unauthorized("UNAUTHORIZED", "missing, invalid or expired token")
    return {
        "operator_id": op.operator_id,
        "email": row["email"],
        "workspace_id": op.workspace_id,
        "role": op.role,
        "workspaces": [{"workspace_id": m["workspace_id"], "name": m["name"], "role": m["role"]} for m in ms],
    }


async def change_password(auth: Auth, op: Operator, current: str, new: str) -> None:
    """Replace the caller's password; every older session of theirs stops working."""
    new = d.check_password(new, "new_password")
    if len(current) > d.MAX_PASSWORD:
        raise d.Invalid("WEAK_PASSWORD", "current_password is too long")
    await auth.limits.enforce((auth.limits.password, op.operator_id))
    async with auth.store.read() as conn:
        row = await db.operator_by_id(conn, op.operator_id)
    if row is None or not await auth.passwords.verify(row["password_hash"], current):
        raise d.Forbidden("INVALID_CREDENTIALS", "the current password is wrong")
    await auth.limits.reset(auth.limits.password, op.operator_id)
    new_hash = await auth.passwords.hash(new)
    async with auth.transaction() as tx:
        await db.operator_by_id(tx.conn, op.operator_id, lock=True)  # waits for sessions being opened
        now = now_utc()  # so the revocation time follows every session opened with the old password
        await db.set_password_hash(tx.conn, op.operator_id, new_hash, now)
        tx.emit(
            [
                A.PasswordChanged(
                    operator_id=op.operator_id, workspace_id=op.workspace_id, at=now, by=op.operator_id
                )
            ]
        )
