"""The time-series projection: one row per acknowledged heartbeat, rollups, chart API, rebuild, retention."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from libs.events.publisher import Publisher
from libs.events.replay import rebuild
from libs.events.schemas.auth import WorkspaceCreated
from services.telemetry.handlers import Charts
from services.telemetry.projections import timeseries_projection

from .conftest import World


@pytest.fixture
async def worker(world: World) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(world.host.run_worker(stop))
    yield stop
    stop.set()
    assert world.host.redis is not None
    # wake the blocked read with an event the time series ignores (acknowledged, not dead-lettered)
    await Publisher(world.host.redis, producer="test").publish(
        world.stream, WorkspaceCreated(workspace_id="w", name="w")
    )
    await asyncio.wait_for(task, 10)


async def rows(world: World, device_id: str, table: str = "heartbeat_metrics") -> int:
    assert world.host.pool is not None
    return int(
        await world.host.pool.fetchval(f"SELECT count(*) FROM {table} WHERE device_id = $1", device_id)
    )


async def wait_rows(world: World, device_id: str, n: int) -> None:
    for _ in range(200):
        if await rows(world, device_id) >= n:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{await rows(world, device_id)} rows, wanted {n}")


async def test_every_acknowledged_heartbeat_has_one_row_and_rollups(
    world: World, worker: asyncio.Event
) -> None:
    dev = await world.device()

    async def beat(i: int) -> int:
        body = {"seq": i, "sent_at": "2026-01-02T03:04:05Z", "metrics": {"cpu": i % 50, "load": 1.5}}
        return (await world.post("/api/v1/agent/heartbeat", body, headers=dev.s)).status_code

    statuses = await asyncio.gather(*(beat(i) for i in range(120)))
    assert statuses.count(200) == 120
    # a placeholder S heartbeat is one row too, without its flagged values
    resp = await world.post(
        "/api/v1/device/heartbeat",
        {"status": "online", "metrics": {"cpu": "NaN", "uptime": 5}},
        headers=dev.s,
    )
    assert resp.status_code == 200
    await wait_rows(world, dev.device_id, 121)
    await asyncio.sleep(0.1)
    assert await rows(world, dev.device_id) == 121 == await world.length()
    assert world.host.pool is not None
    n, lo, hi = await world.host.pool.fetchrow(
        "SELECT sum(n), min(lo), max(hi) FROM metric_rollup_1m WHERE device_id = $1 AND name = 'cpu'",
        dev.device_id,
    )
    assert (n, lo, hi) == (120, 0, 49)
    assert (
        await world.host.pool.fetchval(
            "SELECT sum(n) FROM metric_rollup_1h WHERE device_id = $1 AND name = 'uptime'", dev.device_id
        )
        == 1
    )

    # the chart API, scoped to the operator's workspace
    headers = world.operator(dev.workspace_id)
    url = f"/api/v1/devices/{dev.device_id}/metrics"
    raw = (await world.client.get(url, params={"name": "cpu"}, headers=headers)).json()
    assert raw["step"] == "raw" and len(raw["series"]["cpu"]) == 120
    for agg, want in (("avg", 22.0), ("min", 0), ("max", 49)):
        resp = await world.client.get(url, params={"step": "1h", "agg": agg, "name": "cpu"}, headers=headers)
        assert resp.status_code == 200, resp.text
        [[_at, value]] = resp.json()["series"]["cpu"]
        assert value == want
    every = (await world.client.get(url, params={"step": "1m"}, headers=headers)).json()["series"]
    assert set(every) == {"cpu", "load", "uptime"}
    other = world.operator("someone-else")
    assert (await world.client.get(url, headers=other)).status_code == 404
    for bad in (
        {"step": "5m"},
        {"agg": "sum"},
        {"from": "yesterday"},
        {"from": "2026-01-02", "to": "2026-01-01"},
        {"to": "0001-01-01T00:30:00"},
        {"from": "0001-01-01T00:00+05:00"},
        {"to": "9999-12-31T23:59:59-05:00"},
    ):
        resp = await world.client.get(url, params=bad, headers=headers)
        assert resp.status_code == 400, (bad, resp.text)


async def test_agent_retries_are_one_point_and_redelivery_is_idempotent(
    world: World, worker: asyncio.Event
) -> None:
    dev = await world.device()
    body = {"seq": 5, "sent_at": "2026-01-02T03:04:05Z", "metrics": {"cpu": 10}}
    for _ in range(3):
        assert (await world.post("/api/v1/agent/heartbeat", body, headers=dev.s)).status_code == 200
    other = {"seq": 6, "sent_at": "2026-01-02T03:04:35Z", "metrics": {"cpu": 20}}
    assert (await world.post("/api/v1/agent/heartbeat", other, headers=dev.s)).status_code == 200
    await wait_rows(world, dev.device_id, 2)
    await asyncio.sleep(0.2)
    assert await rows(world, dev.device_id) == 2  # three entries of seq 5 are one point
    assert world.host.pool is not None
    assert (
        await world.host.pool.fetchval(
            "SELECT sum(n) FROM metric_rollup_1m WHERE device_id = $1", dev.device_id
        )
        == 2
    )


async def test_rebuild_gives_the_same_rows(world: World, worker: asyncio.Event) -> None:
    dev = await world.device()
    for i in range(30):
        body = {"status": "online", "metrics": {"cpu": i}}
        assert (await world.post("/api/v1/device/heartbeat", body, headers=dev.s)).status_code == 200
    await wait_rows(world, dev.device_id, 30)
    assert world.host.pool is not None and world.host.redis is not None
    q = "SELECT name, n, total, lo, hi FROM metric_rollup_1m WHERE device_id = $1 ORDER BY name, bucket"
    before = [tuple(r) for r in await world.host.pool.fetch(q, dev.device_id)]
    await rebuild(world.host.pool, world.host.redis, timeseries_projection(world.host))
    assert await rows(world, dev.device_id) == 30
    assert [tuple(r) for r in await world.host.pool.fetch(q, dev.device_id)] == before


async def test_retention_deletes_old_rows(world: World, worker: asyncio.Event) -> None:
    dev = await world.device()
    old = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    batch = {"heartbeats": [{"seq": 1, "sent_at": old, "metrics": {"cpu": 1}}]}
    assert (await world.post("/api/v1/agent/heartbeats", batch, headers=dev.s)).status_code == 200
    assert (
        await world.post(
            "/api/v1/device/heartbeat", {"status": "online", "metrics": {"cpu": 2}}, headers=dev.s
        )
    ).status_code == 200
    await wait_rows(world, dev.device_id, 2)
    await Charts(world.host).expire_once(datetime.now(UTC))
    assert await rows(world, dev.device_id) == 1  # the backfilled point is older than 7 days
    assert await rows(world, dev.device_id, "metric_rollup_1m") == 1
    assert await rows(world, dev.device_id, "metric_rollup_1h") == 2  # kept a year


async def test_a_redelivered_batch_counts_once(world: World) -> None:
    """At-least-once delivery: the same entries handled again change neither rows nor rollups."""
    from libs.events.envelope import decode_entry, decode_event
    from libs.events.projection import Delivery, projection_handler
    from libs.events.schemas import REGISTRY

    dev = await world.device()
    for cpu in (10, 30):
        body = {"status": "online", "metrics": {"cpu": cpu}}
        assert (await world.post("/api/v1/device/heartbeat", body, headers=dev.s)).status_code == 200
    assert world.host.redis is not None and world.host.pool is not None
    batch = []
    for entry_id, fields in await world.host.redis.xrange(world.stream):
        env = decode_entry(fields)
        batch.append(Delivery(world.stream, entry_id.decode(), env, decode_event(env, REGISTRY)))
    handle = projection_handler(world.host.pool, timeseries_projection(world.host))
    for _ in range(3):
        await handle(batch)
    assert await rows(world, dev.device_id) == 2
    n, total = await world.host.pool.fetchrow(
        "SELECT sum(n), sum(total) FROM metric_rollup_1h WHERE device_id = $1 AND name = 'cpu'", dev.device_id
    )
    assert (n, total) == (2, 40.0)


async def test_the_point_limit_is_per_metric(world: World) -> None:
    """A chatty metric does not starve the others, raw or rolled up."""
    from services.telemetry import store
    from services.telemetry.domain import ChartQuery

    dev = await world.device()
    start = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    rows = []
    for i in range(6):  # "a" in every heartbeat, "b" in every other one; one heartbeat a minute
        metrics = {"a": i, "b": i} if i % 2 else {"a": i}
        at = start + timedelta(minutes=i)
        rows.append(
            (
                str(uuid.uuid4()),
                dev.device_id,
                dev.workspace_id,
                at,
                None,
                None,
                "online",
                json.dumps(metrics),
                False,
            )
        )
    assert world.host.pool is not None
    async with world.host.pool.acquire() as conn:
        await store.insert_points(conn, rows)
    charts = Charts(world.host)
    window = (start, start + timedelta(hours=1))
    for step in ("raw", "1m"):
        series = await charts.series(
            dev.device_id, dev.workspace_id, ChartQuery(*window, step, "avg", None, 2)
        )
        assert {name: [v for _at, v in points] for name, points in series.items()} == {
            "a": [0.0, 1.0],
            "b": [1.0, 3.0],
        }, step
        one = await charts.series(dev.device_id, dev.workspace_id, ChartQuery(*window, step, "avg", "b", 2))
        assert [v for _at, v in one["b"]] == [1.0, 3.0]


async def test_a_raw_chart_may_cover_at_most_a_day(world: World) -> None:
    dev = await world.device()
    headers = world.operator(dev.workspace_id)
    url = f"/api/v1/devices/{dev.device_id}/metrics"
    day = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}
    longer = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:01Z"}
    assert (await world.client.get(url, params=day, headers=headers)).status_code == 200
    resp = await world.client.get(url, params=longer, headers=headers)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "SPAN_TOO_LONG" and "24 hours" in error["message"], error
    # rollups cover longer spans
    for step in ("1m", "1h"):
        resp = await world.client.get(url, params={**longer, "step": step}, headers=headers)
        assert resp.status_code == 200, resp.text
    resp = await world.client.get(
        url, params={"from": "2026-01-01T00:00:00Z", "step": "raw"}, headers=headers
    )
    assert resp.status_code == 422  # "to" defaults to now
