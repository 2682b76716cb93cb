"""Fixtures of the device service tests: a started host, an HTTP client, operators and workspaces."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from libs.events.envelope import Envelope, decode_entry, decode_event
from libs.events.identity import Claims
from libs.events.publisher import Publisher
from libs.events.schemas import REGISTRY, Event
from libs.events.schemas.auth import WorkspaceCreated
from libs.events.service import ServiceHost
from services.device.config import Settings
from services.device.main import SPEC

from ..conftest import REDIS_URL


def uid(stem: str = "") -> str:
    """A short id unique to this test (the run shares one ``device`` schema)."""
    return f"{stem}{uuid.uuid4().hex[:10]}"


@dataclass
class World:
    """A started device service, its client, and helpers to act as operators."""

    host: ServiceHost
    client: httpx.AsyncClient
    prefix: str

    def token(self, ws: str | dict[str, str], *, sub: str | None = None, role: str = "owner") -> str:
        """An operator token for one workspace (or several: ``{ws: role}``), home workspace first."""
        roles = ws if isinstance(ws, dict) else {ws: role}
        assert self.host.identity is not None
        now = time.time()
        claims = Claims(
            typ="operator",
            sub=sub or uid("op-"),
            ws=next(iter(roles)),
            iat=now,
            exp=int(now) + 3600,
            jti=uid("jti-"),
            roles=roles,
        )
        return self.host.identity.signer.issue(claims)

    def auth(self, ws: str, *, role: str = "owner", w: bool = False) -> dict[str, str]:
        """Headers of an operator of ``ws`` (with ``X-Workspace-ID`` for dialect W)."""
        headers = {"Authorization": f"Bearer {self.token(ws, role=role)}"}
        if w:
            headers["X-Workspace-ID"] = ws
        return headers

    async def workspace(self, *, open_enrolment: bool = False) -> str:
        """Announce a new workspace on ``events:auth`` as the auth service would."""
        ws = uid("ws-")
        assert self.host.redis is not None
        event = WorkspaceCreated(workspace_id=ws, name=ws, open_enrolment=open_enrolment)
        await Publisher(self.host.redis, producer="auth").publish(self.prefix + "events:auth", event)
        return ws

    async def site(self, ws: str, **extra: Any) -> str:
        """Create a site in ``ws`` through the API."""
        site_id = uid("site-")
        resp = await self.client.post(
            "/api/v1/sites", json={"site_id": site_id, "name": "Site", **extra}, headers=self.auth(ws)
        )
        assert resp.status_code == 201, resp.text
        return site_id

    async def events(self) -> list[tuple[Envelope, Event]]:
        """Every event on ``events:device`` so far."""
        assert self.host.redis is not None
        entries = await self.host.redis.xrange(self.prefix + "events:device")
        out = []
        for _id, fields in entries:
            env = decode_entry(fields)
            out.append((env, decode_event(env, REGISTRY)))
        return out

    async def count(self, sql: str, *args: Any) -> int:
        """A count from the service's schema."""
        assert self.host.pool is not None
        return int(await self.host.pool.fetchval(sql, *args))


@pytest.fixture
async def world(database_url: str, prefix: str) -> AsyncIterator[World]:
    """A started device host on this run's database and this test's stream prefix."""
    settings = Settings(
        redis_url=REDIS_URL, database_url=database_url, stream_prefix=prefix, signing_key="x" * 40
    )
    host = ServiceHost(SPEC, settings)
    await host.start()
    assert host.identity is not None and host.redis is not None
    # host.stop() waits out the feed's blocking XREAD (500 ms); keep teardown short.
    host.identity.feed.block_ms = 20
    app = host.build_app(manage_lifespan=False)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1234))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://device") as client:
            yield World(host, client, prefix)
    finally:
        await host.redis.xadd(prefix + "events:auth", {"type": "test.wake", "envelope": "{}"})
        await host.stop()
