"""Fixtures of the gateway tests: the service served by uvicorn on a free port, real Redis, and helpers
that act as the auth, device and commands services (publishing their events on this test's prefix)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from libs.events.envelope import decode_entry, decode_event
from libs.events.identity import Claims, secret_hash
from libs.events.publisher import Publisher
from libs.events.schemas import REGISTRY, Event
from libs.events.schemas.commands import CommandQueued
from libs.events.schemas.device import DeviceRegistered, InitialCredential
from libs.events.schemas.gateway import CommandPushed, GatewayAlive
from libs.events.service import ServiceHost
from services.gateway.config import Settings
from services.gateway.main import SPEC

from ..conftest import REDIS_URL, free_port


def uid(stem: str = "") -> str:
    """A short id unique to this test."""
    return f"{stem}{uuid.uuid4().hex[:10]}"


@dataclass
class World:
    """A served gateway, its address, and ways to play the other services."""

    host: ServiceHost
    port: int
    prefix: str

    @property
    def redis(self) -> Any:
        assert self.host.redis is not None
        return self.host.redis

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def session(self, device_id: str | None = None, ws: str | None = None) -> tuple[str, str, str]:
        """``(device_id, workspace_id, token)``: a device session as auth would mint it."""
        assert self.host.identity is not None
        device_id, ws, now = device_id or uid("dev-"), ws or uid("ws-"), time.time()
        claims = Claims(
            typ="device", sub=device_id, ws=ws, cid=uid("cred-"), iat=now, exp=int(now) + 3600, jti=uid("j-")
        )
        return device_id, ws, self.host.identity.signer.issue(claims)

    async def w_device(self) -> tuple[str, str, str]:
        """``(device_id, workspace_id, token)``: a device registered with a dialect W token."""
        device_id, ws, token = uid("dev-"), uid("ws-"), uuid.uuid4().hex + uuid.uuid4().hex
        cred = InitialCredential(credential_id=uid("cred-"), kind="token", secret_sha256=secret_hash(token))
        event = DeviceRegistered(
            device_id=device_id, workspace_id=ws, name="w", device_type="esp32", credentials=[cred]
        )
        await Publisher(self.redis, producer="device").publish(self.prefix + "events:device", event)
        return device_id, ws, token

    async def command(self, event: Event) -> None:
        """Publish a commands-service event on ``events:commands``."""
        await Publisher(self.redis, producer="commands").publish(self.prefix + "events:commands", event)

    async def queue(
        self,
        device_id: str,
        ws: str,
        command_type: str = "reboot",
        *,
        parameters: dict[str, Any] | None = None,
        created_at: datetime | None = None,
        ttl_s: float = 600,
    ) -> str:
        """Queue a command as the commands service would; returns its id."""
        created = created_at or datetime.now(UTC)
        command_id = uid("cmd-")
        event = CommandQueued(
            command_id=command_id,
            device_id=device_id,
            workspace_id=ws,
            command_type=command_type,
            created_at=created,
            expires_at=created + timedelta(seconds=ttl_s),
            parameters=parameters or {},
        )
        await self.command(event)
        return command_id

    async def events(self, stream: str = "events:gateway") -> list[Event]:
        """Every event on a stream of this prefix (but the instance's periodic ``gateway.alive``)."""
        entries = await self.redis.xrange(self.prefix + stream)
        events = [decode_event(decode_entry(fields), REGISTRY) for _id, fields in entries]
        return [e for e in events if not isinstance(e, GatewayAlive)]

    async def until(self, check: Callable[[list[Event]], Any], stream: str = "events:gateway") -> Any:
        """Wait (up to 5 s) until ``check(events)`` is truthy; returns its value."""
        deadline = time.monotonic() + 5
        while True:
            found = check(await self.events(stream))
            if found:
                return found
            assert time.monotonic() < deadline, f"not seen on {stream}: {await self.events(stream)}"
            await asyncio.sleep(0.02)

    async def fed(self) -> None:
        """Wait until the gateway's command feed has read everything on ``events:commands``."""
        from services.gateway.handlers import gateway_of

        feed = gateway_of(self.host).feed
        last = await self.redis.xrevrange(self.prefix + "events:commands", count=1)
        want = last[0][0].decode() if last else "0-0"
        deadline = time.monotonic() + 5
        while tuple(map(int, feed.cursor.split("-"))) < tuple(map(int, want.split("-"))):
            assert time.monotonic() < deadline, "command feed did not catch up"
            await asyncio.sleep(0.01)


def pushes(events: list[Event]) -> list[str]:
    """The command ids of the CommandPushed events, in stream order."""
    return [e.command_id for e in events if isinstance(e, CommandPushed)]


async def send(ws: ClientConnection, **frame: Any) -> None:
    """Send one JSON frame."""
    await ws.send(json.dumps(frame))


async def recv(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    """The next frame as JSON."""
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws: ClientConnection, kind: str, timeout: float = 5) -> dict[str, Any]:
    """The next frame whose ``type`` is ``kind`` (others skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.01, deadline - time.monotonic()))
        if frame.get("type") == kind:
            return frame


@contextlib.asynccontextmanager
async def served(database_url: str, prefix: str, server: dict[str, Any] | None = None, **settings: Any):
    """The gateway app in uvicorn on a free port (lifespan starts the host), stopped afterwards."""
    port = free_port()
    config = Settings(
        redis_url=REDIS_URL,
        database_url=database_url,
        stream_prefix=prefix,
        signing_key="x" * 40,
        port=port,
        **settings,
    )
    host = ServiceHost(SPEC, config)
    options = {**SPEC.server(config), **(server or {})}
    uv = uvicorn.Config(
        host.asgi_app(), host="127.0.0.1", port=port, log_config=None, lifespan="on", **options
    )
    server_ = uvicorn.Server(uv)
    server_.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server_.serve())
    deadline = time.monotonic() + 10
    while not server_.started:
        assert not task.done(), task.exception() if task.done() else ""
        assert time.monotonic() < deadline, "gateway did not start"
        await asyncio.sleep(0.01)
    assert host.identity is not None
    host.identity.feed.block_ms = 20
    from services.gateway.handlers import gateway_of

    gateway_of(host).feed.block_ms = 20
    try:
        yield World(host, port, prefix)
    finally:
        server_.should_exit = True
        await asyncio.wait_for(task, 20)


@pytest.fixture
async def world(database_url: str, prefix: str) -> AsyncIterator[World]:
    """A served gateway on this run's database and this test's stream prefix."""
    async with served(database_url, prefix) as w:
        yield w


__all__ = ["World", "connect", "pushes", "recv", "recv_until", "send", "served", "uid"]
