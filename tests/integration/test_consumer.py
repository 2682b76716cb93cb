"""Consumer runner contract against the machine's Redis: ack, skip, retry, DLQ, claim, stop."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import redis.asyncio as aioredis

from libs.events.consumer import ConsumerRunner, Subscription
from libs.events.envelope import decode_entry
from libs.events.projection import Delivery
from libs.events.publisher import Publisher, dlq_stream
from libs.events.schemas.device import DeviceRegistered, DeviceStatusChanged

from .helpers import Running, eventually


def registered(i: int) -> DeviceRegistered:
    return DeviceRegistered(device_id=f"d{i}", workspace_id="w1", name=f"dev {i}", device_type="virtual")


def status(i: int) -> DeviceStatusChanged:
    return DeviceStatusChanged(
        device_id=f"d{i}",
        workspace_id="w1",
        status="online",
        previous="offline",
        reason="first_heartbeat",
        at=datetime.now(UTC),
    )


async def pending_count(r: aioredis.Redis, stream: str, group: str) -> int:
    return int((await r.xpending(stream, group))["pending"])


async def test_handles_in_order_and_acks(r, prefix):
    stream = f"{prefix}events:device"
    seen: list[str] = []

    async def on_registered(d: Delivery) -> None:
        seen.append(d.event.device_id)  # type: ignore[attr-defined]

    sub = Subscription(stream, "test.ack", handlers={"device.registered.v1": on_registered})
    runner = ConsumerRunner(r, sub, consumer="c1", prefix=prefix, block_ms=100)
    pub = Publisher(r, producer="test")
    async with Running(runner):
        await pub.publish_batch(stream, [registered(i) for i in range(20)])
        await eventually(lambda: len(seen) == 20)
    assert seen == [f"d{i}" for i in range(20)]
    assert await pending_count(r, stream, "test.ack") == 0
    assert runner.stats.handled == 20


async def test_unknown_and_unhandled_types_are_acked_and_skipped(r, prefix):
    stream = f"{prefix}events:device"
    seen: list[str] = []

    async def on_registered(d: Delivery) -> None:
        seen.append(d.envelope.type)

    sub = Subscription(stream, "test.skip", handlers={"device.registered.v1": on_registered})
    runner = ConsumerRunner(r, sub, consumer="c1", prefix=prefix, block_ms=100)
    pub = Publisher(r, producer="test")
    # an envelope of a tag no registry knows (a newer producer's event)
    future = msgspec.structs.replace(pub.envelope(registered(1)), type="device.future.v9")
    await pub.publish_envelopes([(stream, future)])
    await pub.publish(stream, status(1))  # known, but this subscription has no handler for it
    await pub.publish(stream, registered(2))
    async with Running(runner):
        await eventually(lambda: len(seen) == 1)
        await eventually(lambda: runner.stats.skipped == 2)
    assert seen == ["device.registered.v1"]
    assert await pending_count(r, stream, "test.skip") == 0
    assert await r.xlen(dlq_stream(stream, prefix)) == 0


async def test_failure_is_retried_then_dead_lettered(r, prefix):
    stream = f"{prefix}events:device"
    attempts: dict[str, int] = {}

    async def flaky(d: Delivery) -> None:
        attempts[d.event.device_id] = attempts.get(d.event.device_id, 0) + 1  # type: ignore[attr-defined]
        if d.event.device_id == "d1":  # type: ignore[attr-defined]
            raise RuntimeError("poison")
        if attempts[d.event.device_id] < 2:  # type: ignore[attr-defined]
            raise RuntimeError("transient")

    sub = Subscription(stream, "test.retry", handlers={"device.registered.v1": flaky})
    runner = ConsumerRunner(
        r,
        sub,
        consumer="c1",
        prefix=prefix,
        block_ms=50,
        claim_idle_ms=50,
        claim_interval_s=0.05,
        max_deliveries=3,
    )
    pub = Publisher(r, producer="test")
    await pub.publish_batch(stream, [registered(0), registered(1)])
    dlq = dlq_stream(stream, prefix)
    async with Running(runner):
        await eventually(_xlen_is(r, dlq, 1))
        await eventually(_pending_is(r, stream, "test.retry", 0))
    assert attempts == {"d0": 2, "d1": 3}
    [(_id, fields)] = await r.xrange(dlq)
    assert fields[b"dlq.error"] == b"RuntimeError: poison"
    assert fields[b"dlq.deliveries"] == b"3"
    assert fields[b"dlq.group"] == b"test.retry"
    assert decode_entry(fields).device_id == "d1"  # the original entry travels with it


async def test_undecodable_goes_to_dlq_at_once(r, prefix):
    stream = f"{prefix}events:device"
    calls = 0

    async def handler(d: Delivery) -> None:
        nonlocal calls
        calls += 1

    await r.xadd(stream, {"type": "device.registered.v1", "envelope": "{not json"})
    await r.xadd(stream, {"garbage": "1"})
    pub = Publisher(r, producer="test")
    fields = {
        "type": "device.registered.v1",
        "envelope": b'{"id":"x","type":"device.registered.v1",'
        b'"occurred_at":"2026-01-01T00:00:00Z","producer":"p","data":{"type":"device.registered.v1"}}',
    }
    await r.xadd(stream, fields)  # valid envelope, event data missing required fields
    await pub.publish(stream, registered(2))
    sub = Subscription(stream, "test.undecodable", handlers={"device.registered.v1": handler})
    runner = ConsumerRunner(r, sub, consumer="c1", prefix=prefix, block_ms=50, max_deliveries=5)
    async with Running(runner):
        await eventually(lambda: calls == 1)
        await eventually(_xlen_is(r, dlq_stream(stream, prefix), 3))
    assert runner.stats.dead_lettered == 3
    assert await pending_count(r, stream, "test.undecodable") == 0
    errors = [f[b"dlq.error"] for _i, f in await r.xrange(dlq_stream(stream, prefix))]
    assert all(e.startswith(b"undecodable") for e in errors)


async def test_batch_handler_isolates_a_bad_entry(r, prefix):
    stream = f"{prefix}events:device"
    applied: list[str] = []
    batch_sizes: list[int] = []

    async def batch(ds: list[Delivery]) -> None:
        batch_sizes.append(len(ds))
        if any(d.event.device_id == "d3" for d in ds):  # type: ignore[attr-defined]
            raise ValueError("bad row")
        applied.extend(d.event.device_id for d in ds)  # type: ignore[attr-defined]

    pub = Publisher(r, producer="test")
    await pub.publish_batch(stream, [registered(i) for i in range(6)])
    sub = Subscription(stream, "test.batch", batch=batch, batch_types=frozenset({"device.registered.v1"}))
    runner = ConsumerRunner(r, sub, consumer="c1", prefix=prefix, block_ms=50, max_deliveries=1)
    async with Running(runner):
        await eventually(lambda: len(applied) == 5)
        await eventually(_xlen_is(r, dlq_stream(stream, prefix), 1))
    assert batch_sizes[0] == 6  # one call for the whole read first
    assert sorted(applied) == ["d0", "d1", "d2", "d4", "d5"]
    assert await pending_count(r, stream, "test.batch") == 0


async def test_entries_of_a_dead_consumer_are_claimed(r, prefix):
    stream = f"{prefix}events:device"
    group = "test.claim"
    pub = Publisher(r, producer="test")
    await r.xgroup_create(stream, group, id="0", mkstream=True)
    await pub.publish_batch(stream, [registered(i) for i in range(5)])
    # "dead" reads everything and dies before acknowledging
    await r.xreadgroup(group, "dead", {stream: ">"}, count=10)
    assert await pending_count(r, stream, group) == 5
    seen: list[str] = []

    async def handler(d: Delivery) -> None:
        seen.append(d.event.device_id)  # type: ignore[attr-defined]

    sub = Subscription(stream, group, handlers={"device.registered.v1": handler})
    runner = ConsumerRunner(
        r, sub, consumer="alive", prefix=prefix, block_ms=50, claim_idle_ms=100, claim_interval_s=0.05
    )
    async with Running(runner):
        await eventually(lambda: len(seen) == 5)
        await eventually(_pending_is(r, stream, group, 0))
    assert seen == [f"d{i}" for i in range(5)]


async def test_own_pending_entries_come_first_after_restart(r, prefix):
    stream = f"{prefix}events:device"
    group = "test.own"
    pub = Publisher(r, producer="test")
    await r.xgroup_create(stream, group, id="0", mkstream=True)
    await pub.publish_batch(stream, [registered(i) for i in range(3)])
    await r.xreadgroup(group, "me", {stream: ">"}, count=3)  # delivered, then "crashed"
    await pub.publish_batch(stream, [registered(i) for i in range(3, 5)])
    seen: list[str] = []

    async def handler(d: Delivery) -> None:
        seen.append(d.event.device_id)  # type: ignore[attr-defined]

    sub = Subscription(stream, group, handlers={"device.registered.v1": handler})
    runner = ConsumerRunner(r, sub, consumer="me", prefix=prefix, block_ms=50)
    async with Running(runner):
        await eventually(lambda: len(seen) == 5)
    assert seen == ["d0", "d1", "d2", "d3", "d4"]


async def test_stop_finishes_the_current_batch(r, prefix):
    stream = f"{prefix}events:device"
    started = asyncio.Event()
    release = asyncio.Event()
    done: list[str] = []

    async def slow(ds: list[Delivery]) -> None:
        started.set()
        await release.wait()
        done.extend(d.envelope.id for d in ds)

    pub = Publisher(r, producer="test")
    await pub.publish_batch(stream, [registered(i) for i in range(10)])
    sub = Subscription(stream, "test.stop", batch=slow, batch_types=frozenset({"device.registered.v1"}))
    runner = ConsumerRunner(r, sub, consumer="c1", prefix=prefix, block_ms=5000)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 5)
    runner.stop()
    await asyncio.sleep(0.05)
    assert not task.done()  # still inside the handler: stop waits for it
    release.set()
    await asyncio.wait_for(task, 5)
    assert len(done) == 10
    assert await pending_count(r, stream, "test.stop") == 0


async def test_stop_while_blocked_returns_promptly(r, prefix):
    stream = f"{prefix}events:device"

    async def handler(d: Delivery) -> None:
        return None

    sub = Subscription(stream, "test.block", handlers={"device.registered.v1": handler})
    runner = ConsumerRunner(r, sub, consumer="c1", prefix=prefix, block_ms=30_000)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(runner.ready.wait(), 5)
    await asyncio.sleep(0.1)  # let it enter the 30 s blocking read
    runner.stop()
    await asyncio.wait_for(task, 2)
    # the connection is still usable afterwards
    assert await r.ping()


async def test_lag_metric_is_reported(r, prefix):
    stream = f"{prefix}events:device"
    gate = asyncio.Event()

    async def handler(d: Delivery) -> None:
        await gate.wait()

    pub = Publisher(r, producer="test")
    await pub.publish_batch(stream, [registered(i) for i in range(4)])
    sub = Subscription(stream, "test.lag", handlers={"device.registered.v1": handler})
    runner = ConsumerRunner(
        r, sub, consumer="c1", prefix=prefix, block_ms=50, stats_interval_s=0.05, batch_size=1
    )
    gate.set()
    async with Running(runner):
        await eventually(lambda: runner.stats.handled == 4)
        await pub.publish(stream, registered(9))
        await eventually(lambda: runner.stats.handled == 5)
        await eventually(lambda: runner.stats.lag == 0)


def _xlen_is(r: aioredis.Redis, key: str, n: int):
    async def check() -> bool:
        return int(await r.xlen(key)) == n

    return check


def _pending_is(r: aioredis.Redis, stream: str, group: str, n: int):
    async def check() -> bool:
        return await pending_count(r, stream, group) == n

    return check
