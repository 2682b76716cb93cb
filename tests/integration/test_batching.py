"""BatchingPublisher: concurrent publishes share round trips; a failed batch fails every waiter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio as aioredis

from libs.events.batching import BatchingPublisher, NotSent, OutcomeUnknown, PublisherClosed
from libs.events.envelope import Envelope, decode_entry, decode_event
from libs.events.publisher import Publisher
from libs.events.schemas import REGISTRY
from libs.events.schemas.telemetry import HeartbeatReceived

from ..conftest import RedisServer
from .helpers import until, writes_held


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


async def seqs(client: aioredis.Redis, stream: str) -> list[int]:
    """The heartbeats' seq numbers on the stream, in order."""
    out = []
    for _id, fields in await client.xrange(stream):
        event = decode_event(decode_entry(fields), REGISTRY)
        assert isinstance(event, HeartbeatReceived) and event.seq is not None
        out.append(event.seq)
    return out


@pytest.fixture
async def slow(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of the private Redis (whose writes a test may hold)."""
    client = aioredis.Redis.from_url(redis_server.url, socket_connect_timeout=1)
    yield client
    await client.aclose()


async def test_an_entry_redis_has_is_awaited_and_a_queued_one_withdrawn(
    redis_server: RedisServer, slow: aioredis.Redis, prefix: str
) -> None:
    """Past the send deadline, an entry not yet sent is withdrawn (nothing written: the error is
    true), while one Redis already has is waited for until Redis answers (not reported failed)."""
    pub = counting(slow)
    batcher = BatchingPublisher(pub, timeout_s=30, hard_timeout_s=30)
    stream = prefix + "s"
    try:
        await batcher.publish(stream, beat(pub, 0))
        batcher.timeout_s = 0.2  # only after the warm-up: a loaded machine may take that long to connect
        async with writes_held(redis_server) as release:
            sent = asyncio.create_task(batcher.publish(stream, beat(pub, 1)))
            await until(lambda: batcher.in_flight == 1)
            with pytest.raises(NotSent):  # queued behind the held batch past its deadline
                await batcher.publish(stream, beat(pub, 2))
            assert not sent.done()  # past its own deadline too, but Redis has it
            assert await slow.xlen(stream) == 1
            await release()
            assert await sent
        batcher.timeout_s = 30
        await batcher.publish(stream, beat(pub, 3))  # the withdrawn entry does not ride along later
    finally:
        await batcher.aclose()
    assert await seqs(slow, stream) == [0, 1, 3]


async def test_a_cancelled_waiter_withdraws_its_unsent_entry(
    redis_server: RedisServer, slow: aioredis.Redis, prefix: str
) -> None:
    pub = counting(slow)
    batcher = BatchingPublisher(pub, timeout_s=30, hard_timeout_s=30)
    stream = prefix + "s"
    try:
        await batcher.publish(stream, beat(pub, 0))
        async with writes_held(redis_server) as release:
            sent = asyncio.create_task(batcher.publish(stream, beat(pub, 1)))
            await until(lambda: batcher.in_flight == 1)
            queued = asyncio.create_task(batcher.publish(stream, beat(pub, 2)))
            await asyncio.sleep(0)  # queued
            queued.cancel()  # e.g. the client went away
            await release()
            assert await sent
        await batcher.publish(stream, beat(pub, 3))
    finally:
        await batcher.aclose()
    assert queued.cancelled()
    assert await seqs(slow, stream) == [0, 1, 3]


async def test_no_answer_within_the_hard_cap_is_an_unknown_outcome(
    redis_server: RedisServer, slow: aioredis.Redis, prefix: str
) -> None:
    pub = counting(slow)
    batcher = BatchingPublisher(pub, timeout_s=30, hard_timeout_s=30)
    stream = prefix + "s"
    try:
        await batcher.publish(stream, beat(pub, 0))
        batcher.hard_timeout_s = 0.3  # only after the warm-up (see above)
        async with writes_held(redis_server):
            results = await asyncio.gather(
                *(batcher.publish(stream, beat(pub, i)) for i in range(1, 4)), return_exceptions=True
            )
        assert all(isinstance(x, OutcomeUnknown) for x in results), results
        assert batcher.in_flight == 0
        batcher.hard_timeout_s = 30
        assert await batcher.publish(stream, beat(pub, 9))  # and the batcher carries on
    finally:
        await batcher.aclose()
