"""The worker: gateway and telemetry events move commands along (once each, redelivery changes
nothing), results map each dialect's words, and the sweeper expires commands within about a second."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from libs.events.envelope import entry_fields
from libs.events.publisher import Publisher
from libs.events.schemas.commands import (
    CommandCancelled,
    CommandDelivered,
    CommandExpired,
    CommandFinished,
    CommandSent,
)
from libs.events.schemas.gateway import CommandAcked, CommandPushed, CommandResultReceived
from libs.events.schemas.telemetry import CommandsPiggybacked

from .conftest import Device, World, until


def now() -> datetime:
    return datetime.now(UTC)


def pushed(dev: Device, cid: str, dialect: str = "agent") -> CommandPushed:
    return CommandPushed(
        command_id=cid,
        device_id=dev.device_id,
        workspace_id=dev.workspace_id,
        gateway_id="gw1",
        dialect=dialect,
        at=now(),
    )


def result(dev: Device, cid: str, status: str, dialect: str = "agent", **kw: object) -> CommandResultReceived:
    return CommandResultReceived(
        command_id=cid,
        device_id=dev.device_id,
        workspace_id=dev.workspace_id,
        dialect=dialect,
        status=status,
        at=now(),
        **kw,  # type: ignore[arg-type]
    )


async def state(world: World, cid: str) -> str:
    return str((await world.row(cid))["state"])


async def test_pushed_acked_result(worker: World) -> None:
    world = worker
    dev = await world.device()
    cid = (await world.queue(dev))["command_id"]
    await world.publish("events:gateway", pushed(dev, cid))
    await until(lambda: _is(world, cid, "sent"))
    ack = CommandAcked(command_id=cid, device_id=dev.device_id, workspace_id=dev.workspace_id, at=now())
    await world.publish("events:gateway", ack)
    await until(lambda: _is(world, cid, "delivered"))
    await world.publish("events:gateway", result(dev, cid, "succeeded", result={"pong": 1}, output="ok"))
    await until(lambda: _is(world, cid, "succeeded"))
    row = await world.row(cid)
    assert row["attempts"] == 1 and row["via"] == "agent" and row["output"] == "ok"
    assert row["sent_at"] and row["delivered_at"] and row["finished_at"]
    events = await world.events((CommandSent, CommandDelivered, CommandFinished))
    assert [type(e) for e in events] == [CommandSent, CommandDelivered, CommandFinished]
    fin = events[-1]
    assert isinstance(fin, CommandFinished) and (fin.status, fin.result, fin.via) == (
        "succeeded",
        {"pong": 1},
        "agent",
    )


async def test_w_words_failed_keeps_error_and_later_results_are_duplicates(worker: World) -> None:
    world = worker
    dev = await world.device()
    cid = (await world.queue(dev))["command_id"]
    await world.publish("events:gateway", pushed(dev, cid, "w"))
    await world.publish("events:gateway", result(dev, cid, "failed", "w", error="no such pin"))
    await world.publish("events:gateway", result(dev, cid, "completed", "w"))
    await until(lambda: _is(world, cid, "failed"))
    await asyncio.sleep(0.3)
    h = world.auth(dev.workspace_id, w=True)
    got = (await world.client.get(f"/api/devices/{dev.device_id}/commands/{cid}", headers=h)).json()
    assert (got["status"], got["error_message"]) == ("failed", "no such pin")
    assert got["sent_at"] and got["completed_at"]
    (fin,) = await world.events((CommandFinished,))
    assert (fin.status, fin.reported_status, fin.via) == ("failed", "failed", "w_ws")


async def test_redelivered_event_applies_once(worker: World) -> None:
    world = worker
    dev = await world.device()
    cid = (await world.queue(dev))["command_id"]
    assert world.host.redis is not None
    env = Publisher(world.host.redis, producer="gateway").envelope(pushed(dev, cid))
    for _ in range(3):  # the same envelope three times: one effect
        await world.host.redis.xadd(world.prefix + "events:gateway", entry_fields(env))
    await until(lambda: _is(world, cid, "sent"))
    await asyncio.sleep(0.3)
    assert (await world.row(cid))["attempts"] == 1
    assert len(await world.events((CommandSent,))) == 1
    await world.publish("events:gateway", pushed(dev, cid, "s"))  # a reconnect: a new attempt
    await until(lambda: _attempts(world, cid, 2))
    sent = await world.events((CommandSent,))
    assert [(e.attempt, e.via) for e in sent] == [(1, "agent"), (2, "s_ws")]


async def test_piggybacked_commands_are_sent_via_s_heartbeat(worker: World) -> None:
    world = worker
    dev = await world.device()
    ids = [(await world.queue(dev))["command_id"] for _ in range(2)]
    event = CommandsPiggybacked(
        device_id=dev.device_id, workspace_id=dev.workspace_id, command_ids=ids, at=now()
    )
    await world.publish("events:telemetry", event)
    await until(lambda: _is(world, ids[1], "sent"))
    sent = await world.events((CommandSent,))
    assert sorted(e.command_id for e in sent) == sorted(ids) and {e.via for e in sent} == {"s_heartbeat"}


async def test_events_naming_another_device_or_unknown_command_are_ignored(worker: World) -> None:
    world = worker
    dev, other = await world.device(), await world.device()
    cid = (await world.queue(dev))["command_id"]
    await world.publish("events:gateway", pushed(other, cid))
    await world.publish("events:gateway", pushed(dev, "0190a0a0-0000-7000-8000-000000000000"))
    await world.publish("events:gateway", pushed(dev, cid, "w"))
    await until(lambda: _is(world, cid, "sent"))
    (sent,) = await world.events((CommandSent,))
    assert sent.via == "w_ws"


async def test_result_after_cancel_is_ignored(worker: World) -> None:
    world = worker
    dev = await world.device()
    cid = (await world.queue(dev))["command_id"]
    resp = await world.client.post(f"/api/v1/commands/{cid}/cancel", headers=world.auth(dev.workspace_id))
    assert resp.status_code == 200
    await world.publish("events:gateway", result(dev, cid, "succeeded"))
    marker = (await world.queue(dev))["command_id"]
    await world.publish("events:gateway", pushed(dev, marker))
    await until(lambda: _is(world, marker, "sent"))  # the result before it was handled too
    assert await state(world, cid) == "cancelled"
    assert await world.events((CommandFinished,)) == []
    assert len(await world.events((CommandCancelled,))) == 1


async def test_expiry_within_a_second_and_expired_leave_the_k_list(worker: World) -> None:
    world = worker
    dev = await world.device()
    short = (await world.queue(dev, ttl_s=1))["command_id"]
    long = (await world.queue(dev))["command_id"]
    listed = (await world.client.get("/api/v1/devices/pending", headers=dev.k)).json()
    assert [c["command_id"] for c in listed] == [short, long]
    deadline = datetime.fromisoformat(
        (await world.client.get(f"/api/v1/commands/{short}", headers=world.auth(dev.workspace_id))).json()[
            "expires_at"
        ]
    )
    await until(lambda: _is(world, short, "expired"), timeout=5)
    seen = time.time()
    assert seen - deadline.timestamp() < 1.0
    (e,) = await world.events((CommandExpired,))
    assert e.command_id == short and e.at >= deadline
    listed = (await world.client.get("/api/v1/devices/pending", headers=dev.k)).json()
    assert [c["command_id"] for c in listed] == [long]
    # a late result for the expired command changes nothing
    resp = await world.client.post(
        f"/api/v1/device/commands/{short}/result", json={"status": "success"}, headers=dev.s
    )
    assert resp.status_code == 200 and resp.json()["status"] == "expired" and resp.json()["duplicate"] is True
    assert await world.events((CommandFinished,)) == []


async def test_sweeper_alone(world: World) -> None:
    from services.commands.handlers import Commands

    dev = await world.device()
    cid = (await world.queue(dev, ttl_s=5))["command_id"]
    commands = Commands(world.host)
    assert await commands.sweep_once(now() + timedelta(seconds=4)) == 0
    assert await commands.sweep_once(now() + timedelta(seconds=6)) == 1
    assert await commands.sweep_once(now() + timedelta(seconds=7)) == 0
    assert await state(world, cid) == "expired"


async def _is(world: World, cid: str, expected: str) -> bool:
    return await state(world, cid) == expected


async def _attempts(world: World, cid: str, n: int) -> bool:
    return int((await world.row(cid))["attempts"]) == n


async def test_concurrent_k_polls_mark_each_command_sent_once(world: World) -> None:
    dev = await world.device()
    ids = [(await world.queue(dev))["command_id"] for _ in range(3)]
    polls = await asyncio.gather(
        *(world.client.get("/api/v1/devices/pending", headers=dev.k) for _ in range(6))
    )
    assert all([c["command_id"] for c in p.json()] == ids for p in polls)
    sent = await world.events((CommandSent,))
    assert sorted(e.command_id for e in sent) == sorted(ids)
    assert {(await world.row(i))["attempts"] for i in ids} == {1}


async def test_cancelled_command_leaves_the_k_list(world: World) -> None:
    dev = await world.device()
    a, b = (await world.queue(dev))["command_id"], (await world.queue(dev))["command_id"]
    await world.client.post(f"/api/v1/commands/{a}/cancel", headers=world.auth(dev.workspace_id))
    listed = (await world.client.get("/api/v1/devices/pending", headers=dev.k)).json()
    assert [c["command_id"] for c in listed] == [b]


async def test_oversized_or_nul_results_from_events_are_stored_clipped(worker: World) -> None:
    world = worker
    dev = await world.device()
    cid = (await world.queue(dev))["command_id"]
    big = result(
        dev, cid, "failed", "agent", output="o" * 50_000, error="e\x00rr", result={"x": "y" * 70_000}
    )
    await world.publish("events:gateway", big)
    await until(lambda: _is(world, cid, "failed"))
    row = await world.row(cid)
    assert len(row["output"]) == 10 * 1024 and row["error"] == "err" and '"truncated": true' in row["result"]


async def test_event_times_without_a_zone_are_utc(worker: World) -> None:
    world = worker
    dev = await world.device()
    cid = (await world.queue(dev))["command_id"]
    naive = datetime.now(UTC).replace(tzinfo=None)
    event = CommandPushed(
        command_id=cid,
        device_id=dev.device_id,
        workspace_id=dev.workspace_id,
        gateway_id="g",
        dialect="w",
        at=naive,
    )
    await world.publish("events:gateway", event)
    await until(lambda: _is(world, cid, "sent"))
    assert (await world.row(cid))["sent_at"] == naive.replace(tzinfo=UTC)


async def test_deleting_a_device_cancels_its_open_commands(worker: World) -> None:
    from libs.events.schemas.device import DeviceDeleted

    world = worker
    dev, other = await world.device(), await world.device()
    open_ids = [(await world.queue(dev))["command_id"] for _ in range(2)]
    done = (await world.queue(dev))["command_id"]
    await world.client.put(f"/api/v1/devices/{done}/status", json={"status": "completed"}, headers=dev.k)
    kept = (await world.queue(other))["command_id"]
    await world.publish(
        "events:device", DeviceDeleted(device_id=dev.device_id, workspace_id=dev.workspace_id)
    )
    await until(lambda: _is(world, open_ids[1], "cancelled"))
    assert await state(world, open_ids[0]) == "cancelled"
    assert (await state(world, done), await state(world, kept)) == ("succeeded", "queued")
    cancelled = await world.events((CommandCancelled,))
    assert sorted(e.command_id for e in cancelled) == sorted(open_ids)
    assert {e.by for e in cancelled} == {"system:device_deleted"}
