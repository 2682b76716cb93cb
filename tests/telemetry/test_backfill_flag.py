"""Backfilled points are told apart from live ones: stored per row, listed by raw charts under
``backfilled`` (the ``series`` shape unchanged), kept by a rebuild."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from libs.events.publisher import Publisher
from libs.events.replay import rebuild
from libs.events.schemas.auth import WorkspaceCreated
from services.telemetry.api import Api
from services.telemetry.domain import chart_query
from services.telemetry.projections import timeseries_projection

from .conftest import World


@pytest.fixture
async def worker(world: World) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(world.host.run_worker(stop))
    yield
    stop.set()
    assert world.host.redis is not None
    await Publisher(world.host.redis, producer="test").publish(
        world.stream, WorkspaceCreated(workspace_id="w", name="w")
    )
    await asyncio.wait_for(task, 10)


async def flags(world: World, device_id: str) -> list[tuple[int, bool]]:
    assert world.host.pool is not None
    rows = await world.host.pool.fetch(
        "SELECT seq, backfill FROM heartbeat_metrics WHERE device_id = $1 ORDER BY seq", device_id
    )
    return [(r[0], r[1]) for r in rows]


async def wait_rows(world: World, device_id: str, n: int) -> None:
    for _ in range(200):
        if len(await flags(world, device_id)) >= n:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"fewer than {n} rows")


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


async def test_backfilled_points_are_flagged_through_the_metrics_api(world: World, worker: None) -> None:
    dev = await world.device()
    now = datetime.now(UTC).replace(microsecond=0)
    for seq in (1, 2):
        body = {"seq": seq, "sent_at": iso(now), "metrics": {"cpu": seq, "mem": 50}}
        assert (await world.post("/api/v1/agent/heartbeat", body, headers=dev.s)).status_code == 200
    old = [now - timedelta(minutes=20), now - timedelta(minutes=19)]
    batch = {
        "heartbeats": [
            {"seq": 10, "sent_at": iso(old[0]), "metrics": {"cpu": 10, "mem": 40}},
            {"seq": 11, "sent_at": iso(old[1]), "metrics": {"cpu": 11}},
            # the live seq 2 again (its answer was lost): still one point, and still live
            {"seq": 2, "sent_at": iso(now), "metrics": {"cpu": 2, "mem": 50}},
        ]
    }
    assert (await world.post("/api/v1/agent/heartbeats", batch, headers=dev.s)).status_code == 200
    await wait_rows(world, dev.device_id, 4)
    await asyncio.sleep(0.1)
    assert await flags(world, dev.device_id) == [(1, False), (2, False), (10, True), (11, True)]

    url = f"/api/v1/devices/{dev.device_id}/metrics"
    headers = world.operator(dev.workspace_id)
    frm = iso(now - timedelta(hours=1))
    raw = (await world.client.get(url, params={"from": frm}, headers=headers)).json()
    assert [v for _t, v in raw["series"]["cpu"]] == [10, 11, 1, 2]  # [time, value] pairs, as before
    assert all(len(p) == 2 for points in raw["series"].values() for p in points)
    assert raw["backfilled"] == {"cpu": [iso(old[0]), iso(old[1])], "mem": [iso(old[0])]}
    shown = {t for t, _v in raw["series"]["cpu"]}
    assert set(raw["backfilled"]["cpu"]) <= shown
    one = (await world.client.get(url, params={"from": frm, "name": "mem"}, headers=headers)).json()
    assert one["backfilled"] == {"mem": [iso(old[0])]}
    # rollups mix both kinds in a bucket: no flag, and the key is absent
    rolled = (await world.client.get(url, params={"from": frm, "step": "1m"}, headers=headers)).json()
    assert "backfilled" not in rolled and set(rolled["series"]) == {"cpu", "mem"}
    # live-only windows list nothing
    recent = iso(now - timedelta(minutes=5))
    live = (await world.client.get(url, params={"from": recent}, headers=headers)).json()
    assert live["backfilled"] == {} and len(live["series"]["cpu"]) == 2
    # another workspace still sees nothing
    assert (await world.client.get(url, headers=world.operator("someone-else"))).status_code == 404

    # the flag comes from the stream: a rebuild keeps it
    assert world.host.pool is not None and world.host.redis is not None
    await rebuild(world.host.pool, world.host.redis, timeseries_projection(world.host))
    assert await flags(world, dev.device_id) == [(1, False), (2, False), (10, True), (11, True)]


async def test_the_flag_follows_the_point_limit(world: World, worker: None) -> None:
    """Only points the series shows are listed: the limit keeps the earliest of each metric."""
    dev = await world.device()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    batch = {
        "heartbeats": [
            {"seq": i, "sent_at": iso(start + timedelta(seconds=i)), "metrics": {"cpu": i}} for i in range(5)
        ]
    }
    assert (await world.post("/api/v1/agent/heartbeats", batch, headers=dev.s)).status_code == 200
    await wait_rows(world, dev.device_id, 5)
    q = chart_query({"from": iso(start - timedelta(minutes=1))}, now=datetime.now(UTC), limit=3)
    series, got = await Api(world.host).charts.chart(dev.device_id, dev.workspace_id, q)
    assert len(series["cpu"]) == 3
    assert got == {"cpu": [iso(start + timedelta(seconds=i)) for i in range(3)]}
