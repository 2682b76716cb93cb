"""Use-cases of the auth service: load -> decide (domain) -> store state and events in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, cast

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from libs.events.envelope import new_id
from libs.events.http import Identity, Operator
from libs.events.identity import Credential, new_secret, same_hash, secret_hash
from libs.events.ratelimit import RateLimiter
from libs.events.schemas import auth as A
from libs.events.service import ServiceHost

from . import domain as d
from . import store as db
from .config import Settings
from .store import Store, Tx


class Passwords:
    """argon2id hashing, run off the event loop (a hash costs tens of milliseconds)."""

    def __init__(self, settings: Settings) -> None:
        self._ph = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        """A new argon2id hash."""
        return await asyncio.to_thread(self._ph.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether the password matches the hash."""
        return await asyncio.to_thread(self._check, password_hash, password)

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self._ph.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than today's."""
        try:
            return self._ph.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    async def dummy_verify(self, password: str) -> None:
        """Spend what a real verify costs (unknown accounts answer in the same time)."""
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_hex(16))
        await self.verify(self._dummy, password)


def limit_key(value: str) -> str:
    """A short, fixed-size rate-limit key (no emails or raw client input in Redis key names)."""
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]


class Limits:
    """The service's rate limiters (Redis fixed windows under ``<prefix>auth:rl:``)."""

    def __init__(self, host: ServiceHost, s: Settings) -> None:
        assert host.redis is not None
        self._redis, p = host.redis, f"{s.stream_prefix}auth:rl:"
        rl = RateLimiter
        self.login_account = rl(
            host.redis, p + "login:acct:", limit=s.login_account_limit, window_s=s.login_account_window_s
        )
        self.login_address = rl(
            host.redis, p + "login:addr:", limit=s.login_address_limit, window_s=s.login_address_window_s
        )
        self.password = rl(
            host.redis, p + "pw:acct:", limit=s.login_account_limit, window_s=s.login_account_window_s
        )
        self.device = rl(
            host.redis, p + "dev:id:", limit=s.device_auth_limit, window_s=s.device_auth_window_s
        )
        self.device_address = rl(
            host.redis,
            p + "dev:addr:",
            limit=s.device_auth_address_limit,
            window_s=s.device_auth_address_window_s,
        )

    async def enforce(self, *checks: tuple[RateLimiter, str]) -> None:
        """Count one attempt against each limiter; RateLimited at the first one over its limit."""
        for limiter, key in checks:
            verdict = await limiter.hit(limit_key(key))
            if not verdict.allowed:
                raise d.RateLimited(verdict.retry_after)

    async def reset(self, limiter: RateLimiter, key: str) -> None:
        """Forget the attempts counted for a key."""
        await self._redis.delete(limiter.prefix + limit_key(key))


@dataclass
class Auth:
    """Everything the use-cases need, built lazily from a started host."""

    host: ServiceHost
    passwords: Passwords

    @property
    def settings(self) -> Settings:
        """The auth settings."""
        return cast(Settings, self.host.settings)

    @property
    def identity(self) -> Identity:
        """Token signing and the identity index."""
        assert self.host.identity is not None, "the auth service needs identity=True"
        return self.host.identity

    @cached_property
    def store(self) -> Store:
        """Transactions with the outbox."""
        assert self.host.pool is not None and self.host.redis is not None
        return Store(self.host.pool, self.host.redis, self.host.stream("events:auth"))

    @cached_property
    def limits(self) -> Limits:
        """Rate limiters."""
        return Limits(self.host, self.settings)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A store transaction; after it, this process's identity index reads the new events."""
        async with self.store.transaction() as tx:
            yield tx
        if tx.envelopes:
            await self.identity.feed.catch_up()


def now_utc() -> datetime:
    """The current time (the one clock read of a use-case)."""
    return datetime.now(UTC)


def is_uuid(value: str) -> bool:
    """Whether a path id can name a row (anything else is simply not found)."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def iso(value: datetime) -> str:
    """A timestamp as ISO 8601 UTC."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


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
    return await _open_session(auth, row["id"], workspace_id, client, rehash)


async def _open_session(
    auth: Auth, operator_id: str, requested: str | None, client: str, rehash: str | None
) -> dict[str, Any]:
    async with auth.transaction() as tx:
        roles = {m["workspace_id"]: m["role"] for m in await db.memberships_of(tx.conn, operator_id)}
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
    new_hash, now = await auth.passwords.hash(new), now_utc()
    async with auth.transaction() as tx:
        await db.set_password_hash(tx.conn, op.operator_id, new_hash, now)
        tx.emit(
            [
                A.PasswordChanged(
                    operator_id=op.operator_id, workspace_id=op.workspace_id, at=now, by=op.operator_id
                )
            ]
        )


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


# ---- device credentials ------------------------------------------------------------------------


