"""Retention never trims what a group still needs; tails fan every event out to every reader."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

from libs.events.publisher import Publisher
from libs.events.retention import RetentionPolicy, safe_trim_id, trim_acknowledged, trim_all
from libs.events.schemas.device import DeviceRegistered
from libs.events.schemas.telemetry import HeartbeatReceived
from libs.events.tail import tail


def hb(i: int) -> HeartbeatReceived:
    return HeartbeatReceived(device_id=f"d{i}", workspace_id="w", received_at=datetime.now(UTC), seq=i)


async def test_trim_keeps_every_unacknowledged_entry(r, prefix):
    stream = f"{prefix}telemetry:heartbeats"
    pub = Publisher(r, producer="telemetry")
    ids = await pub.publish_batch(stream, [hb(i) for i in range(300)])
    await r.xgroup_create(stream, "fast", id="0")
    await r.xgroup_create(stream, "slow", id="0")
    # fast reads and acks 250; slow reads 200 and acks all but entries 120 and 150
    fast = await r.xreadgroup("fast", "f", {stream: ">"}, count=250)
    await r.xack(stream, "fast", *[i for i, _ in fast[0][1]])
    slow = await r.xreadgroup("slow", "s", {stream: ">"}, count=200)
    slow_ids = [i.decode() for i, _ in slow[0][1]]
    await r.xack(stream, "slow", *[i for i in slow_ids if i not in (ids[120], ids[150])])
    assert await safe_trim_id(r, stream) == ids[120]
    removed = await trim_acknowledged(r, stream, approximate=False)
    assert removed == 120
    remaining = [i.decode() for i, _ in await r.xrange(stream)]
    assert remaining == ids[120:]
    # once the slow group acks, the trim point moves to its cursor, never past the fast group's
    await r.xack(stream, "slow", ids[120], ids[150])
    await trim_acknowledged(r, stream, approximate=False)
    first_left = (await r.xrange(stream, count=1))[0][0].decode()
    assert first_left == ids[200]


async def test_trim_property_random_acks(r, prefix):
    """Whatever the groups acknowledged, no pending or unread entry is ever trimmed."""
    rng = random.Random(7)
    stream = f"{prefix}telemetry:metrics"
    pub = Publisher(r, producer="telemetry")
    await pub.publish_batch(stream, [hb(i) for i in range(500)])
    groups = ["a", "b", "c"]
    for g in groups:
        await r.xgroup_create(stream, g, id="0")
    for _round in range(10):
        for g in groups:
            got = await r.xreadgroup(g, "x", {stream: ">"}, count=rng.randint(1, 60)) or [[None, []]]
            acked = [i for i, _ in got[0][1] if rng.random() < 0.8]
            if acked:
                await r.xack(stream, g, *acked)
        needed = set()
        for g in groups:
            pend = await r.xpending_range(stream, g, min="-", max="+", count=10_000)
            needed |= {p["message_id"] for p in pend}
            info = {x["name"].decode(): x for x in await r.xinfo_groups(stream)}
            cursor = info[g]["last-delivered-id"]
            needed |= {i for i, _ in await r.xrange(stream, min=f"({cursor.decode()}")}
        await trim_acknowledged(r, stream, approximate=rng.random() < 0.5)
        present = {i for i, _ in await r.xrange(stream)}
        assert needed <= present


async def test_streams_without_groups_and_events_streams_are_kept(r, prefix):
    pub = Publisher(r, producer="x")
    await pub.publish_batch(f"{prefix}telemetry:nobody", [hb(i) for i in range(10)])
    ev = f"{prefix}events:device"
    await pub.publish_batch(
        ev, [DeviceRegistered(device_id="d", workspace_id="w", name="n", device_type="virtual")] * 10
    )
    await r.xgroup_create(ev, "g", id="$")  # everything acknowledged from this group's view
    removed = await trim_all(r, RetentionPolicy(prefix=prefix))
    assert removed == {f"{prefix}telemetry:nobody": 0}
    assert await r.xlen(f"{prefix}telemetry:nobody") == 10
    assert await r.xlen(ev) == 10  # the log is kept unless an age limit is configured


async def test_every_tail_sees_every_event(r, prefix):
    streams = [f"{prefix}events:device", f"{prefix}events:gateway"]
    pub = Publisher(r, producer="x")
    await pub.publish(
        streams[0], DeviceRegistered(device_id="before", workspace_id="w", name="n", device_type="virtual")
    )
    seen: dict[int, list[str]] = {0: [], 1: []}
    ready = [asyncio.Event(), asyncio.Event()]

    async def reader(k: int) -> None:
        gen = tail(r, streams, block_ms=50)
        ready[k].set()
        async for rec in gen:
            seen[k].append(rec.envelope.device_id or "")
            if len(seen[k]) == 20:
                return

    tasks = [asyncio.create_task(reader(k)) for k in (0, 1)]
    await asyncio.gather(*(e.wait() for e in ready))
    await asyncio.sleep(0.1)  # let both resolve "$" before the burst
    for i in range(10):
        await pub.publish(
            streams[i % 2],
            DeviceRegistered(device_id=f"d{i}", workspace_id="w", name="n", device_type="virtual"),
        )
    await r.xadd(streams[0], {"envelope": "not json"})  # skipped, not fatal
    for i in range(10, 20):
        await pub.publish(
            streams[i % 2],
            DeviceRegistered(device_id=f"d{i}", workspace_id="w", name="n", device_type="virtual"),
        )
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    for k in (0, 1):
        assert sorted(seen[k]) == sorted(f"d{i}" for i in range(20))
        assert "before" not in seen[k]


async def test_tail_ends_when_stopped(r, prefix):
    stop = asyncio.Event()
    got: list[str] = []

    async def reader() -> None:
        async for rec in tail(r, [f"{prefix}events:device"], block_ms=100, stop=stop):
            got.append(rec.entry_id)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 2)  # returns after the current read, no cancel needed
    assert got == []
