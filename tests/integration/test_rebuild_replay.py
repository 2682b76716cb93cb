"""Replay filters and rebuild: a projection rebuilt from the log equals the live one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from libs.events.consumer import ConsumerRunner, Subscription
from libs.events.pg import Conn
from libs.events.projection import Delivery, Projection, projection_handler
from libs.events.publisher import Publisher
from libs.events.replay import ReplayFilter, TrimmedStreams, rebuild, replay
from libs.events.schemas.device import DeviceRegistered, DeviceStatusChanged

from .helpers import Running, eventually

DDL = """
CREATE TABLE devices (device_id text PRIMARY KEY, name text NOT NULL, status text NOT NULL DEFAULT 'offline',
                      transitions int NOT NULL DEFAULT 0);
"""


async def apply(conn: Conn, batch: list[Delivery]) -> None:
    for d in batch:
        e = d.event
        if isinstance(e, DeviceRegistered):
            await conn.execute(
                "INSERT INTO devices (device_id, name) VALUES ($1, $2) "
                "ON CONFLICT (device_id) DO UPDATE SET name = EXCLUDED.name",
                e.device_id,
                e.name,
            )
        elif isinstance(e, DeviceStatusChanged):
            await conn.execute(
                "UPDATE devices SET status = $2, transitions = transitions + 1 WHERE device_id = $1",
                e.device_id,
                e.status,
            )


def projection(stream: str) -> Projection:
    return Projection(
        name="registry",
        consumer="device.registry",
        streams=(stream,),
        tables=("devices",),
        types=frozenset({"device.registered.v1", "device.status_changed.v1"}),
        apply=apply,
    )


def history(n: int) -> list[DeviceRegistered | DeviceStatusChanged]:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    out: list[DeviceRegistered | DeviceStatusChanged] = []
    for i in range(n):
        out.append(DeviceRegistered(device_id=f"d{i}", workspace_id="w", name=f"n{i}", device_type="esp32"))
    for k in range(n * 3):
        i = (k * 7) % n
        out.append(
            DeviceStatusChanged(
                device_id=f"d{i}",
                workspace_id="w",
                status=["online", "late", "offline"][k % 3],
                previous="x",
                reason="test",
                at=at + timedelta(seconds=k),
            )
        )
    return out


async def snapshot(pool: asyncpg.Pool) -> list[tuple[object, ...]]:
    return [tuple(r) for r in await pool.fetch("SELECT * FROM devices ORDER BY device_id")]


async def test_rebuild_equals_live_projection(r, prefix, pool):
    stream = f"{prefix}events:device"
    await pool.execute(DDL)
    proj = projection(stream)
    pub = Publisher(r, producer="device")
    events = history(200)
    await pub.publish_batch(stream, events)
    sub = Subscription(
        stream, "device.registry", batch=projection_handler(pool, proj), batch_types=proj.types
    )
    runner = ConsumerRunner(r, sub, consumer="c1", block_ms=50)
    async with Running(runner):
        await eventually(lambda: runner.stats.handled == len(events))
    live = await snapshot(pool)
    assert len(live) == 200 and any(row[3] > 0 for row in live)
    await pool.execute("UPDATE devices SET name = 'corrupted'")  # a read model gone wrong
    progress: list[tuple[int, int]] = []
    applied = await rebuild(pool, r, proj, page_size=97, progress=lambda d, t: progress.append((d, t)))
    assert applied == len(events)
    assert await snapshot(pool) == live
    assert progress[-1] == (len(events), len(events))
    # the live consumer, still running after a rebuild, does not apply anything twice
    async with Running(ConsumerRunner(r, sub, consumer="c2", block_ms=50)) as again:
        await pub.publish(
            stream, DeviceRegistered(device_id="new", workspace_id="w", name="new", device_type="virtual")
        )
        await eventually(lambda: again.stats.handled == 1)
    assert len(await snapshot(pool)) == 201


async def test_replay_pages_and_filters(r, prefix):
    stream = f"{prefix}events:device"
    pub = Publisher(r, producer="device")
    events = history(30)
    ids = await pub.publish_batch(stream, events)
    await r.xadd(stream, {"type": "device.registered.v1", "envelope": "broken"})

    async def collect(**kw: object) -> list:
        return [rec async for rec in replay(r, stream, page_size=7, **kw)]  # type: ignore[arg-type]

    everything = await collect()
    assert [rec.entry_id for rec in everything[:-1]] == ids
    assert everything[-1].envelope is None and everything[-1].error
    only_status = await collect(flt=ReplayFilter(types={"device.status_changed.v1"}))
    assert len(only_status) == 90
    d3 = await collect(flt=ReplayFilter(device_id="d3", types={"device.status_changed.v1"}))
    assert {rec.envelope.device_id for rec in d3} == {"d3"} and len(d3) == 3
    from_middle = await collect(start=ids[50])
    assert from_middle[0].entry_id == ids[50]
    future = await collect(flt=ReplayFilter(since=datetime.now(UTC) + timedelta(hours=1)))
    assert future == []
    past = await collect(flt=ReplayFilter(until=datetime(2000, 1, 1, tzinfo=UTC)))
    assert past == []


async def test_replay_follow_yields_new_entries(r, prefix):
    import asyncio

    stream = f"{prefix}events:device"
    pub = Publisher(r, producer="device")
    await pub.publish_batch(stream, history(1)[:1])
    got: list[str] = []

    async def follow() -> None:
        async for rec in replay(r, stream, follow=True, block_ms=100):
            got.append(rec.envelope.device_id)
            if len(got) == 3:
                return

    task = asyncio.create_task(follow())
    await eventually(lambda: len(got) == 1)
    await pub.publish_batch(
        stream,
        [
            DeviceRegistered(device_id=f"f{i}", workspace_id="w", name="f", device_type="virtual")
            for i in range(2)
        ],
    )
    await asyncio.wait_for(task, 5)
    assert got == ["d0", "f0", "f1"]


def fold(events: list[DeviceRegistered | DeviceStatusChanged]) -> list[tuple[object, ...]]:
    """The read model computed in memory, for comparison."""
    rows: dict[str, list[object]] = {}
    for e in events:
        if isinstance(e, DeviceRegistered):
            rows.setdefault(e.device_id, [e.device_id, e.name, "offline", 0])[1] = e.name
        elif e.device_id in rows:
            rows[e.device_id][2] = e.status
            rows[e.device_id][3] += 1  # type: ignore[operator]
    return [tuple(rows[k]) for k in sorted(rows)]


async def test_rebuild_while_the_live_consumer_works_applies_everything_once(r, prefix, pool):
    import asyncio

    stream = f"{prefix}events:device"
    await pool.execute(DDL)
    proj = projection(stream)
    pub = Publisher(r, producer="device")
    events = history(300)
    await pub.publish_batch(stream, events)
    sub = Subscription(
        stream, "device.registry", batch=projection_handler(pool, proj), batch_types=proj.types
    )
    runner = ConsumerRunner(r, sub, consumer="live", block_ms=50, batch_size=20)
    more = [
        DeviceStatusChanged(
            device_id=f"d{i % 300}",
            workspace_id="w",
            status="online",
            previous="x",
            reason="late",
            at=datetime.now(UTC),
        )
        for i in range(600)
    ]

    async def keep_publishing() -> None:
        for k in range(0, len(more), 10):
            await pub.publish_batch(stream, more[k : k + 10])
            await asyncio.sleep(0.002)

    async with Running(runner):
        writer = asyncio.create_task(keep_publishing())
        for _ in range(3):  # rebuild repeatedly while the live consumer and the writer race it
            await rebuild(pool, r, proj, page_size=50)
        await writer
        await eventually(lambda: runner.stats.lag == 0 and runner.stats.pending == 0, 20)
        await eventually(lambda: snapshot_equals(pool, fold(events + more)), 20)


async def snapshot_equals(pool: asyncpg.Pool, expected: list[tuple[object, ...]]) -> bool:
    return await snapshot(pool) == expected


async def test_a_rebuild_never_double_applies_a_batch_the_live_consumer_holds(r, prefix, pool):
    """Deterministic interleaving: the live handler has claimed an event when the rebuild starts."""
    import asyncio

    stream = f"{prefix}events:device"
    await pool.execute(DDL)
    entered, gate = asyncio.Event(), asyncio.Event()
    hold = False

    async def held_apply(conn: Conn, batch: list[Delivery]) -> None:
        if hold:
            entered.set()
            await gate.wait()  # inside the live transaction, after processed_events, before the effect
        await apply(conn, batch)

    proj = projection(stream)
    live_proj = Projection(proj.name, proj.consumer, proj.streams, proj.tables, proj.types, held_apply)
    sub = Subscription(
        stream, "device.registry", batch=projection_handler(pool, live_proj), batch_types=proj.types
    )
    runner = ConsumerRunner(r, sub, consumer="live", block_ms=50)
    pub = Publisher(r, producer="device")
    events = history(5)
    await pub.publish_batch(stream, events)
    async with Running(runner):
        await eventually(lambda: runner.stats.handled == len(events))
        hold = True
        last = DeviceStatusChanged(
            device_id="d1",
            workspace_id="w",
            status="late",
            previous="online",
            reason="heartbeat_missed",
            at=datetime.now(UTC),
        )
        await pub.publish(stream, last)
        await asyncio.wait_for(entered.wait(), 5)
        rebuilding = asyncio.create_task(rebuild(pool, r, proj))
        # the rebuild must wait for the live transaction (it holds the tables) instead of racing it
        await eventually(lambda: rebuilding.done() or truncate_is_waiting(pool), 10)
        hold = False
        gate.set()
        await asyncio.wait_for(rebuilding, 10)
        await eventually(lambda: runner.stats.handled == len(events) + 1)
    assert await snapshot(pool) == fold([*events, last])


async def truncate_is_waiting(pool: asyncpg.Pool) -> bool:
    n = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'TRUNCATE%'"
    )
    return bool(n)


async def test_rebuild_refuses_a_trimmed_stream_unless_allowed(r, prefix, pool):
    stream = f"{prefix}events:device"
    await pool.execute(DDL)
    proj = projection(stream)
    events = history(10)
    await Publisher(r, producer="device").publish_batch(stream, events)
    await rebuild(pool, r, proj)
    before = await snapshot(pool)
    await r.xtrim(stream, maxlen=5, approximate=False)  # retention took the registrations
    with pytest.raises(TrimmedStreams, match=r"keeps 5 of the 40 entries.*--allow-trimmed"):
        await rebuild(pool, r, proj)
    assert await snapshot(pool) == before  # refused before touching anything
    assert await rebuild(pool, r, proj, allow_trimmed=True) == 5
    assert await snapshot(pool) == []  # what a rebuild from the kept entries knows: no registrations
