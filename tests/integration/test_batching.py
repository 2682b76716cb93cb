"""BatchingPublisher: concurrent publishes share round trips; a failed batch fails every waiter."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import redis.asyncio as aioredis

from libs.events.batching import BatchingPublisher, PublisherClosed
from libs.events.envelope import Envelope, decode_entry
from libs.events.publisher import Publisher
from libs.events.schemas.telemetry import HeartbeatReceived

from ..conftest import RedisServer


class CountingPublisher(Publisher):
    """A publisher that counts its batch calls and their sizes."""

    calls: list[int]

    async def publish_envelopes(self, items: Sequence[tuple[str, Envelope]]) -> list[str]:
        self.calls.append(len(items))
        return await super().publish_envelopes(items)


def counting(redis: aioredis.Redis) -> CountingPublisher:
    pub = CountingPublisher(redis, producer="test")
    pub.calls = []
    return pub


def beat(pub: Publisher, seq: int) -> Envelope:
    from datetime import UTC, datetime

    event = HeartbeatReceived(device_id="d1", workspace_id="w1", received_at=datetime.now(UTC), seq=seq)
    return pub.envelope(event)


async def test_concurrent_publishes_share_round_trips(r: aioredis.Redis, prefix: str) -> None:
    pub = counting(r)
    batcher = BatchingPublisher(pub, max_batch=100)
    stream = prefix + "telemetry:heartbeats"
    try:
        ids = await asyncio.gather(*(batcher.publish(stream, beat(pub, i)) for i in range(1000)))
    finally:
        await batcher.aclose()
    assert len(set(ids)) == 1000
    assert await r.xlen(stream) == 1000
    assert sum(pub.calls) == 1000
    assert len(pub.calls) <= 12, pub.calls  # 1000 / max_batch 100, not one call per publish
    assert max(pub.calls) <= 100
    # each caller got the id of its own entry
    entries = dict(await r.xrange(stream))
    for i, entry_id in enumerate(ids):
        env = decode_entry(entries[entry_id.encode()])
        assert b'"seq":%d' % i in bytes(env.data)


async def test_a_lone_publish_is_flushed_promptly(r: aioredis.Redis, prefix: str) -> None:
    pub = counting(r)
    batcher = BatchingPublisher(pub, max_delay_s=0.002)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.publish(prefix + "s", beat(pub, 1))
        assert loop.time() - started < 0.2
    finally:
        await batcher.aclose()
    assert pub.calls == [1]


async def test_redis_failure_fails_every_waiter_of_the_batch(redis_server: RedisServer, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_server.url, socket_connect_timeout=1)
    pub = counting(client)
    batcher = BatchingPublisher(pub, max_delay_s=0.01)
    stream = prefix + "s"
    try:
        await batcher.publish(stream, beat(pub, 0))
        redis_server.stop()
        results = await asyncio.gather(
            *(batcher.publish(stream, beat(pub, i)) for i in range(1, 51)), return_exceptions=True
        )
        assert all(isinstance(x, Exception) for x in results), results
        # the batcher survives the failure: once Redis is back, publishes succeed again
        redis_server.start()
        await client.connection_pool.disconnect()
        assert await batcher.publish(stream, beat(pub, 99))
    finally:
        await batcher.aclose()
        await client.aclose()


async def test_closed_batcher_refuses(r: aioredis.Redis, prefix: str) -> None:
    pub = counting(r)
    batcher = BatchingPublisher(pub)
    await batcher.publish(prefix + "s", beat(pub, 0))
    await batcher.aclose()
    with pytest.raises(PublisherClosed):
        await batcher.publish(prefix + "s", beat(pub, 1))


async def test_after_flush_sees_written_batches(r: aioredis.Redis, prefix: str) -> None:
    pub = counting(r)
    seen: list[str] = []

    async def after(items: Sequence[tuple[str, Envelope]], ids: Sequence[str]) -> None:
        seen.extend(ids)
        raise RuntimeError("a failing follow-up does not fail the batch")

    batcher = BatchingPublisher(pub, after_flush=after)
    try:
        ids = await asyncio.gather(*(batcher.publish(prefix + "s", beat(pub, i)) for i in range(20)))
    finally:
        await batcher.aclose()
    assert sorted(seen) == sorted(ids)


async def test_a_batch_not_acknowledged_in_time_fails_its_waiters(r: aioredis.Redis, prefix: str) -> None:
    class Hanging(Publisher):
        async def publish_envelopes(self, items: Sequence[tuple[str, Envelope]]) -> list[str]:
            await asyncio.sleep(10)
            return []

    pub = Hanging(r, producer="test")
    batcher = BatchingPublisher(pub, timeout_s=0.05)
    try:
        results = await asyncio.gather(
            *(batcher.publish(prefix + "s", beat(pub, i)) for i in range(5)), return_exceptions=True
        )
    finally:
        await batcher.aclose()
    assert all(isinstance(x, TimeoutError) for x in results), results
