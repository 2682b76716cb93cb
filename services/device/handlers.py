"""Use-cases of the registry: load -> decide -> store state and outbox in one transaction -> publish."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from libs.events.identity import new_secret, secret_hash
from libs.events.outbox import Outbox
from libs.events.schemas.device import InitialCredential, PresenceTimingSet
from libs.events.service import ServiceHost

from . import history, presence_store, store
from .domain import (
    Device,
    DomainError,
    Site,
    check_site,
    decide_create_site,
    decide_delete,
    decide_register,
    decide_update,
)

log = logging.getLogger(__name__)
STREAM = "events:device"


@dataclass(frozen=True)
class NewDeviceSpec:
    """Everything a registration needs besides who and where."""

    name: str
    device_type: str
    device_id: str | None = None
    site_id: str | None = None
    groups: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    ip_address: str | None = None
    kinds: Sequence[str] = ("secret",)


def not_found(device_id: str) -> DomainError:
    """The one answer for a missing, deleted or other workspace's device."""
    return DomainError("not_found", "DEVICE_NOT_FOUND", f"device {device_id} not found")


def mint(kinds: Sequence[str]) -> tuple[list[InitialCredential], dict[str, str]]:
    """Fresh credentials: what the event carries (hashes) and what the caller sees once."""
    creds, secrets = [], {}
    for kind in dict.fromkeys(kinds):
        secret = new_secret()
        creds.append(
            InitialCredential(credential_id=str(uuid.uuid4()), kind=kind, secret_sha256=secret_hash(secret))
        )
        secrets[kind] = secret
    return creds, secrets


def build_device(spec: NewDeviceSpec, device_id: str, workspace_id: str, now: datetime) -> Device:
    """A new device of the workspace as ``spec`` describes it."""
    return Device(
        device_id=device_id,
        workspace_id=workspace_id,
        name=spec.name,
        device_type=spec.device_type,
        site_id=spec.site_id,
        groups=list(spec.groups),
        labels=dict(spec.labels),
        metadata=dict(spec.metadata),
        disabled=False,
        created_at=now,
        updated_at=now,
        ip_address=spec.ip_address,
    )


