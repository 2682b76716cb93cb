"""No secret, API key or token a route returns ever reaches a log record."""

from __future__ import annotations

import logging

import pytest

from .conftest import World, uid


async def test_minted_secrets_never_appear_in_logs(world: World, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    ws = await world.workspace(open_enrolment=True)
    site = await world.site(ws)
    shown: list[str] = []
    op = await world.client.post(
        "/api/v1/devices",
        json={"name": "all", "device_type": "esp32", "credentials": ["secret", "api_key", "token"]},
        headers=world.auth(ws),
    )
    shown += op.json()["credentials"].values()
    k = await world.client.post(
        f"/api/v1/devices/sites/{site}/devices",
        json={"device_id": uid("k"), "name": "k", "device_type": "pos"},
    )
    shown.append(k.json()["api_key"])
    w = await world.client.post(
        "/api/devices", json={"name": "w", "device_type": "virtual"}, headers=world.auth(ws, w=True)
    )
    shown.append(w.json()["token"])
    device_id = op.json()["device_id"]
    await world.client.patch(f"/api/v1/devices/{device_id}", json={"disabled": True}, headers=world.auth(ws))
    await world.client.get("/api/v1/devices", headers=world.auth(ws))
    await world.client.get("/api/devices", headers=world.auth(ws, w=True))
    await world.client.delete(f"/api/v1/devices/{device_id}", headers=world.auth(ws))
    assert world.host.identity is not None
    await world.host.identity.feed.catch_up()

    assert len(shown) == 5 and all(len(s) == 64 for s in shown)
    assert any("registered" in r.getMessage() for r in caplog.records)  # the flows did log
    for record in caplog.records:
        text = f"{record.getMessage()} {record.args!r} {record.exc_text or ''}"
        for secret in shown:
            assert secret not in text, record.name
    for secret in shown:
        assert secret not in caplog.text

    # nor are they stored anywhere in the service's tables or streams (only their hashes)
    assert world.host.pool is not None
    dump = "".join(str(dict(r)) for r in await world.host.pool.fetch("SELECT * FROM devices"))
    dump += "".join(str(dict(r)) for r in await world.host.pool.fetch("SELECT * FROM outbox"))
    dump += str(await world.host.redis.xrange(world.prefix + "events:device"))  # type: ignore[union-attr]
    for secret in shown:
        assert secret not in dump


async def test_enrolment_tokens_and_agent_secrets_never_appear_in_logs(
    world: World, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    ws = await world.workspace()
    made = await world.client.post("/api/v1/enrolment-tokens", json={"max_uses": 2}, headers=world.auth(ws))
    token = made.json()["token"]
    agent = ("agent-" + uid()).ljust(32, "0")
    shown = [token, agent]
    for _ in range(2):  # enrol, then a retry (rotation)
        resp = await world.client.post(
            "/api/v1/agent/enrol", json={"enrolment_token": token, "agent_id": agent}
        )
        shown.append(resp.json()["device_secret"])
    bulk = await world.client.post(
        "/api/v1/devices/bulk",
        json={"count": 2, "name_prefix": "b", "device_type": "virtual"},
        headers=world.auth(ws),
    )
    shown += [i["credentials"]["secret"] for i in bulk.json()["items"]]
    await world.client.delete(f"/api/v1/enrolment-tokens/{made.json()['token_id']}", headers=world.auth(ws))
    assert any("enrolled" in r.getMessage() for r in caplog.records)
    for secret in shown:
        assert secret not in caplog.text
    assert world.host.pool is not None
    dump = ""
    for table in ("devices", "outbox", "enrolment_tokens", "enrolment_agents"):
        dump += "".join(str(dict(r)) for r in await world.host.pool.fetch(f"SELECT * FROM {table}"))
    dump += str(await world.host.redis.xrange(world.prefix + "events:device"))  # type: ignore[union-attr]
    for secret in shown:
        assert secret not in dump
