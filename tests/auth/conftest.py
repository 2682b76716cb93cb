"""An auth service per test: its own Postgres schema and Redis key prefix, driven in-process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from libs.events.envelope import new_id
from libs.events.identity import new_secret, secret_hash
from libs.events.publisher import Publisher
from libs.events.schemas import Event
from libs.events.schemas.device import DeviceRegistered, DeviceUpdated, InitialCredential
from libs.events.service import ServiceHost
from services.auth.config import Settings
from services.auth.handlers import Passwords
from services.auth.main import build_spec

from ..conftest import REDIS_URL

PASSWORD = "correct horse battery"
FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}


class CountingPasswords(Passwords):
    """The real hasher, counting every hash and verify (to prove none happens)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.calls = 0

    async def hash(self, password: str) -> str:
        self.calls += 1
        return await super().hash(password)

    async def verify(self, password_hash: str, password: str) -> bool:
        self.calls += 1
        return await super().verify(password_hash, password)


@dataclass
class Env:
    """One running auth service and helpers to drive it."""

    host: ServiceHost
    client: httpx.AsyncClient
    passwords: CountingPasswords
    prefix: str
    r: aioredis.Redis
    schema: str
    secrets_seen: set[str] = field(default_factory=set)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _worker: asyncio.Task[None] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.host.pool is not None
        return self.host.pool

    def start_worker(self) -> None:
        """Run the relay and the audit consumers."""
        self._worker = asyncio.create_task(self.host.run_worker(self._stop))

    async def stop_worker(self) -> None:
        self._stop.set()
        if self._worker is not None:
            await self._worker

    def remember(self, *values: str) -> None:
        """Values that must never appear in a log line."""
        self.secrets_seen.update(v for v in values if v)

    async def bootstrap(self, email: str | None = None, **extra: Any) -> dict[str, Any]:
        email = email or f"owner-{uuid.uuid4().hex[:8]}@example.com"
        resp = await self.client.post(
            "/api/v1/auth/bootstrap", json={"email": email, "password": PASSWORD, **extra}
        )
        assert resp.status_code == 201, resp.text
        return resp.json()

    async def login(self, email: str, password: str = PASSWORD, **extra: Any) -> str:
        resp = await self.client.post(
            "/api/v1/auth/login", json={"email": email, "password": password, **extra}
        )
        assert resp.status_code == 200, resp.text
        token = resp.json()["access_token"]
        self.remember(token, password)
        return str(token)

    async def owner(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Bootstrap and log in: the owner's bootstrap body and auth headers."""
        body = await self.bootstrap()
        token = await self.login(body["email"])
        return body, bearer(token)

    async def member(self, headers: dict[str, str], role: str) -> tuple[dict[str, Any], dict[str, str]]:
        """Add a member with a role to the headers' workspace; their body and auth headers."""
        email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
        resp = await self.client.post(
            "/api/v1/operators", json={"email": email, "role": role, "password": PASSWORD}, headers=headers
        )
        assert resp.status_code == 201, resp.text
        return resp.json(), bearer(await self.login(email))

    async def other_workspace(self, owner_email: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """A second workspace (made by the same owner) with its own operator who is only there."""
        resp = await self.client.post("/api/v1/workspaces", json={"name": "Other"}, headers=headers)
        assert resp.status_code == 201, resp.text
        ws = resp.json()["workspace_id"]
        owner_there = bearer(await self.login(owner_email, workspace_id=ws))
        _, stranger = await self.member(owner_there, "owner")
        return ws, stranger

    async def publish_device(self, event: Event) -> None:
        await Publisher(self.r, producer="device").publish(self.prefix + "events:device", event)

    async def register_device(self, workspace_id: str) -> tuple[str, str]:
        """A device registered (by the device service) with a dialect-S secret: id and secret."""
        device_id, secret = f"dev-{uuid.uuid4().hex[:10]}", new_secret()
        cred = InitialCredential(credential_id=new_id(), kind="secret", secret_sha256=secret_hash(secret))
        await self.publish_device(
            DeviceRegistered(
                device_id=device_id,
                workspace_id=workspace_id,
                name="pi",
                device_type="raspberry_pi",
                credentials=[cred],
            )
        )
        self.remember(secret)
        return device_id, secret

    async def disable_device(self, device_id: str, workspace_id: str, disabled: bool = True) -> None:
        await self.publish_device(
            DeviceUpdated(device_id=device_id, workspace_id=workspace_id, changes={"disabled": disabled})
        )

    async def device_auth(self, device_id: str, secret: str) -> httpx.Response:
        return await self.client.post(
            "/api/v1/device/auth", json={"deviceId": device_id, "deviceSecret": secret}
        )

    async def stream(self, name: str = "events:auth") -> list[str]:
        """The event types in one of this test's streams."""
        entries = await self.r.xrange(self.prefix + name)
        return [fields[b"type"].decode() for _id, fields in entries]


def bearer(token: str, workspace_id: str | None = None) -> dict[str, str]:
    """Operator auth headers."""
    headers = {"Authorization": f"Bearer {token}"}
    if workspace_id:
        headers["X-Workspace-ID"] = workspace_id
    return headers


def settings_for(database_url: str, prefix: str, **overrides: Any) -> Settings:
    """Test settings: cheap argon2, generous per-address limits unless a test says otherwise."""
    values: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "database_url": database_url,
        "stream_prefix": prefix,
        "signing_key": "x" * 40,
        "relay_poll_s": 0.1,
        "login_address_limit": 1000,
        **FAST_ARGON2,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings a test module wants changed (override this fixture)."""
    return {}


@pytest.fixture
async def env(
    database_url: str, prefix: str, r: aioredis.Redis, overrides: dict[str, Any]
) -> AsyncIterator[Env]:
    """A started auth service with its own schema; stopped and dropped afterwards."""
    schema = f"auth_{uuid.uuid4().hex[:10]}"
    counting: list[CountingPasswords] = []

    def passwords(settings: Settings) -> CountingPasswords:
        counting.append(CountingPasswords(settings))
        return counting[-1]

    host = ServiceHost(build_spec(schema, passwords), settings_for(database_url, prefix, **overrides))
    await host.start()
    app = host.build_app(manage_lifespan=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as client:
        e = Env(host, client, counting[0], prefix, r, schema)
        try:
            yield e
        finally:
            await e.stop_worker()
            # The identity feed only sees the stop flag after its blocking read (500 ms): cancel it.
            for task in host._background:
                task.cancel()
            await host.stop()
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
