"""Bulk registration (``POST /api/v1/devices/bulk``): one transaction, one event per device, every
credential usable at once; ``bulk`` is never a device id."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from libs.events.schemas.device import DeviceRegistered

from .conftest import World, uid

BULK = "/api/v1/devices/bulk"


async def test_bulk_creates_devices_with_working_credentials(world: World) -> None:
    ws = await world.workspace()
    site = await world.site(ws)
    body = {
        "count": 3,
        "name_prefix": "sim",
        "device_type": "virtual",
        "groups": ["sim"],
        "labels": {"fleet": "a"},
        "site_id": site,
        "credentials": ["secret", "api_key"],
    }
    resp = await world.client.post(BULK, json=body, headers=world.auth(ws, role="operator"))
    assert resp.status_code == 201, resp.text
    items = resp.json()["items"]
    assert [i["name"] for i in items] == ["sim-00001", "sim-00002", "sim-00003"]
    assert all(set(i["credentials"]) == {"secret", "api_key"} for i in items)
    listed = (await world.client.get("/api/v1/devices", headers=world.auth(ws))).json()
    assert listed["total"] == 3
    assert [d["name"] for d in listed["items"]] == ["sim-00003", "sim-00002", "sim-00001"]  # newest first
    assert all(d["site_id"] == site and d["groups"] == ["sim"] for d in listed["items"])
    registered = [e for _env, e in await world.events() if isinstance(e, DeviceRegistered)]
    assert [e.device_id for e in registered] == [i["device_id"] for i in items]
    assert world.host.identity is not None
    await world.host.identity.feed.catch_up()  # the follower may not have read them yet
    index = world.host.identity.feed.index
    for item, event in zip(items, registered, strict=True):
        assert event.by != "enrolment" and event.workspace_id == ws
        hashes = {c.kind: c.secret_sha256 for c in event.credentials}
        assert hashes["secret"] == hashlib.sha256(item["credentials"]["secret"].encode()).hexdigest()
        for kind, secret in item["credentials"].items():
            assert index.credential(secret, kind, item["device_id"]) is not None


async def test_bulk_takes_up_to_a_thousand_and_numbers_from_start(world: World) -> None:
    ws = await world.workspace()
    body = {"count": 1000, "name_prefix": "load", "device_type": "linux_server", "start": 1001}
    resp = await world.client.post(BULK, json=body, headers=world.auth(ws))
    assert resp.status_code == 201, resp.text
    items = resp.json()["items"]
    assert len(items) == len({i["device_id"] for i in items}) == 1000
    assert (items[0]["name"], items[-1]["name"]) == ("load-01001", "load-02000")
    assert list(items[0]["credentials"]) == ["secret"]
    assert await world.count("SELECT count(*) FROM devices WHERE workspace_id = $1", ws) == 1000


@pytest.mark.parametrize(
    "change",
    [
        {"count": 0},
        {"count": 1001},
        {"count": "3"},
        {"name_prefix": ""},
        {"name_prefix": "  "},
        {"name_prefix": "x" * 81},
        {"device_type": "Bad"},
        {"credentials": []},
        {"credentials": ["password"]},
        {"groups": ["x" * 65]},
    ],
)
async def test_bad_bulk_requests_write_nothing(world: World, change: dict[str, Any]) -> None:
    ws = await world.workspace()
    body = {"count": 2, "name_prefix": "p", "device_type": "virtual", **change}
    resp = await world.client.post(BULK, json=body, headers=world.auth(ws))
    assert resp.status_code == 400, resp.text
    assert await world.count("SELECT count(*) FROM devices WHERE workspace_id = $1", ws) == 0


async def test_bulk_roles_sites_and_the_reserved_id(world: World) -> None:
    ws, other = await world.workspace(), await world.workspace()
    body = {"count": 2, "name_prefix": "p", "device_type": "virtual"}
    assert (
        await world.client.post(BULK, json=body, headers=world.auth(ws, role="viewer"))
    ).status_code == 403
    assert (await world.client.post(BULK, json=body)).status_code == 401
    foreign = await world.site(other)
    resp = await world.client.post(BULK, json={**body, "site_id": foreign}, headers=world.auth(ws))
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "SITE_NOT_FOUND"
    assert await world.count("SELECT count(*) FROM devices WHERE workspace_id = $1", ws) == 0
    # "bulk" is a path, never a device: not readable, and not registrable by a K client
    assert (await world.client.get(BULK, headers=world.auth(ws))).status_code == 404
    site = await world.site(ws)
    for reserved in ("bulk", "pending", "sites"):
        k = await world.client.post(
            f"/api/v1/devices/sites/{site}/devices",
            json={"device_id": reserved, "name": "n", "device_type": "pos_terminal"},
            headers=world.auth(ws),
        )
        assert k.status_code == 400, (reserved, k.text)
    ok = await world.client.post(
        f"/api/v1/devices/sites/{site}/devices",
        json={"device_id": uid("bulky-"), "name": "n", "device_type": "pos_terminal"},
        headers=world.auth(ws),
    )
    assert ok.status_code == 201
