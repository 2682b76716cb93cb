"""Helpers for the backbone integration tests: run a runner until a condition holds."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from libs.events.consumer import ConsumerRunner
from libs.events.identity import Claims, Signer
from libs.events.service import ServiceHost, ServiceSpec

from ..conftest import REDIS_URL, RedisServer


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    """Poll ``check`` until it is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Running:
    """Context manager running a ConsumerRunner in the background and stopping it gracefully."""

    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ConsumerRunner:
        self.task = asyncio.create_task(self.runner.run())
        await asyncio.wait_for(self.runner.ready.wait(), 5)
        return self.runner

    async def __aexit__(self, *exc: object) -> None:
        self.runner.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


@contextlib.asynccontextmanager
async def writes_held(server: RedisServer) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Redis takes commands but holds every write (``CLIENT PAUSE WRITE``) until ``release()``."""
    admin = aioredis.Redis.from_url(server.url)
    await admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")

    async def release() -> None:
        await admin.execute_command("CLIENT", "UNPAUSE")

    try:
        yield release
    finally:
        await release()
        await admin.aclose()


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a state of the batcher or service (no fixed sleep)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def signed(key: str, **claims: Any) -> str:
    """A session token signed with ``key`` as auth would mint it, valid for ten minutes."""
    now = time.time()
    return Signer(key).issue(Claims(iat=now, exp=int(now) + 600, jti=uuid.uuid4().hex, **claims))


@contextlib.asynccontextmanager
async def services_running(
    database_url: str,
    prefix: str,
    key: str,
    specs: dict[str, ServiceSpec],
    overrides: dict[str, dict[str, Any]] | None = None,
) -> AsyncIterator[dict[str, ServiceHost]]:
    """Started hosts of ``specs`` (one loop, this test's database and prefix), the device worker
    running when device is among them; stopped at the end."""
    common = {
        "redis_url": REDIS_URL,
        "database_url": database_url,
        "stream_prefix": prefix,
        "signing_key": key,
    }
    hosts = {
        name: ServiceHost(spec, spec.settings_cls(**common, **(overrides or {}).get(name, {})))
        for name, spec in specs.items()
    }
    for h in hosts.values():
        await h.start()
    stop = asyncio.Event()
    worker = asyncio.create_task(hosts["device"].run_worker(stop)) if "device" in hosts else None
    try:
        yield hosts
    finally:
        stop.set()
        if worker is not None:
            await worker
        for h in hosts.values():
            await h.stop()