async def _device_workspace(auth: Auth, op: Operator, device_id: str) -> str:
    """The device's workspace if it is the caller's; NotFound otherwise (read the streams on a miss)."""
    feed = auth.identity.feed
    if feed.index.devices.get(device_id) != op.workspace_id:
        await feed.catch_up()
    if feed.index.devices.get(device_id) != op.workspace_id:
        raise d.NotFound("NOT_FOUND", "device not found")
    return op.workspace_id


async def _live_credentials(auth: Auth, tx: Tx, device_id: str, kind: str) -> list[str]:
    """Live credential ids of a device and kind: the index's and those minted here, oldest first."""
    await db.lock_device_kind(tx.conn, device_id, kind)
    mine, revoked = await db.minted(tx.conn, device_id, kind)
    ix = auth.identity.feed.index
    known = [
        c.credential_id
        for c in ix.by_id.values()
        if c.device_id == device_id and c.kind == kind and c.credential_id not in ix.revoked_credentials
    ]
    return [c for c in dict.fromkeys([*known, *mine]) if c not in revoked]


async def issue_credential(auth: Auth, op: Operator, device_id: str, kind: str) -> dict[str, Any]:
    """Mint (or rotate) a device credential; the secret is returned once and stored as SHA-256."""
    op.require(*d.WRITERS)
    kind = d.check_kind(kind)
    ws = await _device_workspace(auth, op, device_id)
    secret = new_secret()
    async with auth.transaction() as tx:
        live = await _live_credentials(auth, tx, device_id, kind)
        events = d.decide_issue_credential(
            live,
            credential_id=new_id(),
            device_id=device_id,
            workspace_id=ws,
            kind=kind,
            secret_sha256=secret_hash(secret),
            by=op.operator_id,
        )
        await db.record_credential_events(tx.conn, events, now_utc())
        tx.emit(events)
    return {"device_id": device_id, "kind": kind, "secret": secret}


async def revoke_credentials(auth: Auth, op: Operator, device_id: str, kind: str) -> None:
    """Revoke every live credential of a kind, with the sessions they opened."""
    op.require(*d.WRITERS)
    kind = d.check_kind(kind)
    ws = await _device_workspace(auth, op, device_id)
    async with auth.transaction() as tx:
        live = await _live_credentials(auth, tx, device_id, kind)
        events = d.decide_revoke_credentials(
            live, device_id=device_id, workspace_id=ws, kind=kind, by=op.operator_id
        )
        await db.record_credential_events(tx.conn, events, now_utc())
        tx.emit(events)


# ---- device sessions (dialect S) -----------------------------------------------------------------


def _secret_credential(auth: Auth, device_id: str, secret: str) -> Credential | None:
    """The unrevoked ``secret`` credential of this device matching the secret (disabled or not)."""
    ix = auth.identity.feed.index
    digest = secret_hash(secret)
    cred = ix.by_hash.get(digest)
    if cred is None or not same_hash(cred.secret_sha256, digest):
        return None
    if cred.kind != "secret" or cred.device_id != device_id or cred.credential_id in ix.revoked_credentials:
        return None
    return None if device_id in ix.deleted_devices else cred


async def device_auth(auth: Auth, device_id: str, secret: str, client: str) -> dict[str, Any]:
    """Exchange a device secret for a session token (rate limits first; not a sign of presence)."""
    lim = auth.limits
    await lim.enforce((lim.device_address, client), (lim.device, device_id))
    cred = _secret_credential(auth, device_id, secret)
    if cred is None:
        await auth.identity.feed.catch_up()
        cred = _secret_credential(auth, device_id, secret)
    if cred is None:
        raise d.Unauthorized("INVALID_CREDENTIALS", "unknown device or wrong secret")
    if device_id in auth.identity.feed.index.disabled_devices:
        raise d.Forbidden("DEVICE_DISABLED", "this device is disabled")
    ttl = auth.settings.device_session_ttl_s
    claims = d.device_claims(
        device_id=device_id,
        workspace_id=cred.workspace_id,
        credential_id=cred.credential_id,
        now=time.time(),
        ttl_s=ttl,
        jti=new_id(),
    )
    session = {"token": auth.identity.signer.issue(claims), "expiresIn": ttl, "deviceId": device_id}
    return {**session, "data": dict(session)}


# ---- audit -------------------------------------------------------------------------------------


async def audit(
    auth: Auth, op: Operator, limit: int, offset: int, action: str | None
) -> list[dict[str, Any]]:
    """The current workspace's audit log, newest first."""
    if action is not None and not action.isprintable():
        raise d.Invalid("INVALID_ACTION", "action must be an event name such as auth.operator_added")
    async with auth.store.read() as conn:
        rows = await db.audit_page(conn, op.workspace_id, limit=limit, offset=offset, action=action)
    return [
        {
            "event_id": r["event_id"],
            "at": iso(r["at"]),
            "actor": r["actor"],
            "action": r["action"],
            "subject": r["subject"],
            "details": json.loads(r["details"]),
        }
        for r in rows
    ]