class Registry:
    """The registry's use-cases over the host's pool and Redis (bound lazily: pools open at start)."""

    def __init__(self, host: ServiceHost) -> None:
        self.host = host
        self._outbox: Outbox | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        """The service's Postgres pool."""
        assert self.host.pool is not None, "the host is not started"
        return self.host.pool

    @property
    def stream(self) -> str:
        """The prefixed ``events:device`` stream."""
        return self.host.stream(STREAM)

    @property
    def outbox(self) -> Outbox:
        """State and events in one transaction, published at once after the commit."""
        if self._outbox is None:
            assert self.host.redis is not None
            self._outbox = Outbox(self.pool, self.host.redis, producer="device", stream=self.stream)
        return self._outbox

    async def register(
        self, workspace_id: str, by: str, spec: NewDeviceSpec
    ) -> tuple[Device, dict[str, str]]:
        """Register a device with fresh credentials; returns it and the secrets (shown once)."""
        device = build_device(spec, spec.device_id or str(uuid.uuid4()), workspace_id, datetime.now(UTC))
        creds, secrets = mint(spec.kinds)
        async with self.outbox.transaction() as tx:
            conn = tx.conn
            if spec.site_id is not None:
                check_site(spec.site_id, await store.get_site(conn, spec.site_id), workspace_id)
            taken = await store.device_id_taken(conn, device.device_id)
            events = decide_register(device, taken=taken, credentials=creds, by=by)
            if not await store.insert_device(conn, device):  # a concurrent registration won
                decide_register(device, taken=True, credentials=creds, by=by)  # raises the conflict
            tx.emit(events)
        log.info("device %s registered in workspace %s by %s", device.device_id, workspace_id, by)
        return device, secrets

    async def register_many(
        self, workspace_id: str, by: str, specs: Sequence[NewDeviceSpec]
    ) -> list[tuple[Device, dict[str, str]]]:
        """Register devices in one transaction (server ids), one ``device.registered.v1`` each."""
        now = datetime.now(UTC)
        # a microsecond apart, so listings (newest first) keep the order the devices were asked in
        made = [
            (
                build_device(spec, str(uuid.uuid4()), workspace_id, now + timedelta(microseconds=i)),
                mint(spec.kinds),
            )
            for i, spec in enumerate(specs)
        ]
        async with self.outbox.transaction() as tx:
            checked: set[str] = set()
            for spec in specs:
                if spec.site_id is not None and spec.site_id not in checked:
                    check_site(spec.site_id, await store.get_site(tx.conn, spec.site_id), workspace_id)
                    checked.add(spec.site_id)
            events = [
                e
                for device, (creds, _s) in made
                for e in decide_register(device, taken=False, credentials=creds, by=by)
            ]
            if await store.insert_devices(tx.conn, [d for d, _c in made]) != len(made):
                raise DomainError("conflict", "DEVICE_EXISTS", "a generated device id was taken; retry")
            tx.emit(events)
        log.info("%d devices registered in workspace %s by %s", len(made), workspace_id, by)
        return [(device, secrets) for device, (_c, secrets) in made]

    async def update(self, workspace_id: str, device_id: str, fields: dict[str, Any], by: str) -> Device:
        """Change registry fields of a device (only real changes become an event)."""
        async with self.outbox.transaction() as tx:
            conn = tx.conn
            device = await store.get_device(conn, workspace_id, device_id, lock=True)
            if device is None:
                raise not_found(device_id)
            site_id = fields.get("site_id")
            if site_id is not None:
                check_site(site_id, await store.get_site(conn, site_id), workspace_id)
            updated, events = decide_update(device, fields, by=by, now=datetime.now(UTC))
            if events:
                await store.update_device(conn, updated)
            tx.emit(events)
        return updated

    async def delete(self, workspace_id: str, device_id: str, by: str) -> None:
        """Remove a device; its id stays reserved."""
        async with self.outbox.transaction() as tx:
            device = await store.get_device(tx.conn, workspace_id, device_id, lock=True)
            if device is None:
                raise not_found(device_id)
            events = decide_delete(device, by=by)
            await store.delete_device(tx.conn, device_id, datetime.now(UTC))
            tx.emit(events)
        log.info("device %s deleted from workspace %s by %s", device_id, workspace_id, by)

    async def device(self, workspace_id: str, device_id: str) -> Device:
        """A live device of the workspace, else DomainError(not_found)."""
        async with self.pool.acquire() as conn:
            device = await store.get_device(conn, workspace_id, device_id)
        if device is None:
            raise not_found(device_id)
        return device

    async def devices(
        self, workspace_id: str, f: store.DeviceFilter, *, limit: int, offset: int
    ) -> tuple[list[Device], int]:
        """A page of the workspace's devices, newest first, and the total."""
        async with self.pool.acquire() as conn:
            return await store.list_devices(conn, workspace_id, f, limit=limit, offset=offset)

    async def create_site(self, site: Site, by: str) -> Site:
        """Create a site (ids are global: another workspace's id is a conflict too)."""
        async with self.outbox.transaction() as tx:
            taken = await store.get_site(tx.conn, site.site_id) is not None
            events = decide_create_site(site, taken=taken, by=by)
            if not await store.insert_site(tx.conn, site):  # a concurrent creation won
                decide_create_site(site, taken=True, by=by)  # raises the conflict
            tx.emit(events)
        return site

    async def site(self, workspace_id: str | None, site_id: str) -> Site:
        """A site of the workspace (or of any workspace when None), else not_found."""
        async with self.pool.acquire() as conn:
            site = await store.get_site(conn, site_id)
        if site is None or (workspace_id is not None and site.workspace_id != workspace_id):
            raise DomainError("not_found", "SITE_NOT_FOUND", f"site {site_id} not found")
        return site

    async def sites(self, workspace_id: str) -> list[Site]:
        """The workspace's sites, newest first."""
        async with self.pool.acquire() as conn:
            return await store.list_sites(conn, workspace_id)

    async def presence_timing(self, workspace_id: str) -> tuple[float | None, float | None]:
        """The workspace's heartbeat interval and timeout (None: the service default)."""
        async with self.pool.acquire() as conn:
            return await presence_store.workspace_timing(conn, workspace_id)

    async def set_presence_timing(
        self, workspace_id: str, interval_s: float | None, timeout_s: float | None, by: str
    ) -> None:
        """Set the workspace's heartbeat timing; it applies from each device's next heartbeat."""
        async with self.outbox.transaction() as tx:
            if await presence_store.workspace_timing(tx.conn, workspace_id) == (interval_s, timeout_s):
                return  # nothing changes: no event
            await presence_store.set_workspace_timing(tx.conn, workspace_id, interval_s, timeout_s)
            tx.emit(
                [
                    PresenceTimingSet(
                        workspace_id=workspace_id,
                        heartbeat_interval_s=interval_s,
                        heartbeat_timeout_s=timeout_s,
                        by=by,
                    )
                ]
            )
        log.info("presence timing of workspace %s set by %s", workspace_id, by)

    async def history(
        self, workspace_id: str, device_id: str, *, limit: int, before: datetime | None
    ) -> list[dict[str, Any]]:
        """A device's presence transitions, newest first; not_found for another workspace's device."""
        async with self.pool.acquire() as conn:
            if await store.get_device(conn, workspace_id, device_id) is None:
                raise not_found(device_id)
            return await history.timeline(conn, workspace_id, device_id, limit=limit, before=before)
