"""Dialect S heartbeat answers carry the device's queued commands, each exactly once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from libs.events.envelope import decode_entry, decode_event
from libs.events.publisher import Publisher
from libs.events.schemas import REGISTRY
from libs.events.schemas.commands import CommandQueued, CommandSent
from libs.events.schemas.telemetry import CommandsPiggybacked
from services.telemetry.handlers import ingest_of

from .conftest import World


async def queue(
    world: World, command_id: str, device_id: str, ws: str, *, ttl_s: float = 3600, age_s: float = 0
):
    now = datetime.now(UTC) - timedelta(seconds=age_s)
    event = CommandQueued(
        command_id=command_id,
        device_id=device_id,
        workspace_id=ws,
        command_type="ping",
        parameters={"n": 1},
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    assert world.host.redis is not None
    await Publisher(world.host.redis, producer="commands").publish(world.prefix + "events:commands", event)


async def beat(world: World, headers: dict[str, str]) -> dict:
    resp = await world.post(
        "/api/v1/device/heartbeat", {"status": "healthy", "metrics": {"cpu": 1}}, headers=headers
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_queued_commands_go_out_once_oldest_first_and_are_announced(world: World) -> None:
    dev, other = await world.device(), await world.device()
    feed = ingest_of(world.host).open_commands
    await queue(world, "c-old", dev.device_id, dev.workspace_id, age_s=2)
    await queue(world, "c-new", dev.device_id, dev.workspace_id)
    await queue(world, "c-expired", dev.device_id, dev.workspace_id, ttl_s=1, age_s=5)
    await queue(world, "c-sent", dev.device_id, dev.workspace_id)
    await queue(world, "c-other", other.device_id, other.workspace_id)
    assert world.host.redis is not None
    sent = CommandSent(
        command_id="c-sent",
        device_id=dev.device_id,
        workspace_id=dev.workspace_id,
        at=datetime.now(UTC),
        via="s_ws",
    )
    await Publisher(world.host.redis, producer="commands").publish(world.prefix + "events:commands", sent)
    await feed.catch_up()

    answer = await beat(world, dev.s)
    assert [c["id"] for c in answer["commands"]] == ["c-old", "c-new"]
    first = answer["commands"][0]
    assert first["command"] == "ping" and first["parameters"] == {"n": 1}
    assert (
        first["payload"]["id"] == "c-old"
        and first["payload"]["type"] == "ping"
        and first["payload"]["timestamp"]
    )
    assert "commands" not in await beat(world, dev.s)  # handed out once, even before the feed hears back
    entries = await world.host.redis.xrange(world.prefix + "events:telemetry")
    events = [decode_event(decode_entry(f), REGISTRY) for _id, f in entries]
    assert [(e.device_id, e.command_ids) for e in events if isinstance(e, CommandsPiggybacked)] == [
        (dev.device_id, ["c-old", "c-new"])
    ]


async def test_concurrent_heartbeats_hand_a_command_to_one_answer_only(world: World) -> None:
    dev = await world.device()
    await queue(world, "c-race", dev.device_id, dev.workspace_id)
    await ingest_of(world.host).open_commands.catch_up()
    answers = await asyncio.gather(*(beat(world, dev.s) for _ in range(8)))
    assert sum(len(a.get("commands", [])) for a in answers) == 1
    # a clean shutdown heartbeat never takes commands
    await queue(world, "c-late", dev.device_id, dev.workspace_id)
    await ingest_of(world.host).open_commands.catch_up()
    resp = await world.post("/api/v1/device/heartbeat", {"status": "offline", "metrics": {}}, headers=dev.s)
    assert "commands" not in resp.json()
