"""Workspaces never see each other's devices or commands (404, never 403); bad input is a 4xx JSON
error and writes nothing (no row, no event)."""

from __future__ import annotations

import pytest

from .conftest import World, started, uid

MALFORMED = [b"", b"{", b"not json", b"[]", b"null", b"123", b'"text"', b"\xff\xfe\x00"]
MALFORMED += [b'{"command_type": 1e999}', b'{"command_type": "\\ud800"}', b"{" * 10_000]
MALFORMED += [b'{"z": ' + b"[" * 5000 + b"]" * 5000 + b"}"]

BAD_NEW = [
    {},
    {"payload": {}},
    {"command_type": ""},
    {"command_type": None},
    {"command_type": 5},
    {"command_type": "has space"},
    {"command_type": "x" * 65},
    {"command_type": "nul\x00"},
    {"command_type": "p", "payload": []},
    {"command_type": "p", "payload": "x"},
    {"command_type": "p", "parameters": 1},
    {"command_type": "p", "payload": {"a": 1}, "parameters": {"a": 2}},
    {"command_type": "p", "payload": {"k": "nul\x00"}},
    {"command_type": "p", "payload": {"deep": [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]}},
    {"command_type": "p", "ttl_s": 0},
    {"command_type": "p", "ttl_s": -5},
    {"command_type": "p", "ttl_s": 1.5},
    {"command_type": "p", "ttl_s": "60"},
    {"command_type": "p", "ttl_s": 10**9},
    {"command_type": "p", "idempotency_key": ""},
    {"command_type": "p", "idempotency_key": "k" * 129},
    {"command_type": "p", "idempotency_key": 7},
]
TOO_LARGE = [
    {"command_type": "p", "payload": {"blob": "x" * 20_000}},
    {"command_type": "p", "pad": "x" * 110_000},
]


async def nothing_written(world: World, dev_id: str) -> None:
    assert await world.count("SELECT count(*) FROM commands WHERE device_id = $1", dev_id) == 0
    assert await world.events() == []


async def test_another_workspace_sees_nothing(world: World) -> None:
    a = await world.device()
    b_ws = uid("ws-")
    cid = (await world.queue(a))["command_id"]
    hb, hbw = world.auth(b_ws), world.auth(b_ws, w=True)
    c = world.client
    replies = [
        await c.post(f"/api/v1/devices/{a.device_id}/commands", json={"command_type": "p"}, headers=hb),
        await c.get(f"/api/v1/devices/{a.device_id}/commands", headers=hb),
        await c.get(f"/api/v1/commands/{cid}", headers=hb),
        await c.post(f"/api/v1/commands/{cid}/cancel", headers=hb),
        await c.post(f"/api/devices/{a.device_id}/command", json={"command_type": "p"}, headers=hbw),
        await c.post(f"/api/devices/{a.device_id}/control", json={"command_type": "p"}, headers=hbw),
        await c.get(f"/api/devices/{a.device_id}/commands", headers=hbw),
        await c.get(f"/api/devices/{a.device_id}/commands/{cid}", headers=hbw),
    ]
    assert [r.status_code for r in replies] == [404] * len(replies)
    assert all("error" in r.json() for r in replies)
    # naming A's workspace without belonging to it is 404 too
    resp = await c.get(f"/api/v1/commands/{cid}", headers={**hb, "X-Workspace-ID": a.workspace_id})
    assert resp.status_code == 404
    assert (await world.row(cid))["state"] == "queued"
    assert await world.count("SELECT count(*) FROM commands WHERE device_id = $1", a.device_id) == 1


async def test_another_workspaces_device_polls_nothing_of_it(world: World) -> None:
    a, b = await world.device(), await world.device()
    await world.queue(a)
    resp = await world.client.get("/api/v1/devices/pending", headers=b.k)
    assert resp.status_code == 200 and resp.json() == []


@pytest.mark.parametrize("raw", MALFORMED)
async def test_malformed_bodies(world: World, raw: bytes) -> None:
    dev = await world.device()
    h = {**world.auth(dev.workspace_id), "Content-Type": "application/json"}
    for url in (f"/api/v1/devices/{dev.device_id}/commands", f"/api/devices/{dev.device_id}/command"):
        resp = await world.client.post(url, content=raw, headers={**h, "X-Workspace-ID": dev.workspace_id})
        assert 400 <= resp.status_code < 500 and "error" in resp.json(), (url, resp.text)
    await nothing_written(world, dev.device_id)


async def test_bad_new_commands(world: World) -> None:
    dev = await world.device()
    h = world.auth(dev.workspace_id)
    url = f"/api/v1/devices/{dev.device_id}/commands"
    for body in BAD_NEW:
        resp = await world.client.post(url, json=body, headers=h)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["code"] == "VALIDATION_ERROR"
    for body in TOO_LARGE:
        resp = await world.client.post(url, json=body, headers=h)
        assert resp.status_code == 413, resp.text
    for header in ("", "k" * 129):
        resp = await world.client.post(
            url, json={"command_type": "p"}, headers={**h, "Idempotency-Key": header}
        )
        assert resp.status_code == 400
    resp = await world.client.post(
        url, json={"command_type": "p", "idempotency_key": "a"}, headers={**h, "Idempotency-Key": "b"}
    )
    assert resp.status_code == 400
    for q in ("limit=0", "limit=1001", "offset=-1", "limit=x"):
        assert (await world.client.get(f"{url}?{q}", headers=h)).status_code == 400
    await nothing_written(world, dev.device_id)


async def test_bad_device_bodies_change_nothing(world: World) -> None:
    dev = await world.device()
    cid = (await world.queue(dev))["command_id"]
    k_url, s_url = f"/api/v1/devices/{cid}/status", f"/api/v1/device/commands/{cid}/result"
    k_bad = [
        {},
        {"status": "success"},
        {"status": "done"},
        {"status": None},
        {"status": "failed", "result": []},
    ]
    for body in k_bad:
        resp = await world.client.put(k_url, json=body, headers=dev.k)
        assert resp.status_code == 400, (body, resp.text)
    s_bad = [
        {},
        {"status": "completed"},
        {"status": 1},
        {"status": "success", "output": 5},
        {"status": "success", "executedAt": "soon"},
        {"status": "success", "duration": "1"},
        {"status": "success", "result": "x"},
    ]
    for body in s_bad:
        resp = await world.client.post(s_url, json=body, headers=dev.s)
        assert resp.status_code == 400, (body, resp.text)
    for raw in MALFORMED:
        assert 400 <= (await world.client.put(k_url, content=raw, headers=dev.k)).status_code < 500
        assert 400 <= (await world.client.post(s_url, content=raw, headers=dev.s)).status_code < 500
    row = await world.row(cid)
    assert (row["state"], row["result"], row["finished_at"]) == ("queued", None, None)
    assert len(await world.events()) == 1  # the queued event only


async def test_device_routes_are_rate_limited_per_device(database_url: str, prefix: str) -> None:
    async with started(database_url, prefix, device_rate_per_s=2) as world:
        dev, other = await world.device(), await world.device()
        codes = [
            (await world.client.get("/api/v1/devices/pending", headers=dev.k)).status_code for _ in range(5)
        ]
        assert codes.count(429) >= 1 and set(codes) == {200, 429}
        resp = await world.client.get("/api/v1/devices/pending", headers=dev.k)
        if resp.status_code == 429:
            assert resp.headers["Retry-After"] == "1" and resp.json()["error"]["code"] == "RATE_LIMITED"
        assert (await world.client.get("/api/v1/devices/pending", headers=other.k)).status_code == 200
