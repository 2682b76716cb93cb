"""Presence recovery: a redelivered batch, a crash between commit and ack, and a rebuild."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from libs.events.envelope import decode_entry, decode_event, entry_fields, new_envelope
from libs.events.projection import Delivery
from libs.events.publisher import Publisher
from libs.events.replay import rebuild
from libs.events.schemas import REGISTRY
from libs.events.schemas.device import DeviceStatusChanged
from libs.events.schemas.telemetry import HeartbeatReceived
from services.device.consumers import presence_service
from services.device.main import SPEC

from .conftest import World
from .test_presence_live import FAST, device

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
# Seconds after T0 of each heartbeat: steady, a gap past the late deadline, a gap past the timeout,
# a duplicate (seq 4 again) and a straggler (seq 2).
SCRIPT = [(0, 1), (1, 2), (3, 3), (10, 4), (10.5, 4), (11, 2), (12, 5)]
END = T0 + timedelta(seconds=100)
COLUMNS = "status, reason, last_seen, last_seq, last_time, late_at, offline_at, next_at, connected, last_late"


async def publish_script(world: World, ws: str, dev: str) -> list[Delivery]:
    """Publish the script's heartbeats for ``dev``; returns them as deliveries, in stream order."""
    assert world.host.redis is not None
    stream = world.prefix + "telemetry:heartbeats"
    pub = Publisher(world.host.redis, producer="telemetry")
    for s, seq in SCRIPT:
        at = T0 + timedelta(seconds=s)
        await pub.publish(stream, HeartbeatReceived(device_id=dev, workspace_id=ws, received_at=at, seq=seq))
    out = []
    for entry_id, fields in await world.host.redis.xrange(stream):
        env = decode_entry(fields)
        event = decode_event(env, REGISTRY)
        if getattr(event, "device_id", None) == dev:
            out.append(Delivery(stream, entry_id.decode(), env, event))
    return out


async def transitions(world: World, dev: str) -> list[tuple[str, str, str, datetime]]:
    events = [e for _env, e in await world.events()]
    return [
        (e.previous, e.status, e.reason, e.at)
        for e in events
        if isinstance(e, DeviceStatusChanged) and e.device_id == dev
    ]


async def state(world: World, dev: str) -> tuple[object, ...]:
    assert world.host.pool is not None
    row = await world.host.pool.fetchrow(f"SELECT {COLUMNS} FROM presence WHERE device_id = $1", dev)
    return tuple(row)


EXPECTED = [
    ("offline", "online", "first_heartbeat", T0),
    ("online", "late", "heartbeat_missed", T0 + timedelta(seconds=2.5)),
    ("late", "online", "heartbeat_resumed", T0 + timedelta(seconds=3)),
    ("online", "offline", "heartbeat_timeout", T0 + timedelta(seconds=6)),
    ("offline", "online", "heartbeat_resumed", T0 + timedelta(seconds=10)),
    ("online", "late", "heartbeat_missed", T0 + timedelta(seconds=11.5)),  # 7 s after the last late
    ("late", "online", "heartbeat_resumed", T0 + timedelta(seconds=12)),
    ("online", "offline", "heartbeat_timeout", T0 + timedelta(seconds=15)),  # late at 13.5 damped
]


async def test_crash_between_commit_and_ack_gives_the_same_transitions_and_rebuild_emits_none(world: World):
    ws = await world.workspace()
    calm, crashed = await device(world, ws, FAST), await device(world, ws, FAST)
    service = presence_service(world.host)
    for dev, redeliver in ((calm, False), (crashed, True)):
        batch = await publish_script(world, ws, dev)
        for i in range(0, len(batch), 2):
            await service.handle(batch[i : i + 2])
            if redeliver:  # the worker died after the commit, before XACK: the batch comes again
                await service.handle(batch[i : i + 2])
                await service.handle(batch[: i + 2])  # and a claim re-reads older entries too
    await service.sweep_once(now=END)
    assert await transitions(world, calm) == EXPECTED
    assert await transitions(world, crashed) == EXPECTED
    assert await state(world, calm) == await state(world, crashed)
    live = {dev: await state(world, dev) for dev in (calm, crashed)}
    assert live[calm][:3] == ("offline", "heartbeat_timeout", T0 + timedelta(seconds=12))

    n_events = len(await world.events())
    assert world.host.pool is not None and world.host.redis is not None
    projection = SPEC.projections(world.host)["presence"]
    applied = await rebuild(world.host.pool, world.host.redis, projection)
    assert applied >= 2 * len(SCRIPT)
    await service.sweep_once(now=END)  # deadlines passed before the rebuild are applied silently
    assert {dev: await state(world, dev) for dev in (calm, crashed)} == live
    assert len(await world.events()) == n_events  # the rebuild and the sweep after it emitted nothing
    outboxed = (
        "SELECT count(*) FROM outbox WHERE type = 'device.status_changed.v1' AND envelope::text LIKE $1"
    )
    for dev in (calm, crashed):  # no relay ran here: every outbox row is still there, once
        assert await world.count(outboxed, "%" + dev.encode().hex() + "%") == len(EXPECTED)


async def test_the_sweeper_waits_for_heartbeats_still_in_the_stream(world: World):
    """A backlog (or a worker that was down) must not make a device look late or offline: deadlines
    apply only up to the oldest entry the consumer group has not handled yet."""
    ws = await world.workspace()
    dev = await device(world, ws, FAST)
    assert world.host.redis is not None
    r, stream = world.host.redis, world.prefix + "telemetry:heartbeats"
    service = presence_service(world.host)
    t1 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    deliveries = []
    for i, at in enumerate((t1, t1 + timedelta(seconds=1))):  # entries stamped when they were received
        env = new_envelope(
            HeartbeatReceived(device_id=dev, workspace_id=ws, received_at=at, seq=i), producer="t"
        )
        entry = f"{int(at.timestamp() * 1000)}-0"
        await r.xadd(stream, entry_fields(env), id=entry)
        deliveries.append(Delivery(stream, entry, env, decode_event(env, REGISTRY)))
    await r.xgroup_create(stream, "device.presence", id=deliveries[0].entry_id)  # the first was handled
    await service.handle(deliveries[:1])

    assert await service.sweep_once() == 0  # the second heartbeat waits in the stream: nothing is due
    await service.handle(deliveries[1:])
    await r.xgroup_setid(stream, "device.presence", deliveries[1].entry_id)  # ... and is now handled
    assert await service.sweep_once() == 1
    second = t1 + timedelta(seconds=1)
    assert [t[1:] for t in await transitions(world, dev)] == [
        ("online", "first_heartbeat", t1),
        ("late", "heartbeat_missed", second + timedelta(seconds=1.5)),
        ("offline", "heartbeat_timeout", second + timedelta(seconds=3)),
    ]
