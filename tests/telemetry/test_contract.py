"""Contract of the ingestion routes: exact statuses and body shapes per PROTOCOLS.md."""

from __future__ import annotations

import asyncio
import time

import pytest

from .conftest import World, uid


async def test_s_heartbeat_answers_the_documented_shape(world: World) -> None:
    dev = await world.device()
    started = time.monotonic()
    resp = await world.post(
        "/api/v1/device/heartbeat",
        {"status": "healthy", "metrics": {"cpu": 12.5, "memory": 40, "uptime": 9}},
        headers=dev.s,
    )
    assert time.monotonic() - started < 1.0
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["success"] is True and body["acknowledged"] is True
    assert isinstance(body["timestamp"], str) and body["nextHeartbeat"] == 30000
    [beat] = await world.heartbeats()
    assert (beat.device_id, beat.workspace_id, beat.status, beat.dialect) == (
        dev.device_id,
        dev.workspace_id,
        "healthy",
        "s",
    )
    assert beat.metrics == {"cpu": 12.5, "memory": 40, "uptime": 9} and beat.flags == []


async def test_s_accepts_every_token_header(world: World) -> None:
    dev = await world.device()
    for headers in ({"X-Device-Token": dev.token}, {"Authorization": f"Bearer {dev.token}"}):
        resp = await world.post("/api/v1/device/heartbeat", {"status": "online"}, headers=headers)
        assert resp.status_code == 200, resp.text
    assert await world.length() == 2


async def test_s_placeholder_values_are_stored_as_sent_and_flagged(world: World) -> None:
    dev = await world.device()
    metrics = {
        "cpu": "NaN",
        "memory": -5,
        "uptime": 1,
        "disk": 250,
        "temp": None,
        "x": {"a": 1},
        "big": 10**400,
    }
    resp = await world.post(
        "/api/v1/device/heartbeat", {"status": "degraded", "metrics": metrics}, headers=dev.s
    )
    assert resp.status_code == 200, resp.text
    [beat] = await world.heartbeats()
    assert beat.metrics["cpu"] == "NaN" and beat.metrics["memory"] == -5 and beat.metrics["disk"] == 250
    assert beat.metrics["x"] == '{"a":1}'
    assert beat.metrics["big"] == str(10**400)[: len(str(beat.metrics["big"]))]  # kept as text (truncated)
    assert sorted(beat.flags) == ["big", "cpu", "disk", "memory", "temp", "x"]


async def test_s_bad_tokens_are_401_invalid_token(world: World) -> None:
    dev = await world.device()
    expired = world.session(dev.device_id, dev.workspace_id, exp=int(time.time()) - 10)
    for headers in ({}, {"X-Device-Session": "nope"}, {"X-Device-Session": expired}):
        resp = await world.post("/api/v1/device/heartbeat", {"status": "online"}, headers=headers)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "INVALID_TOKEN"
        assert isinstance(resp.json()["error"]["message"], str)
    # an operator token is not a device session
    resp = await world.post(
        "/api/v1/device/heartbeat", {"status": "online"}, headers=world.operator(dev.workspace_id)
    )
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "INVALID_TOKEN"
    assert await world.length() == 0


async def test_k_metrics_is_exactly_201(world: World) -> None:
    dev = await world.device()
    body = {
        "device_id": dev.device_id,
        "cpu_percent": 10.5,
        "memory_percent": 50,
        "disk_percent": 70,
        "network_latency_ms": 12.3,
        "transaction_count": 5,
        "transaction_volume": 99.5,
        "error_rate": 0.1,
        "active_connections": 3,
        "extra_metrics": {"temp": 41.5, "ok": True, "fw": "1.2"},
    }
    resp = await world.post("/api/v1/analytics/device-metrics", body, headers=dev.k)
    assert resp.status_code == 201, resp.text
    assert resp.json()["success"] is True and isinstance(resp.json()["message"], str)
    [beat] = await world.heartbeats()
    assert beat.dialect == "k" and beat.device_id == dev.device_id
    assert beat.metrics["cpu_percent"] == 10.5 and beat.metrics["extra.temp"] == 41.5
    assert beat.metrics["transaction_count"] == 5


