"""Enrolment tokens: operators create, list and revoke them; agents enrol with them.

A token is 256 random bits, shown once, kept and announced only as SHA-256. An agent enrols with
the token and an id of its own (``agent_id``, kept as SHA-256 too): the first time the token makes
it a device (one use); the same agent again, shortly after and while its secret was not revoked,
gets the same device with a fresh secret (no use).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from libs.events.identity import new_secret, same_hash, secret_hash
from libs.events.outbox import OutboxTx

from . import enrolment_store as db
from . import store
from .domain import (
    ENROLMENT,
    AgentEnrol,
    DomainError,
    EnrolledAgent,
    EnrolmentToken,
    NewEnrolmentToken,
    check_site,
    decide_create_token,
    decide_enrol,
    decide_register,
    decide_revoke_token,
    decide_rotate,
    decide_token_used,
    new_token,
)
from .handlers import NewDeviceSpec, Registry, build_device, mint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Enrolled:
    """What an enrolling agent is told once: its device, workspace and secret."""

    device_id: str
    workspace_id: str
    device_secret: str
    new: bool


def token_not_found(token_id: str) -> DomainError:
    """A missing token, or another workspace's."""
    return DomainError("not_found", "ENROLMENT_TOKEN_NOT_FOUND", f"enrolment token {token_id} not found")


class Enrolment:
    """Enrolment use-cases over the registry's pool and outbox."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def create(self, workspace_id: str, by: str, cmd: NewEnrolmentToken) -> tuple[EnrolmentToken, str]:
        """A new token; returns it and its secret (shown once)."""
        secret = new_secret()
        token = new_token(
            cmd, token_id=str(uuid.uuid4()), workspace_id=workspace_id, by=by, now=datetime.now(UTC)
        )
        async with self.registry.outbox.transaction() as tx:
            if token.site_id is not None:
                check_site(token.site_id, await store.get_site(tx.conn, token.site_id), workspace_id)
            events = decide_create_token(token, secret_sha256=secret_hash(secret))
            await db.insert_token(tx.conn, token, secret_hash(secret))
            tx.emit(events)
        log.info("enrolment token %s created in workspace %s by %s", token.token_id, workspace_id, by)
        return token, secret

    async def tokens(self, workspace_id: str) -> list[EnrolmentToken]:
        """The workspace's tokens, newest first (never their secrets)."""
        async with self.registry.pool.acquire() as conn:
            return await db.list_tokens(conn, workspace_id)

    async def revoke(self, workspace_id: str, token_id: str, by: str) -> None:
        """Revoke a token of the workspace (again: nothing happens); another workspace's is not found."""
        async with self.registry.outbox.transaction() as tx:
            token = await db.get_token(tx.conn, workspace_id, token_id, lock=True)
            if token is None:
                raise token_not_found(token_id)
            revoked, events = decide_revoke_token(token, by=by, now=datetime.now(UTC))
            if events:
                await db.save_token(tx.conn, revoked)
            tx.emit(events)
        log.info("enrolment token %s revoked in workspace %s by %s", token_id, workspace_id, by)

    async def enrol(self, cmd: AgentEnrol) -> Enrolled:
        """Register the agent's device (one use of the token), or rotate the secret of the device it
        already has from this token (a retry after a lost answer)."""
        digest, agent = secret_hash(cmd.enrolment_token), secret_hash(cmd.agent_id)
        identity = self.registry.host.identity
        if identity is not None:  # read revocations up to now before any row is locked (a Redis read)
            await identity.feed.catch_up()
        async with self.registry.outbox.transaction() as tx:
            found = await db.token_by_hash(tx.conn, digest)
            if found is not None and not same_hash(found[1], digest):
                found = None  # defence in depth behind the index's equality match (constant time)
            token = found[0] if found is not None else None
            row = await db.enrolled_device(tx.conn, token.token_id, agent) if token is not None else None
            mine = self._enrolled(row)
            now = datetime.now(UTC)
            if decide_enrol(token, enrolled=mine, now=now) == "retry":
                assert token is not None and mine is not None
                return await self._rotate(tx, token, agent, mine, now)
            assert token is not None
            return await self._register(tx, token, agent, cmd, now)

    def _enrolled(self, row: tuple[str, str, datetime] | None) -> EnrolledAgent | None:
        if row is None:
            return None
        identity = self.registry.host.identity
        revoked = identity is not None and row[1] in identity.feed.index.revoked_credentials
        return EnrolledAgent(row[0], row[1], row[2], credential_revoked=revoked)

    async def _register(
        self, tx: OutboxTx, token: EnrolmentToken, agent: str, cmd: AgentEnrol, now: datetime
    ) -> Enrolled:
        device_id = str(uuid.uuid4())
        device_type = cmd.device_type or token.device_type
        spec = NewDeviceSpec(
            name=cmd.name or f"{device_type}-{device_id[:8]}",
            device_type=device_type,
            site_id=token.site_id,
            groups=token.groups,
            labels=token.labels,
        )
        device = build_device(spec, device_id, token.workspace_id, now)
        creds, secrets = mint(("secret",))
        events = decide_register(device, taken=False, credentials=creds, by=ENROLMENT)
        used, use_events = decide_token_used(token, device_id=device.device_id, agent_sha256=agent)
        if not await store.insert_device(tx.conn, device):  # a fresh UUID taken: never in practice
            decide_register(device, taken=True, credentials=creds, by=ENROLMENT)  # raises the conflict
        await db.save_token(tx.conn, used)
        await db.remember_agent(tx.conn, token.token_id, agent, device.device_id, creds[0].credential_id, now)
        tx.emit([*events, *use_events])
        log.info("device %s enrolled with token %s", device.device_id, token.token_id)
        return Enrolled(device.device_id, device.workspace_id, secrets["secret"], new=True)

    async def _rotate(
        self, tx: OutboxTx, token: EnrolmentToken, agent: str, mine: EnrolledAgent, now: datetime
    ) -> Enrolled:
        device_id, last_credential = mine.device_id, mine.credential_id
        creds, secrets = mint(("secret",))
        identity = self.registry.host.identity
        live: list[str] = []
        if identity is not None:  # secrets minted since (auth's rotations) are replaced too
            live = [c.credential_id for c in identity.feed.index.live(device_id, "secret")]
        events = decide_rotate(
            device_id, token.workspace_id, creds[0], replaces=[last_credential, *live], by=ENROLMENT
        )
        await db.remember_agent(tx.conn, token.token_id, agent, device_id, creds[0].credential_id, now)
        tx.emit(events)
        log.info("device %s enrolled again with token %s: secret rotated", device_id, token.token_id)
        return Enrolled(device_id, token.workspace_id, secrets["secret"], new=False)
