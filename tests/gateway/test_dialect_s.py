"""Dialect S on ``GET /api/v1/device/ws`` exactly as PROTOCOLS.md writes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from websockets.exceptions import InvalidStatus

from libs.events.schemas.gateway import (
    AgentConnected,
    AgentDisconnected,
    CommandResultReceived,
)
from libs.events.schemas.telemetry import HeartbeatReceived

from .conftest import World, connect, pushes, recv, recv_until, send

PATH = "/api/v1/device/ws"


async def test_header_token_connected_frame_first(world: World):
    device_id, wsid, token = world.session()
    async with connect(world.url(PATH), additional_headers={"X-Device-Session": token}) as ws:
        first = await recv(ws)
        assert first["type"] == "connected" and first["deviceId"] == device_id
        assert datetime.fromisoformat(first["timestamp"]) <= datetime.now(UTC)
        assert ws.subprotocol is None
        (event,) = await world.until(lambda ev: [e for e in ev if isinstance(e, AgentConnected)])
        assert (event.device_id, event.workspace_id, event.dialect) == (device_id, wsid, "s")
    (gone,) = await world.until(lambda ev: [e for e in ev if isinstance(e, AgentDisconnected)])
    assert (gone.reason, gone.connection_id) == ("socket_closed", event.connection_id)


@pytest.mark.parametrize("form", ["raw", "dotted", "pair"])
async def test_token_in_subprotocol_and_the_chosen_value_echoed(world: World, form: str):
    device_id, _w, token = world.session()
    offered, echo = {
        "raw": ([token], token),
        "dotted": ([f"auth.{token}"], f"auth.{token}"),
        "pair": (["auth", token], "auth"),
    }[form]
    async with connect(world.url(PATH), subprotocols=offered) as ws:
        assert ws.subprotocol == echo
        assert (await recv(ws))["deviceId"] == device_id


@pytest.mark.parametrize("how", ["missing", "bad", "query", "bad_subprotocol"])
async def test_bad_token_rejects_the_handshake(world: World, how: str):
    _d, _w, token = world.session()
    url, headers, protocols = world.url(PATH), {}, None
    if how == "bad":
        headers = {"X-Device-Session": token + "x"}
    elif how == "query":
        url += f"?token={token}&session={token}"
    elif how == "bad_subprotocol":
        protocols = ["auth.nope"]
    with pytest.raises(InvalidStatus) as err:
        async with connect(url, additional_headers=headers, subprotocols=protocols):
            pass
    assert err.value.response.status_code == 403


async def test_heartbeat_ack_after_the_stream_entry_and_client_connected_ignored(world: World):
    device_id, _w, token = world.session()
    async with connect(world.url(PATH), additional_headers={"X-Device-Session": token}) as ws:
        await recv(ws)
        await send(ws, type="connected", payload={"version": "1"})
        await send(ws, type="connected", payload={"version": "1"})
        await send(ws, type="heartbeat")
        ack = await recv(ws)  # the client's own `connected` frames got no answer
        assert ack["type"] == "heartbeat_ack" and "timestamp" in ack
        (beat,) = await world.events("telemetry:heartbeats")
        assert isinstance(beat, HeartbeatReceived)
        assert (beat.device_id, beat.dialect, beat.status, beat.seq) == (device_id, "s", "online", None)
        await send(ws, type="heartbeat", payload={"status": "degraded", "metrics": {"cpu": 3, "bad": "x"}})
        await recv_until(ws, "heartbeat_ack")
        beat = (await world.events("telemetry:heartbeats"))[1]
        assert (beat.status, beat.metrics) == ("degraded", {"cpu": 3})


async def test_commands_pushed_in_the_s_shape_oldest_first_then_live(world: World):
    device_id, wsid, token = world.session()
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    second = await world.queue(device_id, wsid, "restart", created_at=t0 + timedelta(seconds=1))
    first = await world.queue(device_id, wsid, "ping", parameters={"n": 1}, created_at=t0)
    await world.fed()
    async with connect(world.url(PATH), additional_headers={"X-Device-Session": token}) as ws:
        assert (await recv(ws))["type"] == "connected"
        a, b = await recv_until(ws, "command"), await recv_until(ws, "command")
        assert a == {
            "type": "command",
            "id": first,
            "command": "ping",
            "parameters": {"n": 1},
            "payload": {
                "id": first,
                "type": "ping",
                "parameters": {"n": 1},
                "timestamp": a["payload"]["timestamp"],
            },
        }
        assert datetime.fromisoformat(a["payload"]["timestamp"]) == t0
        assert (b["payload"]["id"], b["payload"]["type"]) == (second, "restart")
        live = await world.queue(device_id, wsid, "status")
        assert (await recv_until(ws, "command"))["payload"]["id"] == live
        pushed = await world.until(lambda ev: pushes(ev) if len(pushes(ev)) >= 3 else None)
        assert pushed == [first, second, live]


@pytest.mark.parametrize("kind", ["result", "command_result"])
async def test_result_frames_in_either_spelling(world: World, kind: str):
    device_id, wsid, token = world.session()
    cid = await world.queue(device_id, wsid, "ping")
    await world.fed()
    async with connect(world.url(PATH), additional_headers={"X-Device-Session": token}) as ws:
        await recv_until(ws, "command")
        if kind == "result":
            await send(ws, type="result", commandId=cid, status="success", output="pong", duration=12)
        else:
            await send(
                ws,
                type="command_result",
                payload={
                    "id": cid,
                    "status": "failure",
                    "error": "boom",
                    "executedAt": "2026-01-01T00:00:00Z",
                },
            )
        (res,) = await world.until(lambda ev: [e for e in ev if isinstance(e, CommandResultReceived)])
        assert (res.command_id, res.device_id, res.dialect) == (cid, device_id, "s")
        if kind == "result":
            assert (res.status, res.output, res.duration_ms) == ("success", "pong", 12.0)
        else:
            assert (res.status, res.error) == ("failure", "boom")
            assert res.executed_at == datetime(2026, 1, 1, tzinfo=UTC)
