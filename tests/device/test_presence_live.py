"""Presence in-process: the device worker folds heartbeats and connections, the sweeper the deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from libs.events.publisher import Publisher
from libs.events.schemas.device import DeviceStatusChanged
from libs.events.schemas.gateway import AgentConnected, AgentDisconnected, GatewayAlive
from libs.events.schemas.telemetry import HeartbeatReceived

from .conftest import World

FAST = {"heartbeat_interval_s": 1, "heartbeat_timeout_s": 3}  # late 1.5 s, offline 3 s after a beat


async def until(check, timeout: float = 8.0, step: float = 0.02):
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if result := await check():
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(step)


@pytest.fixture
async def worker(world: World) -> AsyncIterator[World]:
    """The device worker (relay, presence consumers, sweeper) running beside the API."""
    stop = asyncio.Event()
    task = asyncio.create_task(world.host.run_worker(stop))
    await until(lambda: _ready(world))
    try:
        yield world
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def _ready(world: World) -> bool:
    return len(world.host.runners) == 3 and all(r.ready.is_set() for r in world.host.runners)


async def device(world: World, ws: str, metadata: dict | None = None) -> str:
    body = {"name": "pi", "device_type": "raspberry_pi", "metadata": metadata or FAST}
    resp = await world.client.post("/api/v1/devices", json=body, headers=world.auth(ws))
    assert resp.status_code == 201, resp.text
    return resp.json()["device_id"]


async def beat(world: World, ws: str, dev: str, **kw) -> datetime:
    kw.setdefault("received_at", datetime.now(UTC))
    event = HeartbeatReceived(device_id=dev, workspace_id=ws, **kw)
    assert world.host.redis is not None
    await Publisher(world.host.redis, producer="telemetry").publish(
        world.prefix + "telemetry:heartbeats", event
    )
    return kw["received_at"]


async def changes(world: World, dev: str) -> list[DeviceStatusChanged]:
    events = [e for _env, e in await world.events()]
    return [e for e in events if isinstance(e, DeviceStatusChanged) and e.device_id == dev]


async def status(world: World, ws: str, dev: str) -> dict:
    resp = await world.client.get(f"/api/v1/devices/{dev}", headers=world.auth(ws))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_heartbeat_online_late_offline_resumed(worker: World):
    world = worker
    ws = await world.workspace()
    dev = await device(world, ws)
    assert (await status(world, ws, dev))["status_reason"] == "never_seen"
    t0 = await beat(world, ws, dev, seq=1, metrics={"cpu": 12.5})
    body = await until(lambda: _has(world, ws, dev, "online"))
    assert body["status_reason"] == "first_heartbeat" and body["last_seen"] is not None
    await until(lambda: _has(world, ws, dev, "late"))
    assert datetime.now(UTC) - (t0 + timedelta(seconds=1.5)) < timedelta(seconds=1)
    await until(lambda: _has(world, ws, dev, "offline"))
    assert datetime.now(UTC) - (t0 + timedelta(seconds=3)) < timedelta(seconds=1)
    await beat(world, ws, dev, seq=2)
    body = await until(lambda: _has(world, ws, dev, "online"))
    assert body["status_reason"] == "heartbeat_resumed"
    seen = await until(lambda: _n(world, dev, 4))
    assert [(e.previous, e.status, e.reason) for e in seen] == [
        ("offline", "online", "first_heartbeat"),
        ("online", "late", "heartbeat_missed"),
        ("late", "offline", "heartbeat_timeout"),
        ("offline", "online", "heartbeat_resumed"),
    ]
    assert seen[1].at == t0 + timedelta(seconds=1.5) and seen[2].at == t0 + timedelta(seconds=3)
    metrics = await world.host.pool.fetchval("SELECT metrics::text FROM presence WHERE device_id = $1", dev)
    assert '"cpu":12.5' in metrics.replace(" ", "")


async def _has(world: World, ws: str, dev: str, want: str) -> dict | None:
    body = await status(world, ws, dev)
    return body if body["status"] == want else None


async def _n(world: World, dev: str, n: int) -> list[DeviceStatusChanged] | None:
    seen = await changes(world, dev)
    return seen if len(seen) >= n else None


async def test_duplicates_and_stragglers_leave_status_unchanged(worker: World):
    world = worker
    ws = await world.workspace()
    dev = await device(world, ws, {"heartbeat_interval_s": 20, "heartbeat_timeout_s": 60})
    now = datetime.now(UTC)
    await beat(world, ws, dev, seq=5, received_at=now)
    await until(lambda: _has(world, ws, dev, "online"))
    await beat(world, ws, dev, seq=5, received_at=now + timedelta(seconds=1))  # duplicate
    await beat(world, ws, dev, seq=3, received_at=now + timedelta(seconds=1))  # straggler
    marker = "marker-" + dev
    await beat(world, ws, dev, seq=6, received_at=now + timedelta(seconds=2), metrics={"m": marker})
    row = await until(lambda: _row(world, dev, marker))
    assert row["last_seq"] == 6 and row["last_seen"] == now + timedelta(seconds=2)
    assert len(await changes(world, dev)) == 1


async def _row(world: World, dev: str, marker: str):
    return await world.host.pool.fetchrow(
        "SELECT last_seq, last_seen FROM presence WHERE device_id = $1 AND metrics->>'m' = $2",
        dev,
        marker,
    )


async def test_connection_and_clean_shutdown(worker: World):
    world = worker
    ws = await world.workspace()
    dev = await device(world, ws)
    assert world.host.redis is not None
    pub = Publisher(world.host.redis, producer="gateway")
    gw = world.prefix + "events:gateway"
    at = datetime.now(UTC)
    common = {"device_id": dev, "workspace_id": ws, "gateway_id": "g1", "dialect": "s"}
    await pub.publish(gw, AgentConnected(**common, at=at))
    await until(lambda: _has(world, ws, dev, "online"))
    await asyncio.sleep(2)  # a live socket keeps the device online past its late deadline (1.5 s)
    assert (await status(world, ws, dev))["status"] == "online"
    await pub.publish(gw, AgentDisconnected(**common, at=datetime.now(UTC), reason="agent_shutdown"))
    body = await until(lambda: _has(world, ws, dev, "offline"))
    assert body["status_reason"] == "agent_shutdown"


async def test_a_gateway_that_stops_announcing_itself_takes_its_sockets_with_it(worker: World):
    """Killed gateways close nothing: their devices go offline once announcements stop; devices on a
    gateway that keeps announcing itself stay online."""
    from services.device.consumers import presence_service

    world = worker
    ws = await world.workspace()
    lost_dev, kept_dev = await device(world, ws), await device(world, ws)
    assert world.host.redis is not None
    pub = Publisher(world.host.redis, producer="gateway")
    gw = world.prefix + "events:gateway"
    t0 = datetime.now(UTC)
    for dev, gateway in ((lost_dev, "g-killed"), (kept_dev, "g-alive")):
        common = {"device_id": dev, "workspace_id": ws, "dialect": "s", "connection_id": dev + "-c1"}
        await pub.publish(gw, AgentConnected(**common, gateway_id=gateway, at=t0))
    await pub.publish(gw, GatewayAlive(gateway_id="g-alive", at=t0 + timedelta(seconds=10)))
    await until(lambda: _has(world, ws, lost_dev, "online"))
    await until(lambda: _has(world, ws, kept_dev, "online"))
    await until(lambda: _gateway_seen(world, "g-alive", t0 + timedelta(seconds=10)))
    svc = presence_service(world.host)  # the gateway timeout is 20 s: sweep as if 25 s had passed
    assert await svc.sweep_orphans(t0 + timedelta(seconds=25)) == 1
    body = await until(lambda: _has(world, ws, lost_dev, "offline"))
    assert body["status_reason"] == "socket_closed"
    [*_, gone] = await until(lambda: _n(world, lost_dev, 2))
    assert (gone.status, gone.reason, gone.at) == ("offline", "socket_closed", t0 + timedelta(seconds=20))
    assert (await status(world, ws, kept_dev))["status"] == "online"
    assert await svc.sweep_orphans(t0 + timedelta(seconds=25)) == 0  # once


async def _gateway_seen(world: World, gateway_id: str, at: datetime) -> bool:
    assert world.host.pool is not None
    seen = await world.host.pool.fetchval(
        "SELECT last_seen FROM presence_gateways WHERE gateway_id = $1", gateway_id
    )
    return seen is not None and seen >= at


async def test_workspace_timing_route_sets_what_the_next_heartbeat_uses(worker: World):
    world = worker
    ws = await world.workspace()
    url = "/api/v1/presence/settings"
    got = (await world.client.get(url, headers=world.auth(ws, role="viewer"))).json()
    assert got["heartbeat_interval_s"] is None and got["effective"]["heartbeat_timeout_s"] == 90
    for bad in (
        {"heartbeat_interval_s": 0, "heartbeat_timeout_s": None},
        {"heartbeat_interval_s": 5, "heartbeat_timeout_s": 2},
        {"heartbeat_interval_s": True, "heartbeat_timeout_s": None},
        {"heartbeat_interval_s": 1},
        {"heartbeat_interval_s": 1, "heartbeat_timeout_s": 3, "x": 1},
        [1, 3],
    ):
        resp = await world.client.put(url, json=bad, headers=world.auth(ws))
        assert resp.status_code == 400, (bad, resp.text)
    fast = {"heartbeat_interval_s": 1, "heartbeat_timeout_s": 3}
    assert (
        await world.client.put(url, json=fast, headers=world.auth(ws, role="operator"))
    ).status_code == 403
    resp = await world.client.put(url, json=fast, headers=world.auth(ws))
    assert resp.status_code == 200 and resp.json()["effective"] == fast
    other = await world.workspace()  # another workspace keeps the defaults
    assert (await world.client.get(url, headers=world.auth(other))).json()["heartbeat_timeout_s"] is None

    dev = await device(world, ws, metadata={})  # no per-device timing: the workspace's applies
    t0 = await beat(world, ws, dev, seq=1)

    async def offline() -> list[DeviceStatusChanged]:
        seen = await changes(world, dev)
        return seen if seen and seen[-1].status == "offline" else []

    seen = await until(offline)
    assert [(c.status, c.reason) for c in seen] == [
        ("online", "first_heartbeat"),
        ("late", "heartbeat_missed"),
        ("offline", "heartbeat_timeout"),
    ]
    assert seen[-1].at == t0 + timedelta(seconds=3)
    set_events = [e for _env, e in await world.events() if type(e).__name__ == "PresenceTimingSet"]
    assert [(e.workspace_id, e.heartbeat_timeout_s) for e in set_events] == [(ws, 3.0)]
    await world.client.put(url, json=fast, headers=world.auth(ws))  # the same again: no new event
    assert len([e for _env, e in await world.events() if type(e).__name__ == "PresenceTimingSet"]) == 1


async def test_status_history_route_shows_the_timeline(worker: World):
    world = worker
    ws = await world.workspace()
    dev = await device(world, ws)
    t0 = await beat(world, ws, dev, seq=1)
    url = f"/api/v1/devices/{dev}/history"

    async def three() -> list[dict]:
        resp = await world.client.get(url, headers=world.auth(ws, role="viewer"))
        assert resp.status_code == 200, resp.text
        return resp.json() if len(resp.json()) == 3 else []

    rows = await until(three)
    assert [(r["previous"], r["status"], r["reason"]) for r in rows] == [
        ("late", "offline", "heartbeat_timeout"),
        ("online", "late", "heartbeat_missed"),
        ("offline", "online", "first_heartbeat"),
    ]
    assert datetime.fromisoformat(rows[0]["at"]) == t0 + timedelta(seconds=3)
    older = await world.client.get(url, params={"before": rows[1]["at"], "limit": 5}, headers=world.auth(ws))
    assert [r["status"] for r in older.json()] == ["online"]
    other = await world.workspace()
    assert (await world.client.get(url, headers=world.auth(other))).status_code == 404
    for bad in ({"before": "yesterday"}, {"limit": 0}, {"limit": 5000}):
        assert (await world.client.get(url, params=bad, headers=world.auth(ws))).status_code in (400, 422)