async def test_k_counts_may_be_whole_number_floats(world: World) -> None:
    """Some clients' JSON writes every number as a float: 3.0 is the count 3."""
    dev = await world.device()
    body = {"transaction_count": 3.0, "active_connections": 12.0}
    resp = await world.post("/api/v1/analytics/device-metrics", body, headers=dev.k)
    assert resp.status_code == 201, resp.text
    [beat] = await world.heartbeats()
    assert beat.metrics == {"transaction_count": 3, "active_connections": 12}
    assert all(type(v) is int for v in beat.metrics.values())
    for bad in ({"transaction_count": 3.5}, {"active_connections": 0.1}, {"active_connections": True}):
        resp = await world.post("/api/v1/analytics/device-metrics", bad, headers=dev.k)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "VALIDATION_ERROR", bad
    assert await world.length() == 1


async def test_k_wrong_pair_is_401_and_other_device_is_403(world: World) -> None:
    dev, other = await world.device(), await world.device()
    for headers in (
        {},
        {"X-Device-ID": dev.device_id, "X-API-Key": other.api_key},
        {"X-Device-ID": dev.device_id, "X-API-Key": "wrong"},
    ):
        resp = await world.post("/api/v1/analytics/device-metrics", {"cpu_percent": 1}, headers=headers)
        assert resp.status_code == 401, resp.text
        assert "error" in resp.json()
    resp = await world.post(
        "/api/v1/analytics/device-metrics", {"device_id": other.device_id, "cpu_percent": 1}, headers=dev.k
    )
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "DEVICE_MISMATCH"
    assert await world.length() == 0


async def test_agent_heartbeat_and_backfill(world: World) -> None:
    dev = await world.device()
    resp = await world.post(
        "/api/v1/agent/heartbeat",
        {"seq": 7, "sent_at": "2026-01-02T03:04:05Z", "status": "online", "metrics": {"cpu": 3.5}},
        headers=dev.s,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"acknowledged": True, "seq": 7, "nextHeartbeat": 30000}
    batch = [{"seq": i, "sent_at": "2026-01-02T03:04:05+00:00", "metrics": {"cpu": i}} for i in range(3)]
    resp = await world.post("/api/v1/agent/heartbeats", {"heartbeats": batch}, headers=dev.s)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"acknowledged": 3, "last_seq": 2}
    beats = await world.heartbeats()
    assert [b.seq for b in beats] == [7, 0, 1, 2]
    assert [b.backfill for b in beats] == [False, True, True, True]
    assert beats[0].dialect == "agent" and beats[0].sent_at is not None


async def test_agent_boot_is_carried_into_the_event(world: World) -> None:
    dev = await world.device()
    at = "2026-01-02T03:04:05Z"
    for body in (
        {"seq": 1, "sent_at": at, "boot": "run-1.A_z"},
        {"seq": 2, "sent_at": at, "boot": "b" * 64},
        {"seq": 3, "sent_at": at},
        {"seq": 4, "sent_at": at, "boot": None},
    ):
        resp = await world.post("/api/v1/agent/heartbeat", body, headers=dev.s)
        assert resp.status_code == 200, resp.text
    batch = [{"seq": 5, "sent_at": at, "boot": "older-run"}, {"seq": 6, "sent_at": at}]
    resp = await world.post("/api/v1/agent/heartbeats", {"heartbeats": batch}, headers=dev.s)
    assert resp.status_code == 200, resp.text
    beats = await world.heartbeats()
    assert [b.boot for b in beats] == ["run-1.A_z", "b" * 64, None, None, "older-run", None]


async def test_agent_invalid_boot_is_422(world: World) -> None:
    dev = await world.device()
    at = "2026-01-02T03:04:05Z"
    for boot in ("", "b" * 65, "has space", "slash/no", "caf\u00e9", 7, True, ["x"], {"a": 1}):
        for path, body in (
            ("/api/v1/agent/heartbeat", {"seq": 1, "sent_at": at, "boot": boot}),
            ("/api/v1/agent/heartbeats", {"heartbeats": [{"seq": 1, "sent_at": at, "boot": boot}]}),
        ):
            resp = await world.post(path, body, headers=dev.s)
            assert resp.status_code == 422, (path, boot, resp.text)
            error = resp.json()["error"]
            assert error["code"] == "VALIDATION_ERROR" and "boot" in error["message"]
    assert await world.length() == 0


async def test_duplicate_seq_is_accepted(world: World) -> None:
    dev = await world.device()
    body = {"seq": 1, "sent_at": "2026-01-02T03:04:05Z"}
    for _ in range(2):
        assert (await world.post("/api/v1/agent/heartbeat", body, headers=dev.s)).status_code == 200
    assert await world.length() == 2


