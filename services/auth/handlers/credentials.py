"""Device credentials and dialect S device sessions."""

from __future__ import annotations

import json
import time
from typing import Any

from libs.events.envelope import new_id
from libs.events.http import Operator
from libs.events.identity import Credential, new_secret, secret_hash

from .. import domain as d
from .. import store as db
from ..store import Tx
from .context import Auth, iso, now_utc

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
    known = [c.credential_id for c in auth.identity.feed.index.live(device_id, kind)]
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
    return auth.identity.feed.index.match(secret, "secret", device_id)


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
