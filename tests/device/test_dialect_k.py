"""Dialect K: device self-registration at a site (open enrolment or operator), and its sites route."""

from __future__ import annotations

import re

from libs.events.identity import secret_hash
from libs.events.schemas.device import DeviceRegistered

from .conftest import World, uid

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def k_body(**extra):
    return {"device_id": uid("pos-terminal-"), "name": "POS 1", "device_type": "pos_terminal", **extra}


async def register(world: World, site: str, body: dict, headers: dict | None = None):
    return await world.client.post(f"/api/v1/devices/sites/{site}/devices", json=body, headers=headers or {})


async def test_open_enrolment_registers_without_a_token(world: World):
    ws = await world.workspace(open_enrolment=True)
    site = await world.site(ws)
    body = k_body(ip_address="192.168.1.50", config={"currency": "NOK"}, unknown_field=1)
    resp = await register(world, site, body)
    assert resp.status_code == 201, resp.text
    reply = resp.json()
    assert set(reply) == {"message", "device_id", "site_id", "api_key"}
    assert reply["device_id"] == body["device_id"] and reply["site_id"] == site
    assert HEX64.match(reply["api_key"])

    env, event = (await world.events())[-1]
    assert isinstance(event, DeviceRegistered) and event.by == "enrolment"
    assert event.workspace_id == ws and event.site_id == site and event.device_type == "pos_terminal"
    [cred] = event.credentials
    assert cred.kind == "api_key" and cred.secret_sha256 == secret_hash(reply["api_key"])
    assert env.producer == "device"

    identity = world.host.identity
    assert identity is not None
    await identity.feed.catch_up()
    found = identity.feed.index.credential(reply["api_key"], "api_key", body["device_id"])
    assert found is not None and found.workspace_id == ws
    assert identity.feed.index.credential(reply["api_key"], "api_key", "someone-else") is None

    dev = (await world.client.get(f"/api/v1/devices/{body['device_id']}", headers=world.auth(ws))).json()
    assert dev["site_id"] == site and dev["ip_address"] == "192.168.1.50"
    assert dev["metadata"] == {"config": {"currency": "NOK"}} and dev["status"] == "offline"


async def test_existing_or_deleted_device_id_is_409(world: World):
    ws = await world.workspace(open_enrolment=True)
    site = await world.site(ws)
    body = k_body()
    assert (await register(world, site, body)).status_code == 201
    dup = await register(world, site, body)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "DEVICE_EXISTS"
    h = world.auth(ws)
    assert (await world.client.delete(f"/api/v1/devices/{body['device_id']}", headers=h)).status_code == 204
    again = await register(world, site, body)
    assert again.status_code == 409  # ids are never reused: old credentials must stay dead
    assert len(await world.events()) == 3  # site, registered, deleted


async def test_unknown_site_is_404(world: World):
    ws = await world.workspace()
    for headers in ({}, world.auth(ws)):
        resp = await register(world, "no-such-site", k_body(), headers)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "SITE_NOT_FOUND"
    assert await world.events() == []


async def test_closed_workspace_needs_an_operator_of_that_workspace(world: World):
    ws, other = await world.workspace(), await world.workspace(open_enrolment=True)
    site = await world.site(ws)
    anon = await register(world, site, k_body())
    assert anon.status_code == 401 and anon.json()["error"]["code"] == "UNAUTHORIZED"
    bad = await register(world, site, k_body(), {"Authorization": "Bearer forged"})
    assert bad.status_code == 401
    foreign = await register(world, site, k_body(), world.auth(other))
    assert foreign.status_code == 404
    viewer = await register(world, site, k_body(), world.auth(ws, role="viewer"))
    assert viewer.status_code == 403
    assert len(await world.events()) == 1  # only the site

    body = k_body()
    token = world.token(ws, sub="op-alice")
    ok = await register(world, site, body, {"Authorization": f"Bearer {token}"})
    assert ok.status_code == 201, ok.text
    event = (await world.events())[-1][1]
    assert isinstance(event, DeviceRegistered) and event.by == "op-alice"


async def test_operator_of_several_workspaces_registers_at_a_site_of_any(world: World):
    home, ws = await world.workspace(), await world.workspace()
    site = await world.site(ws)
    token = world.token({home: "owner", ws: "operator"})
    resp = await register(world, site, k_body(), {"Authorization": f"Bearer {token}"})
    assert resp.status_code == 201
    assert (await world.events())[-1][1].workspace_id == ws


async def test_enrolment_switch_is_read_from_the_auth_stream_when_unknown(world: World):
    ws = await world.workspace()  # closed
    site = await world.site(ws)
    assert (await register(world, site, k_body())).status_code == 401
    opened = await world.workspace(open_enrolment=True)  # published after the host started
    open_site = await world.site(opened)
    assert (await register(world, open_site, k_body())).status_code == 201


async def test_unauthenticated_registrations_are_rate_limited_per_address(world: World):
    ws = await world.workspace(open_enrolment=True)
    site = await world.site(ws)
    codes = [(await register(world, "no-such-site", k_body())).status_code for _ in range(30)]
    assert codes == [404] * 30
    limited = await register(world, site, k_body())
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "RATE_LIMITED"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # operators are not limited by the anonymous budget
    assert (await register(world, site, k_body(), world.auth(ws))).status_code == 201


async def test_k_accepts_any_lowercase_type_but_not_others(world: World):
    ws = await world.workspace(open_enrolment=True)
    site = await world.site(ws)
    for device_type in ("linux_server", "a", "x" * 32):
        assert (await register(world, site, k_body(device_type=device_type))).status_code == 201
    for device_type in ("POS", "pos-terminal", "x" * 33, "", 5, None):
        resp = await register(world, site, k_body(device_type=device_type))
        assert resp.status_code == 400, device_type
        assert resp.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_bad_ip_address_is_400(world: World):
    ws = await world.workspace(open_enrolment=True)
    site = await world.site(ws)
    for ip in ("999.1.1.1", "not-an-ip", 12):
        assert (await register(world, site, k_body(ip_address=ip))).status_code == 400
    assert (await register(world, site, k_body(ip_address="::1"))).status_code == 201


async def test_concurrent_registrations_of_one_id_yield_one_device(world: World):
    import asyncio

    ws = await world.workspace(open_enrolment=True)
    site = await world.site(ws)
    body = k_body()
    replies = await asyncio.gather(*(register(world, site, body) for _ in range(5)))
    assert sorted(r.status_code for r in replies) == [201, 409, 409, 409, 409]
    registered = [e for _, e in await world.events() if isinstance(e, DeviceRegistered)]
    assert len(registered) == 1
