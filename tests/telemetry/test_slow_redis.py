"""A slow Redis: the answer to a heartbeat says truthfully whether it was written.

A private Redis holds every write (``CLIENT PAUSE WRITE``) while the test looks: a heartbeat Redis
already has is answered when Redis answers; one still queued at its deadline is withdrawn and
answered 503 (and never written); one Redis does not answer within the hard cap is 504.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.telemetry.handlers import ingest_of

from ..conftest import RedisServer
from ..integration.helpers import until, writes_held
from .conftest import World, started

S = "/api/v1/device/heartbeat"


@pytest.fixture(params=["routes", "fast"])
async def slow_world(
    database_url: str, prefix: str, redis_server: RedisServer, request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    """Telemetry on a private Redis (deadlines are shortened by each test once it has warmed up)."""
    async with started(
        database_url, prefix, fast=request.param == "fast", redis_url=redis_server.url
    ) as world:
        yield world


def beat(n: int) -> dict[str, object]:
    return {"status": "online", "metrics": {"n": n}}


async def test_503_means_not_written_and_a_heartbeat_redis_has_is_not_refused(
    slow_world: World, redis_server: RedisServer
) -> None:
    world = slow_world
    dev = await world.device()
    assert (await world.post(S, beat(0), headers=dev.s)).status_code == 200
    batcher = ingest_of(world.host).batcher
    # Shortened only now: on a loaded machine the first request alone can take longer than 0.2 s.
    batcher.timeout_s = 0.2
    async with writes_held(redis_server) as release:
        sent = asyncio.create_task(world.post(S, beat(1), headers=dev.s))
        await until(lambda: batcher.in_flight == 1)
        queued = await world.post(S, beat(2), headers=dev.s)  # behind the held batch, past 0.2 s
        assert queued.status_code == 503, queued.text
        assert queued.json()["error"]["code"] == "UNAVAILABLE"
        assert not sent.done()  # past its deadline too, but Redis has it: no answer yet
        await release()
        answered = await sent
        assert answered.status_code == 200, answered.text  # written, and told so
    batcher.timeout_s = 5.0
    assert (await world.post(S, beat(3), headers=dev.s)).status_code == 200
    assert [b.metrics["n"] for b in await world.heartbeats()] == [0, 1, 3]  # 2 was never written


async def test_no_answer_within_the_hard_cap_is_504(slow_world: World, redis_server: RedisServer) -> None:
    world = slow_world
    dev = await world.device()
    assert (await world.post(S, beat(0), headers=dev.s)).status_code == 200
    batcher = ingest_of(world.host).batcher
    batcher.hard_timeout_s = 0.3  # only after the warm-up
    async with writes_held(redis_server):
        resp = await world.post(S, beat(1), headers=dev.s)
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "OUTCOME_UNKNOWN"
    batcher.hard_timeout_s = 30.0
    assert (await world.post(S, beat(2), headers=dev.s)).status_code == 200
