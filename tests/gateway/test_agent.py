"""The agent protocol on ``GET /api/v1/agent/ws``: handshake, hello/welcome, heartbeats, commands, results."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from libs.events.schemas.commands import CommandCancelled, CommandFinished
from libs.events.schemas.gateway import (
    AgentConnected,
    AgentDisconnected,
    CommandAcked,
    CommandPushed,
    CommandResultReceived,
)
from libs.events.schemas.telemetry import HeartbeatReceived

from .conftest import World, connect, recv, recv_until, send

PATH = "/api/v1/agent/ws"
PROTO = "fleet.agent.v1"


def now() -> str:
    return datetime.now(UTC).isoformat()


async def hello(ws, boot: str = "boot-1") -> dict:
    await send(ws, type="hello", boot=boot, agent_version="1.0")
    return await recv_until(ws, "welcome")


async def test_bearer_header_hello_welcome_and_connected_event(world: World):
    device_id, wsid, token = world.session()
    async with connect(
        world.url(PATH), subprotocols=[PROTO], additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        assert ws.subprotocol == PROTO
        welcome = await hello(ws)
        assert welcome["device_id"] == device_id
        assert welcome["heartbeat_interval_ms"] == 30_000
        assert welcome["protocol"] == PROTO
        cid = welcome["connection_id"]
        events = await world.until(lambda ev: [e for e in ev if isinstance(e, AgentConnected)])
        (event,) = events
        assert (event.device_id, event.workspace_id, event.dialect) == (device_id, wsid, "agent")
        assert event.connection_id == cid and event.gateway_id.startswith("gateway-")


async def test_token_as_subprotocol_is_accepted_and_the_version_echoed(world: World):
    device_id, _ws, token = world.session()
    async with connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token}"]) as ws:
        assert ws.subprotocol == PROTO
        assert (await hello(ws))["device_id"] == device_id


async def test_x_device_session_header(world: World):
    device_id, _ws, token = world.session()
    async with connect(
        world.url(PATH), subprotocols=[PROTO], additional_headers={"X-Device-Session": token}
    ) as ws:
        assert (await hello(ws))["device_id"] == device_id


@pytest.mark.parametrize("how", ["missing", "bad", "query", "other_protocol", "operator"])
async def test_handshake_refused(world: World, how: str):
    _d, _w, token = world.session()
    url, protocols, headers = world.url(PATH), [PROTO], {}
    if how == "bad":
        headers = {"Authorization": f"Bearer {token[:-3]}abc"}
    elif how == "query":
        url += f"?token={token}&access_token={token}"
    elif how == "other_protocol":
        protocols, headers = ["fleet.agent.v9"], {"Authorization": f"Bearer {token}"}
    elif how == "operator":
        headers = {"Authorization": "Bearer not-a-device-session"}
    with pytest.raises(InvalidStatus) as err:
        async with connect(url, subprotocols=protocols, additional_headers=headers):
            pass
    assert err.value.response.status_code == 403


async def test_first_frame_must_be_hello(world: World):
    _d, _w, token = world.session()
    async with connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token}"]) as ws:
        await send(ws, type="heartbeat", seq=1, sent_at=now())
        assert (await recv(ws))["code"] == "hello_required"
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1008


async def test_heartbeat_is_acked_after_its_stream_entry(world: World):
    device_id, wsid, token = world.session()
    async with connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token}"]) as ws:
        await hello(ws, "run-7")
        sent = now()
        await send(ws, type="heartbeat", seq=5, sent_at=sent, status="healthy", metrics={"cpu": 12.5})
        ack = await recv_until(ws, "heartbeat_ack")
        assert ack == {"type": "heartbeat_ack", "seq": 5}
        (beat,) = await world.events("telemetry:heartbeats")  # already there when acked
        assert isinstance(beat, HeartbeatReceived)
        assert (beat.device_id, beat.workspace_id, beat.dialect) == (device_id, wsid, "agent")
        assert (beat.seq, beat.boot, beat.status, beat.metrics) == (5, "run-7", "healthy", {"cpu": 12.5})
        assert beat.sent_at == datetime.fromisoformat(sent)


async def test_invalid_heartbeat_is_refused_and_not_stored(world: World):
    _d, _w, token = world.session()
    async with connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token}"]) as ws:
        await hello(ws)
        await send(ws, type="heartbeat", seq=1, sent_at=now(), metrics={"cpu": 500})
        err = await recv_until(ws, "error")
        assert err["code"] == "invalid_heartbeat"
        await send(ws, type="heartbeat", seq=-1, sent_at=now())
        assert (await recv_until(ws, "error"))["code"] == "invalid_heartbeat"
        await ws.send('{"type": "nonsense"}')
        assert (await recv_until(ws, "error"))["code"] == "bad_frame"
        await send(ws, type="heartbeat", seq=2, sent_at=now())
        assert (await recv_until(ws, "heartbeat_ack"))["seq"] == 2
    beats = await world.events("telemetry:heartbeats")
    assert [b.seq for b in beats] == [2]


async def test_bye_is_a_clean_shutdown_and_a_drop_is_socket_closed(world: World):
    device_id, _w, token = world.session()
    async with connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token}"]) as ws:
        first = (await hello(ws))["connection_id"]
        await ws.send('{"type": "bye"}')
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1000
    async with connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token}"]) as ws:
        second = (await hello(ws))["connection_id"]
    assert first != second
    closes = await world.until(lambda ev: [e for e in ev if isinstance(e, AgentDisconnected)][1:] and ev)
    gone = {e.connection_id: e.reason for e in closes if isinstance(e, AgentDisconnected)}
    assert gone == {first: "agent_shutdown", second: "socket_closed"}
    assert all(e.device_id == device_id for e in closes)


async def test_queued_command_is_pushed_and_acked_and_answered(world: World):
    device_id, wsid, token = world.session()
    async with connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token}"]) as ws:
        conn = (await hello(ws))["connection_id"]
        cid = await world.queue(device_id, wsid, "reboot", parameters={"delay": 5})
        cmd = await recv_until(ws, "command")
        assert (cmd["command_id"], cmd["command_type"], cmd["parameters"], cmd["attempt"]) == (
            cid,
            "reboot",
            {"delay": 5},
            1,
        )
        pushed = await world.until(lambda ev: [e for e in ev if isinstance(e, CommandPushed)])
        assert (pushed[0].command_id, pushed[0].connection_id, pushed[0].dialect) == (cid, conn, "agent")
        await send(ws, type="ack", command_id=cid)
        await world.until(lambda ev: [e for e in ev if isinstance(e, CommandAcked) and e.command_id == cid])
        result = {"type": "result", "command_id": cid, "status": "succeeded", "output": "ok"}
        await send(ws, **result)
        ack = await recv_until(ws, "result_ack")
        assert ack == {"type": "result_ack", "command_id": cid, "duplicate": False}
        (res,) = [e for e in await world.events() if isinstance(e, CommandResultReceived)]
        assert (res.command_id, res.device_id, res.status, res.output, res.dialect) == (
            cid,
            device_id,
            "succeeded",
            "ok",
            "agent",
        )
        await send(ws, **result)
        assert (await recv_until(ws, "result_ack"))["duplicate"] is True
    assert len([e for e in await world.events() if isinstance(e, CommandResultReceived)]) == 1


async def test_result_after_finished_is_a_duplicate(world: World):
    device_id, wsid, token = world.session()
    cid = await world.queue(device_id, wsid)
    await world.command(
        CommandFinished(
            command_id=cid, device_id=device_id, workspace_id=wsid, status="succeeded", at=datetime.now(UTC)
        )
    )
    await world.fed()
    async with connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token}"]) as ws:
        await hello(ws)
        await send(ws, type="result", command_id=cid, status="failed")
        assert (await recv_until(ws, "result_ack"))["duplicate"] is True


async def test_flush_on_connect_oldest_first_and_attempt_counts_reconnects(world: World):
    device_id, wsid, token = world.session()
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    newer = await world.queue(device_id, wsid, "b", created_at=t0 + timedelta(seconds=2))
    older = await world.queue(device_id, wsid, "a", created_at=t0)
    expired = await world.queue(device_id, wsid, "x", created_at=t0 - timedelta(hours=1), ttl_s=60)
    cancelled = await world.queue(device_id, wsid, "c", created_at=t0 + timedelta(seconds=1))
    await world.command(
        CommandCancelled(command_id=cancelled, device_id=device_id, workspace_id=wsid, at=datetime.now(UTC))
    )
    await world.queue("another-device", wsid, "z")
    await world.fed()
    for attempt in (1, 2):
        async with connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token}"]) as ws:
            await hello(ws)
            got = [await recv_until(ws, "command"), await recv_until(ws, "command")]
            assert [(c["command_id"], c["attempt"]) for c in got] == [(older, attempt), (newer, attempt)]
            with pytest.raises(TimeoutError):
                await recv_until(ws, "command", timeout=0.3)
    pushed = [e.command_id for e in await world.events() if isinstance(e, CommandPushed)]
    assert sorted(pushed) == sorted([older, newer] * 2) and expired not in pushed


async def test_two_devices_get_only_their_own_commands(world: World):
    _a, wsid, token_a = world.session()
    b, _w, token_b = world.session(ws=wsid)
    async with (
        connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token_a}"]) as wa,
        connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token_b}"]) as wb,
    ):
        await hello(wa)
        await hello(wb)
        cb = await world.queue(b, wsid)
        assert (await recv_until(wb, "command"))["command_id"] == cb
        with pytest.raises(TimeoutError):
            await recv_until(wa, "command", timeout=0.3)


async def test_rate_limit_drops_then_closes_a_flood(database_url, prefix):
    from .conftest import served

    async with served(database_url, prefix, frame_rate_per_s=3, flood_factor=3) as world:
        _d, _w, token = world.session()
        async with connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token}"]) as ws:
            await hello(ws)  # hello is frame 1 of this second (or the first of the next)
            for i in range(20):
                try:
                    await send(ws, type="heartbeat", seq=i, sent_at=now())
                except ConnectionClosed:
                    break
            codes = []
            with pytest.raises(ConnectionClosed):
                while True:
                    frame = await recv(ws)
                    codes.append(frame.get("code"))
            assert "rate_limited" in codes
            assert ws.close_code == 1008
        await asyncio.sleep(0)


async def test_no_hello_in_time_closes_the_socket_unannounced(database_url, prefix):
    from .conftest import served

    async with served(database_url, prefix, hello_timeout_s=0.3) as world:
        _d, _w, token = world.session()
        async with connect(world.url(PATH), subprotocols=[PROTO, f"auth.{token}"]) as ws:
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1008
        assert await world.events() == []  # never connected, so never disconnected


async def test_a_bad_header_token_does_not_hide_a_good_subprotocol_one(world: World):
    device_id, _w, token = world.session()
    async with connect(
        world.url(PATH),
        subprotocols=[PROTO, f"auth.{token}"],
        additional_headers={"X-Device-Session": "stale"},
    ) as ws:
        assert (await hello(ws))["device_id"] == device_id
