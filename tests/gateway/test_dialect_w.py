"""Dialect W on ``GET /ws/device/{token}``: path token, pending commands on accept, ping/pong, results."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from websockets.exceptions import InvalidStatus

from libs.events.schemas.gateway import (
    AgentConnected,
    AgentDisconnected,
    CommandResultReceived,
)
from libs.events.schemas.telemetry import HeartbeatReceived

from .conftest import World, connect, pushes, recv, send


async def test_unknown_token_is_403(world: World):
    await world.w_device()
    for token in ("f" * 64, "x"):
        with pytest.raises(InvalidStatus) as err:
            async with connect(world.url(f"/ws/device/{token}")):
                pass
        assert err.value.response.status_code == 403


async def test_session_token_is_not_a_w_token(world: World):
    _d, _w, session = world.session()
    with pytest.raises(InvalidStatus) as err:
        async with connect(world.url(f"/ws/device/{session}")):
            pass
    assert err.value.response.status_code == 403


async def test_accept_connects_and_flushes_pending_commands_oldest_first(world: World):
    device_id, wsid, token = await world.w_device()
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    c2 = await world.queue(
        device_id, wsid, "led", parameters={"on": True}, created_at=t0 + timedelta(seconds=5)
    )
    c1 = await world.queue(device_id, wsid, "reboot", created_at=t0)
    await world.fed()
    async with connect(world.url(f"/ws/device/{token}")) as ws:
        assert await recv(ws) == {"command_id": c1, "command_type": "reboot", "parameters": {}}
        assert await recv(ws) == {"command_id": c2, "command_type": "led", "parameters": {"on": True}}
        (event,) = await world.until(lambda ev: [e for e in ev if isinstance(e, AgentConnected)])
        assert (event.device_id, event.workspace_id, event.dialect) == (device_id, wsid, "w")
        pushed = await world.until(lambda ev: pushes(ev) if len(pushes(ev)) >= 2 else None)
        assert pushed == [c1, c2]
        c3 = await world.queue(device_id, wsid, "status")
        assert (await recv(ws))["command_id"] == c3
    (gone,) = await world.until(lambda ev: [e for e in ev if isinstance(e, AgentDisconnected)])
    assert (gone.reason, gone.connection_id, gone.dialect) == ("socket_closed", event.connection_id, "w")


async def test_ping_pong_is_a_heartbeat_and_results_are_recorded(world: World):
    device_id, wsid, token = await world.w_device()
    cid = await world.queue(device_id, wsid, "ping")
    await world.fed()
    async with connect(world.url(f"/ws/device/{token}")) as ws:
        assert (await recv(ws))["command_id"] == cid
        await send(ws, type="ping")
        assert await recv(ws) == {"type": "pong"}
        (beat,) = await world.events("telemetry:heartbeats")
        assert isinstance(beat, HeartbeatReceived)
        assert (beat.device_id, beat.workspace_id, beat.dialect) == (device_id, wsid, "w")
        await send(ws, command_id=cid, status="completed", result={"pong": 1}, error=None)
        (res,) = await world.until(lambda ev: [e for e in ev if isinstance(e, CommandResultReceived)])
        assert (res.command_id, res.status, res.result, res.error, res.dialect) == (
            cid,
            "completed",
            {"pong": 1},
            None,
            "w",
        )


async def test_the_path_token_never_reaches_a_log_line(world: World, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    _device_id, _wsid, token = await world.w_device()
    async with connect(world.url(f"/ws/device/{token}")) as ws:
        await send(ws, type="ping")
        await recv(ws)
    with pytest.raises(InvalidStatus):
        async with connect(world.url(f"/ws/device/{'e' * 64}")):
            pass
    await world.until(lambda ev: [e for e in ev if isinstance(e, AgentDisconnected)])
    lines = [r.getMessage() for r in caplog.records]
    assert any("/ws/device/<redacted>" in line for line in lines), lines  # uvicorn did log the socket
    assert not [line for line in lines if token in line or "e" * 64 in line]
