"""Fixtures of the telemetry tests: a started host, an HTTP client, devices with sessions and API keys."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from libs.events.envelope import decode_entry, decode_event
from libs.events.identity import Claims, secret_hash
from libs.events.publisher import Publisher
from libs.events.schemas import REGISTRY
from libs.events.schemas.device import DeviceRegistered, InitialCredential
from libs.events.schemas.telemetry import HeartbeatReceived
from libs.events.service import ServiceHost
from services.telemetry.api import fast_app
from services.telemetry.config import Settings
from services.telemetry.main import SPEC

from ..conftest import REDIS_URL


def uid(stem: str = "") -> str:
    """A short id unique to this test."""
    return f"{stem}{uuid.uuid4().hex[:10]}"


@dataclass
class Device:
    """A registered device: its workspace, a session token and an API key."""

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
    """A started telemetry service and its client."""

    host: ServiceHost
    client: httpx.AsyncClient
    prefix: str

    @property
    def stream(self) -> str:
        return self.prefix + "telemetry:heartbeats"

    def session(self, device_id: str, ws: str, *, exp: int | None = None) -> str:
        """A device session token as auth would mint it."""
        assert self.host.identity is not None
        now = time.time()
        claims = Claims(
            typ="device",
            sub=device_id,
            ws=ws,
            cid=uid("cred-"),
            iat=now,
            exp=exp or int(now) + 3600,
            jti=uid("jti-"),
        )
        return self.host.identity.signer.issue(claims)

    def operator(self, ws: str) -> dict[str, str]:
        """Headers of an owner of ``ws``."""
        assert self.host.identity is not None
        now = time.time()
        claims = Claims(
            typ="operator",
            sub=uid("op-"),
            ws=ws,
            iat=now,
            exp=int(now) + 3600,
            jti=uid("jti-"),
            roles={ws: "owner"},
        )
        return {"Authorization": f"Bearer {self.host.identity.signer.issue(claims)}"}

    async def device(self, ws: str | None = None) -> Device:
        """Register a device (as the registry would announce it) with an API key and a session."""
        ws = ws or uid("ws-")
        device_id, key = uid("dev-"), uid("key-") + uuid.uuid4().hex
        assert self.host.redis is not None
        event = DeviceRegistered(
            device_id=device_id,
            workspace_id=ws,
            name="d",
            device_type="virtual",
            credentials=[
                InitialCredential(credential_id=uid("cred-"), kind="api_key", secret_sha256=secret_hash(key))
            ],
        )
        await Publisher(self.host.redis, producer="device").publish(self.prefix + "events:device", event)
        return Device(device_id, ws, self.session(device_id, ws), key)

    async def length(self) -> int:
        """Entries on telemetry:heartbeats."""
        assert self.host.redis is not None
        return int(await self.host.redis.xlen(self.stream))

    async def heartbeats(self) -> list[HeartbeatReceived]:
        """Every heartbeat on the stream so far."""
        assert self.host.redis is not None
        out = []
        for _id, fields in await self.host.redis.xrange(self.stream):
            event = decode_event(decode_entry(fields), REGISTRY)
            assert isinstance(event, HeartbeatReceived)
            out.append(event)
        return out

    async def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return await self.client.post(path, json=body, **kw)


@contextlib.asynccontextmanager
async def started(
    database_url: str, prefix: str, *, fast: bool, redis_url: str = REDIS_URL, **settings: Any
) -> AsyncIterator[World]:
    """A started telemetry host (on ``redis_url``) and a client of its app (``fast``: the hot path)."""
    config = Settings(
        redis_url=redis_url,
        database_url=database_url,
        stream_prefix=prefix,
        signing_key="x" * 40,
        **{"device_rate_per_s": 0, **settings},  # the rate test sets its own limit
    )
    host = ServiceHost(SPEC, config)
    await host.start()
    assert host.identity is not None and host.redis is not None
    host.identity.feed.block_ms = 20
    app: Any = host.build_app(manage_lifespan=False)
    if fast:
        app = fast_app(host, app)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1234))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://telemetry") as client:
            yield World(host, client, prefix)
    finally:
        await host.redis.xadd(prefix + "events:auth", {"type": "test.wake", "envelope": "{}"})
        await host.stop()


@pytest.fixture(params=["routes", "fast"])
async def world(database_url: str, prefix: str, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    """A started telemetry host on this run's database and this test's stream prefix.

    Each test runs twice: through the FastAPI routes, and with the ingestion hot path in front.
    """
    async with started(database_url, prefix, fast=request.param == "fast") as w:
        yield w