async def test_latest_metrics_cache(world: World) -> None:
    dev = await world.device()
    headers = world.operator(dev.workspace_id)
    resp = await world.client.get(f"/api/v1/devices/{dev.device_id}/latest", headers=headers)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "NO_RECENT_METRICS"
    for cpu in (1, 2):
        await world.post(
            "/api/v1/device/heartbeat", {"status": "online", "metrics": {"cpu": cpu}}, headers=dev.s
        )
    # a backfilled heartbeat is older: it does not replace the latest
    old = {"heartbeats": [{"seq": 1, "sent_at": "2026-01-01T00:00:00Z", "metrics": {"cpu": 99}}]}
    assert (await world.post("/api/v1/agent/heartbeats", old, headers=dev.s)).status_code == 200
    # the cache is refreshed just after the batch is acknowledged (overlapping the next append)
    for _ in range(100):
        resp = await world.client.get(f"/api/v1/devices/{dev.device_id}/latest", headers=headers)
        if resp.status_code == 200 and resp.json()["metrics"] == {"cpu": 2}:
            break
        await asyncio.sleep(0.01)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["device_id"] == dev.device_id and body["metrics"] == {"cpu": 2} and body["status"] == "online"
    assert body["received_at"]
    assert world.host.redis is not None
    ttl = await world.host.redis.ttl(f"{world.prefix}telemetry:latest:{dev.device_id}")
    assert 290 < ttl <= 300


async def test_latest_is_404_across_workspaces(world: World) -> None:
    dev = await world.device()
    await world.post("/api/v1/device/heartbeat", {"status": "online"}, headers=dev.s)
    await asyncio.sleep(0.05)
    for device_id in (dev.device_id, uid("nodev-"), "bad id!"):
        resp = await world.client.get(
            f"/api/v1/devices/{device_id}/latest", headers=world.operator(uid("ws-"))
        )
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "DEVICE_NOT_FOUND"
    resp = await world.client.get(f"/api/v1/devices/{dev.device_id}/latest")
    assert resp.status_code == 401


async def test_heartbeats_over_the_device_rate_are_429(world: World) -> None:
    from services.telemetry.handlers import ingest_of

    limiter = ingest_of(world.host).limiter
    limiter.limit, limiter.window_s = 3, 86400.0  # one window for the whole test
    dev, other = await world.device(), await world.device()
    statuses = [
        (await world.post("/api/v1/device/heartbeat", {"status": "online"}, headers=dev.s)).status_code
        for _ in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]
    resp = await world.post("/api/v1/analytics/device-metrics", {"cpu_percent": 1}, headers=other.k)
    assert resp.status_code == 201  # the limit is per device
    assert await world.length() == 4
    refused = await world.post("/api/v1/device/heartbeat", {"status": "online"}, headers=dev.s)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "RATE_LIMITED"


async def test_unknown_api_keys_are_limited_per_address_before_the_index_is_reread(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown key or device makes the service re-read the identity streams (a Redis read, serialized
    for every caller): a flood of them from one address is 429 before that read."""
    from services.telemetry.handlers import ingest_of

    path = "/api/v1/analytics/device-metrics"
    dev = await world.device()
    assert (await world.post(path, {"cpu_percent": 1}, headers=dev.k)).status_code == 201
    limiter = ingest_of(world.host).unknown_keys
    limiter.limit, limiter.window_s = 2, 86400.0  # one window for the whole test
    assert world.host.identity is not None
    feed = world.host.identity.feed
    reads = 0
    catch_up = feed.catch_up

    async def counted() -> None:
        nonlocal reads
        reads += 1
        await catch_up()

    monkeypatch.setattr(feed, "catch_up", counted)
    unknown = (
        {"X-Device-ID": uid("nodev-"), "X-API-Key": "guess"},
        {"X-Device-ID": dev.device_id, "X-API-Key": "guess"},
        {"X-Device-ID": uid("nodev-"), "X-API-Key": dev.api_key},
        {"X-Device-ID": dev.device_id, "X-API-Key": "guess-again"},
    )
    replies = [await world.post(path, {"cpu_percent": 1}, headers=h) for h in unknown]
    assert [r.status_code for r in replies] == [401, 401, 429, 429]
    assert reads == 2  # the refused ones never reached Redis
    assert replies[-1].json()["error"]["code"] == "RATE_LIMITED" and replies[-1].headers["Retry-After"] == "1"
    # a known device is found in memory: never counted, never held back
    for _ in range(3):
        assert (await world.post(path, {"cpu_percent": 1}, headers=dev.k)).status_code == 201
    assert reads == 2
    assert await world.length() == 4
