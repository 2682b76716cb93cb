"""The latest-metrics cache only moves forward in time, whatever order its writes arrive in."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from libs.events.envelope import Envelope
from libs.events.publisher import Publisher
from libs.events.schemas.telemetry import HeartbeatReceived
from services.telemetry.store import LatestCache

from ..conftest import RedisServer
from .conftest import World

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def beat(pub: Publisher, device_id: str, cpu: int, *, at: datetime, **kw: Any) -> tuple[str, Envelope]:
    """A live heartbeat; ``at`` is its receive time unless ``sent_at`` says when it was taken."""
    event = HeartbeatReceived(
        device_id=device_id, workspace_id="w", received_at=at, metrics={"cpu": cpu}, **kw
    )
    return "telemetry:heartbeats", pub.envelope(event)


async def cpu(cache: LatestCache, device_id: str) -> Any:
    cached = await cache.get(device_id)
    return None if cached is None else cached["metrics"]["cpu"]


async def test_an_older_heartbeat_never_replaces_a_newer_one(r: aioredis.Redis, prefix: str) -> None:
    pub, cache = Publisher(r, producer="test"), LatestCache(r, prefix, 300)
    # dialect S and K: ordered by receive time
    await cache.store([beat(pub, "s1", 2, at=T0 + timedelta(seconds=2))])
    await cache.store([beat(pub, "s1", 1, at=T0 + timedelta(seconds=1))])
    assert await cpu(cache, "s1") == 2
    await cache.store([beat(pub, "s1", 3, at=T0 + timedelta(seconds=3))])
    assert await cpu(cache, "s1") == 3
    # the agent: ordered by when it took the readings, e.g. a late retry of seq 1 received after seq 2
    later = T0 + timedelta(minutes=5)
    await cache.store([beat(pub, "a1", 2, at=later, seq=2, sent_at=T0 + timedelta(seconds=30))])
    await cache.store([beat(pub, "a1", 1, at=later + timedelta(seconds=1), seq=1, sent_at=T0)])
    assert await cpu(cache, "a1") == 2
    # within one batch too (it used to be the last one in the batch)
    await cache.store(
        [
            beat(pub, "a2", 2, at=later, seq=2, sent_at=T0 + timedelta(seconds=30)),
            beat(pub, "a2", 1, at=later, seq=1, sent_at=T0),
        ]
    )
    assert await cpu(cache, "a2") == 2
    # backfill never writes, even into an empty cache
    await cache.store([beat(pub, "b1", 9, at=later, seq=1, sent_at=later, backfill=True)])
    assert await cache.get("b1") is None


async def test_concurrent_writers_keep_the_newest(r: aioredis.Redis, prefix: str) -> None:
    """Two API replicas may write the same device's cache in either order."""
    pub, cache = Publisher(r, producer="test"), LatestCache(r, prefix, 300)
    writes = [cache.store([beat(pub, "d", i, at=T0 + timedelta(milliseconds=i))]) for i in range(50)]
    await asyncio.gather(*reversed(writes))
    assert await cpu(cache, "d") == 49


async def test_a_value_in_the_old_format_is_replaced(r: aioredis.Redis, prefix: str) -> None:
    pub, cache = Publisher(r, producer="test"), LatestCache(r, prefix, 300)
    await r.set(cache.key("d"), b'{"metrics":{"cpu":0},"received_at":"2026-01-01T00:00:00Z"}', ex=300)
    await cache.store([beat(pub, "d", 1, at=T0)])
    cached = await cache.get("d")
    assert cached is not None and cached["metrics"] == {"cpu": 1}
    assert set(cached) == {"metrics", "received_at", "status", "seq", "flags", "dialect"}


async def test_a_late_agent_retry_does_not_replace_the_latest(world: World) -> None:
    dev, marker = await world.device(), await world.device()
    url = f"/api/v1/devices/{dev.device_id}/latest"
    headers = world.operator(dev.workspace_id)
    newer = {"seq": 2, "sent_at": "2026-01-02T03:04:35Z", "metrics": {"cpu": 2}}
    older = {"seq": 1, "sent_at": "2026-01-02T03:04:05Z", "metrics": {"cpu": 1}}
    for body in (newer, older):
        assert (await world.post("/api/v1/agent/heartbeat", body, headers=dev.s)).status_code == 200
    # cache writes follow their batches in order: once the marker's is there, both of dev's are done
    assert (await world.post("/api/v1/device/heartbeat", {"status": "online"}, headers=marker.s)).is_success
    marker_url = f"/api/v1/devices/{marker.device_id}/latest"
    marker_headers = world.operator(marker.workspace_id)
    for _ in range(200):
        if (await world.client.get(marker_url, headers=marker_headers)).status_code == 200:
            break
        await asyncio.sleep(0.01)
    resp = await world.client.get(url, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["metrics"] == {"cpu": 2} and resp.json()["seq"] == 2


async def test_a_fresh_redis_is_taught_the_script(redis_server: RedisServer, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.script_exists(LatestCache(client, prefix, 300)._sha) == [False]
        pub, cache = Publisher(client, producer="test"), LatestCache(client, prefix, 300)
        await cache.store([beat(pub, "d", 2, at=T0 + timedelta(seconds=1)), beat(pub, "e", 1, at=T0)])
        await cache.store([beat(pub, "d", 1, at=T0)])
        assert (await cpu(cache, "d"), await cpu(cache, "e")) == (2, 1)
        assert 295 < await client.ttl(cache.key("d")) <= 300
    finally:
        await client.aclose()


async def test_a_socket_heartbeat_reaches_the_latest_route(world: World) -> None:
    """The gateway appends socket heartbeats itself; the worker's ``telemetry.latest`` group caches
    them (a heartbeat received longer ago than the TTL is not cached; a device clock behind is)."""
    from libs.events.consumer import ConsumerRunner
    from services.telemetry.consumers import latest_subscription

    from ..integration.helpers import Running

    assert world.host.redis is not None
    dev, stale_dev, slow_clock = await world.device(), await world.device(), await world.device()
    gateway = Publisher(world.host.redis, producer="gateway")
    now, ago = datetime.now(UTC), datetime.now(UTC) - timedelta(minutes=10)
    for device, received, sent in ((stale_dev, ago, ago), (slow_clock, now, ago), (dev, now, now)):
        event = HeartbeatReceived(
            device_id=device.device_id, workspace_id=device.workspace_id, received_at=received,
            seq=1, sent_at=sent, metrics={"cpu": 7}, dialect="agent",
        )  # fmt: skip
        await gateway.publish(world.stream, event)
    runner = ConsumerRunner(world.host.redis, latest_subscription(world.host), consumer="t", block_ms=50)
    async with Running(runner):
        url = f"/api/v1/devices/{dev.device_id}/latest"
        for _ in range(300):
            resp = await world.client.get(url, headers=world.operator(dev.workspace_id))
            if resp.status_code == 200:
                break
            await asyncio.sleep(0.01)
    assert resp.status_code == 200, resp.text
    assert resp.json()["metrics"] == {"cpu": 7} and resp.json()["dialect"] == "agent"
    stale = f"/api/v1/devices/{stale_dev.device_id}/latest"
    assert (await world.client.get(stale, headers=world.operator(stale_dev.workspace_id))).status_code == 404
    behind = f"/api/v1/devices/{slow_clock.device_id}/latest"
    resp = await world.client.get(behind, headers=world.operator(slow_clock.workspace_id))
    assert resp.status_code == 200  # its clock is 10 minutes behind, but it was just received
