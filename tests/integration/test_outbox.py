"""Outbox and relay: state and outbox row in one transaction, NOTIFY wake-up, Redis outages."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import asyncpg
import redis.asyncio as aioredis

from libs.events.envelope import decode_entry, new_envelope
from libs.events.outbox import OutboxRelay, enqueue
from libs.events.publisher import Publisher, raw_item
from libs.events.schemas.device import DeviceRegistered

from .helpers import eventually


def event(i: int) -> DeviceRegistered:
    return DeviceRegistered(device_id=f"d{i}", workspace_id="w1", name=f"dev {i}", device_type="virtual")


async def write(pool: asyncpg.Pool, stream: str, i: int) -> str:
    """A decision: one state row and its event, committed together."""
    env = new_envelope(event(i), producer="device")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO devices (id) VALUES ($1)", f"d{i}")
        await enqueue(conn, [(stream, env)])
    return env.id


async def make_table(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE IF NOT EXISTS devices (id text PRIMARY KEY)")


async def stream_ids(r: aioredis.Redis, stream: str) -> Counter[str]:
    return Counter(decode_entry(f).id for _i, f in await r.xrange(stream))


@contextlib.asynccontextmanager
async def relaying(relay: OutboxRelay):
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_committed_rows_are_published_and_rolled_back_ones_never(pool, r, prefix, schema):
    stream = f"{prefix}events:device"
    await make_table(pool)
    ids = [await write(pool, stream, i) for i in range(3)]
    with contextlib.suppress(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO devices (id) VALUES ('rolled-back')")
            await enqueue(conn, [(stream, new_envelope(event(99), producer="device"))])
            raise RuntimeError("decision rejected")
    relay = OutboxRelay(pool, r, schema=schema)
    assert await relay.drain() == 3
    assert await stream_ids(r, stream) == Counter(ids)
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_notify_wakes_the_relay_without_waiting_for_the_timer(pool, r, prefix, schema):
    stream = f"{prefix}events:device"
    await make_table(pool)
    relay = OutboxRelay(pool, r, schema=schema, poll_interval_s=30)
    async with relaying(relay):
        await eventually(lambda: relay.is_leader, 5)
        started = time.monotonic()
        env_id = await write(pool, stream, 1)
        await eventually(lambda: relay.published == 1, 5)
        assert time.monotonic() - started < 2  # far below the 30 s timer
    assert list(await stream_ids(r, stream)) == [env_id]


async def test_republishing_the_same_envelope_is_absorbed(r, prefix):
    stream = f"{prefix}events:device"
    pub = Publisher(r, producer="device")
    items = [raw_item(new_envelope(event(i), producer="device")) for i in range(3)]
    first = await pub.publish_once(stream, items)
    again = await pub.publish_once(stream, items)  # a relay that crashed before deleting its rows
    assert all(first) and again == [None, None, None]
    assert await r.xlen(stream) == 3


async def test_only_one_relay_leads_a_schema(pool, r, prefix, schema):
    stream = f"{prefix}events:device"
    await make_table(pool)
    a = OutboxRelay(pool, r, schema=schema, poll_interval_s=0.05)
    b = OutboxRelay(pool, r, schema=schema, poll_interval_s=0.05)
    async with relaying(a), relaying(b):
        await eventually(lambda: a.is_leader or b.is_leader, 5)
        ids = [await write(pool, stream, i) for i in range(50)]
        await eventually(lambda: a.published + b.published == 50, 10)
        assert not (a.is_leader and b.is_leader)
    assert await stream_ids(r, stream) == Counter(ids)


async def test_redis_outage_delays_but_loses_nothing(pool, redis_server, prefix, schema):
    """Writes keep committing while Redis is down; afterwards every row is in the stream once."""
    stream = f"{prefix}events:device"
    await make_table(pool)
    r = aioredis.Redis.from_url(redis_server.url, socket_connect_timeout=0.5, socket_timeout=2)
    relay = OutboxRelay(pool, r, schema=schema, poll_interval_s=0.05, max_backoff_s=0.2)
    written: list[str] = []
    async with relaying(relay):
        for i in range(100):
            written.append(await write(pool, stream, i))
        await eventually(lambda: relay.published >= 100, 10)
        redis_server.stop()
        for i in range(100, 300):  # Redis is down: the decisions still commit
            written.append(await write(pool, stream, i))
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 200
        redis_server.start()  # same port and AOF directory: the first 100 entries come back
        await eventually(lambda: relay.published >= 300, 20)
        for i in range(300, 320):
            written.append(await write(pool, stream, i))
        await eventually(lambda: relay.published >= 320, 10)
    counts = await stream_ids(r, stream)
    await r.aclose()
    assert set(counts) == set(written)
    assert max(counts.values()) == 1
    assert await pool.fetchval("SELECT count(*) FROM devices") == 320


async def test_outbox_transaction_publishes_at_once_and_the_relay_adds_no_copy(pool, r, prefix, schema):
    from libs.events.outbox import Outbox

    stream = f"{prefix}events:device"
    await make_table(pool)
    outbox = Outbox(pool, r, producer="device", stream=stream)
    async with outbox.transaction() as tx:
        await tx.conn.execute("INSERT INTO devices (id) VALUES ('fast')")
        [env] = tx.emit([event(1)])
    assert list(await stream_ids(r, stream)) == [env.id]  # visible before any relay ran
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1  # the guarantee stays queued
    assert await OutboxRelay(pool, r, schema=schema).drain() == 1
    assert await stream_ids(r, stream) == Counter([env.id])  # the relay's copy was absorbed
    with contextlib.suppress(RuntimeError):
        async with outbox.transaction() as tx:
            tx.emit([event(2)])
            raise RuntimeError("rolled back")
    assert await r.xlen(stream) == 1 and await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_outbox_transaction_commits_while_redis_is_down(pool, redis_server, prefix, schema):
    from libs.events.outbox import Outbox

    stream = f"{prefix}events:device"
    await make_table(pool)
    r = aioredis.Redis.from_url(redis_server.url, socket_connect_timeout=0.5)
    redis_server.stop()
    async with Outbox(pool, r, producer="device", stream=stream).transaction() as tx:
        await tx.conn.execute("INSERT INTO devices (id) VALUES ('offline')")
        [env] = tx.emit([event(3)])
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    redis_server.start()
    assert await OutboxRelay(pool, r, schema=schema).drain() == 1
    assert list(await stream_ids(r, stream)) == [env.id]
    await r.aclose()
