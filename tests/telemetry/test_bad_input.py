"""Bad input on every ingestion route: 4xx with a JSON error, and nothing written to the stream."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import World

S = "/api/v1/device/heartbeat"
K = "/api/v1/analytics/device-metrics"
A = "/api/v1/agent/heartbeat"
AB = "/api/v1/agent/heartbeats"
OK_AT = "2026-01-02T03:04:05Z"

RAW: list[bytes] = [
    b"",
    b"{",
    b"not json",
    b"\xff\xfe{}",
    b'{"status": "online", "metrics": {"cpu": 1e999}}',
    b"[" * 5000 + b"]" * 5000,
    b'"online"',
    b"null",
    b"[]",
]

S_BODIES: list[Any] = [
    {},
    {"metrics": {"cpu": 1}},
    {"status": "sleeping"},
    {"status": "ONLINE"},
    {"status": "onlïne"},
    {"status": 1},
    {"status": None},
    {"status": "online", "metrics": [1, 2]},
    {"status": "online", "metrics": "cpu=1"},
    {"status": "online", "metrics": None},
    {"status": "online", "metrics": {"": 1}},
    {"status": "online", "metrics": {"bad name\x00": 1}},
    {"status": "online", "metrics": {f"m{i}": i for i in range(65)}},
]

K_BODIES: list[Any] = [
    {"cpu_percent": "10"},
    {"cpu_percent": -1},
    {"cpu_percent": 100.5},
    {"memory_percent": 1e300},
    {"disk_percent": True},
    {"error_rate": [1]},
    {"transaction_count": -1},
    {"transaction_count": 1.5},
    {"transaction_count": "3"},
    {"active_connections": 10**30},
    {"cpu_percent": 10**400},
    {"extra_metrics": {"a": 10**400}},
    {"network_latency_ms": -0.1},
    {"network_latency_ms": 1e7},
    {"transaction_volume": -5},
    {"device_id": 42},
    {"extra_metrics": [1]},
    {"extra_metrics": {"a": {"nested": 1}}},
    {"extra_metrics": {"a": [1]}},
    {"extra_metrics": {"a": None}},
    {"extra_metrics": {"a": "x" * 1001}},
    {"extra_metrics": {f"k{i}": 1 for i in range(65)}},
    {"extra_metrics": {"bad key": 1}},
]

A_BODIES: list[Any] = [
    {},
    {"seq": 1},
    {"sent_at": OK_AT},
    {"seq": -1, "sent_at": OK_AT},
    {"seq": "1", "sent_at": OK_AT},
    {"seq": True, "sent_at": OK_AT},
    {"seq": 1.0, "sent_at": OK_AT},
    {"seq": 2**64, "sent_at": OK_AT},
    {"seq": 1, "sent_at": "yesterday"},
    {"seq": 1, "sent_at": 1700000000},
    {"seq": 1, "sent_at": "1970-01-01T00:00:00Z"},
    {"seq": 1, "sent_at": "2999-01-01T00:00:00Z"},
    {"seq": 1, "sent_at": OK_AT, "status": "sleeping"},
    {"seq": 1, "sent_at": OK_AT, "metrics": {"cpu": "NaN"}},
    {"seq": 1, "sent_at": OK_AT, "metrics": {"cpu": -5}},
    {"seq": 1, "sent_at": OK_AT, "metrics": {"cpu": 101}},
    {"seq": 1, "sent_at": OK_AT, "metrics": {"memory": 150}},
    {"seq": 1, "sent_at": OK_AT, "metrics": {"temp": 1e300}},
    {"seq": 1, "sent_at": OK_AT, "metrics": {"temp": 10**400}},
    {"seq": 1, "sent_at": OK_AT, "metrics": {"uptime": -1}},
    {"seq": 1, "sent_at": OK_AT, "metrics": {"ok": True}},
    {"seq": 1, "sent_at": OK_AT, "metrics": {"x": None}},
    {"seq": 1, "sent_at": OK_AT, "metrics": [1]},
]

AB_BODIES: list[Any] = [
    {},
    {"heartbeats": []},
    {"heartbeats": {}},
    {"heartbeats": [{"seq": i, "sent_at": OK_AT} for i in range(501)]},
    # one bad item refuses the whole batch
    {"heartbeats": [{"seq": 1, "sent_at": OK_AT}, {"seq": 2, "sent_at": OK_AT, "metrics": {"cpu": 999}}]},
    {"heartbeats": [{"seq": 1, "sent_at": OK_AT}, "x"]},
]


async def refused(world: World, path: str, headers: dict[str, str], **kw: Any) -> None:
    before = await world.length()
    resp = await world.client.post(path, headers={"Content-Type": "application/json", **headers}, **kw)
    assert 400 <= resp.status_code < 500, (path, kw, resp.status_code, resp.text)
    assert set(resp.json()["error"]) == {"code", "message"}
    assert await world.length() == before


@pytest.mark.parametrize("path", [S, K, A, AB])
async def test_malformed_bodies(world: World, path: str) -> None:
    dev = await world.device()
    headers = dev.k if path == K else dev.s
    for raw in RAW:
        await refused(world, path, headers, content=raw)


@pytest.mark.parametrize("path", [S, K, A, AB])
async def test_oversize_bodies_are_413(world: World, path: str) -> None:
    dev = await world.device()
    headers = dev.k if path == K else dev.s
    big = b'{"status": "online", "pad": "' + b"x" * 1_000_000 + b'"}'
    resp = await world.client.post(path, content=big, headers=headers)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    just_over = b'{"status": "online", "pad": "' + b"x" * 100_001 + b'"}'
    resp = await world.client.post(path, content=just_over, headers=headers)
    assert resp.status_code == 413
    assert await world.length() == 0


@pytest.mark.parametrize(
    ("path", "bodies"),
    [(S, S_BODIES), (K, K_BODIES), (A, A_BODIES), (AB, AB_BODIES)],
    ids=["s", "k", "a", "ab"],
)
async def test_invalid_values(world: World, path: str, bodies: list[Any]) -> None:
    dev = await world.device()
    headers = dev.k if path == K else dev.s
    for body in bodies:
        await refused(world, path, headers, json=body)


async def test_unicode_and_unknown_fields_are_fine(world: World) -> None:
    dev = await world.device()
    body = {"status": "online", "metrics": {"cpu": 1, "label": "héllo ✓"}, "extra": {"ignored": True}}
    assert (await world.post(S, body, headers=dev.s)).status_code == 200
    body = {"cpu_percent": 1, "extra_metrics": {"fw": "v1 ✓"}, "unknown": [1]}
    assert (await world.post(K, body, headers=dev.k)).status_code == 201
    assert await world.length() == 2


async def test_redis_refusing_the_batch_is_503(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.telemetry.handlers import ingest_of

    dev = await world.device()

    async def down(_items: Any) -> list[str]:
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(ingest_of(world.host).publisher, "publish_envelopes", down)
    for path, body, headers in (
        (S, {"status": "online"}, dev.s),
        (K, {"cpu_percent": 1}, dev.k),
        (A, {"seq": 1, "sent_at": OK_AT}, dev.s),
        (AB, {"heartbeats": [{"seq": 1, "sent_at": OK_AT}]}, dev.s),
    ):
        resp = await world.post(path, body, headers=headers)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "UNAVAILABLE", resp.text
    assert await world.length() == 0
