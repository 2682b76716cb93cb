"""Fixtures of the commands tests: a started host, an HTTP client, operators and registered devices."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from libs.events.envelope import Envelope, decode_entry, decode_event
from libs.events.identity import Claims, secret_hash
from libs.events.publisher import Publisher
from libs.events.schemas import REGISTRY, Event
from libs.events.schemas.device import DeviceRegistered, InitialCredential
from libs.events.service import ServiceHost
from services.commands.config import Settings
from services.commands.main import SPEC

from ..conftest import REDIS_URL


def uid(stem: str = "") -> str:
    """A short id unique to this test (the run shares one ``commands`` schema)."""
    return f"{stem}{uuid.uuid4().hex[:10]}"


async def until(check: Any, timeout: float = 8.0, step: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if result := await check():
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(step)


@dataclass
class Device:
    """A registered device: its workspace, a session token (S) and an API key (K)."""

    device_id: str
    workspace_id: str
    token: str
    api_key: str

    @property
    def s(self) -> dict[str, str]:
        """Dialect S headers."""
        return {"X-Device-Session": self.token}

    @property
    def k(self) -> dict[str, str]:
        """Dialect K headers."""
        return {"X-Device-ID": self.device_id, "X-API-Key": self.api_key}


@dataclass
class World:
    """A started commands service, its client, and helpers to act as operators and devices."""

    host: ServiceHost
    client: httpx.AsyncClient
    prefix: str

    def auth(self, ws: str, *, role: str = "owner", w: bool = False) -> dict[str, str]:
        """Headers of an operator of ``ws`` (with ``X-Workspace-ID`` for dialect W)."""
        assert self.host.identity is not None
        now = time.time()
        claims = Claims(
            typ="operator",
            sub=uid("op-"),
            ws=ws,
            iat=now,
            exp=int(now) + 3600,
            jti=uid("jti-"),
            roles={ws: role},
        )
        headers = {"Authorization": f"Bearer {self.host.identity.signer.issue(claims)}"}
        if w:
            headers["X-Workspace-ID"] = ws
        return headers

    async def device(self, ws: str | None = None) -> Device:
        """Register a device as the registry would announce it, with an API key and a session."""
        ws = ws or uid("ws-")
        device_id, key = uid("dev-"), uid("key-") + uuid.uuid4().hex
        assert self.host.redis is not None and self.host.identity is not None
        cred = InitialCredential(credential_id=uid("cred-"), kind="api_key", secret_sha256=secret_hash(key))
        event = DeviceRegistered(
            device_id=device_id, workspace_id=ws, name="d", device_type="virtual", credentials=[cred]
        )
        await Publisher(self.host.redis, producer="device").publish(self.prefix + "events:device", event)
        now = time.time()
        session = Claims(
            typ="device",
            sub=device_id,
            ws=ws,
            cid=uid("cred-"),
            iat=now,
            exp=int(now) + 3600,
            jti=uid("jti-"),
        )
        return Device(device_id, ws, self.host.identity.signer.issue(session), key)

    async def queue(self, dev: Device, command_type: str = "ping", **body: Any) -> dict[str, Any]:
        """Queue a command for ``dev`` as its workspace's owner."""
        resp = await self.client.post(
            f"/api/v1/devices/{dev.device_id}/commands",
            json={"command_type": command_type, **body},
            headers=self.auth(dev.workspace_id),
        )
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    async def publish(self, stream: str, *events: Event) -> None:
        """Publish events as another service would."""
        assert self.host.redis is not None
        publisher = Publisher(self.host.redis, producer=stream.split(":")[1])
        for e in events:
            await publisher.publish(self.prefix + stream, e)

    async def events(self, types: tuple[type[Event], ...] = ()) -> list[Event]:
        """Every event on ``events:commands`` so far (of these classes, if given)."""
        return [e for _env, e in await self.envelopes() if not types or isinstance(e, types)]

    async def envelopes(self) -> list[tuple[Envelope, Event]]:
        """Every envelope and event on ``events:commands`` so far."""
        assert self.host.redis is not None
        out = []
        for _id, fields in await self.host.redis.xrange(self.prefix + "events:commands"):
            env = decode_entry(fields)
            out.append((env, decode_event(env, REGISTRY)))
        return out

    async def row(self, command_id: str) -> dict[str, Any]:
        """A command's row."""
        assert self.host.pool is not None
        row = await self.host.pool.fetchrow("SELECT * FROM commands WHERE command_id = $1", command_id)
        assert row is not None
        return dict(row)

    async def count(self, sql: str, *args: Any) -> int:
        """A count from the service's schema."""
        assert self.host.pool is not None
        return int(await self.host.pool.fetchval(sql, *args))


@contextlib.asynccontextmanager
async def started(database_url: str, prefix: str, **settings: Any) -> AsyncIterator[World]:
    """A started commands host on this database and prefix, and a client of its app."""
    config = Settings(
        redis_url=REDIS_URL,
        database_url=database_url,
        stream_prefix=prefix,
        signing_key="x" * 40,
        **{"device_rate_per_s": 0, **settings},  # the rate test sets its own limit
    )
    host = ServiceHost(SPEC, config)
    await host.start()
    assert host.identity is not None and host.redis is not None
    # host.stop() waits out the feed's blocking XREAD; keep teardown short.
    host.identity.feed.block_ms = 20
    app = host.build_app(manage_lifespan=False)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1234))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://commands") as client:
            yield World(host, client, prefix)
    finally:
        await host.redis.xadd(prefix + "events:auth", {"type": "test.wake", "envelope": "{}"})
        await host.stop()


@pytest.fixture
async def world(database_url: str, prefix: str) -> AsyncIterator[World]:
    """A started commands host on this run's database and this test's stream prefix."""
    async with started(database_url, prefix) as w:
        yield w


@pytest.fixture
async def worker(world: World) -> AsyncIterator[World]:
    """The commands worker (relay, lifecycle consumers, expiry sweeper) running beside the API."""
    stop = asyncio.Event()
    task = asyncio.create_task(world.host.run_worker(stop))

    async def ready() -> bool:
        runners = world.host.runners
        return len(runners) == 3 and all(r.ready.is_set() for r in runners)

    await until(ready)
    try:
        yield world
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
