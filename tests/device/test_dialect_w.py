"""Dialect W: workspace REST over ``/api/devices`` with ``X-Workspace-ID`` required."""

from __future__ import annotations

import re

from libs.events.identity import secret_hash
from libs.events.schemas.device import DeviceDeleted, DeviceRegistered, DeviceUpdated

from .conftest import World

HEX64 = re.compile(r"^[0-9a-f]{64}$")
W_FIELDS = {
    "id",
    "workspace_id",
    "name",
    "device_type",
    "status",
    "last_seen",
    "device_metadata",
    "created_at",
    "updated_at",
}


async def w_create(world: World, ws: str, **body):
    body = {"name": "Board", "device_type": "arduino", **body}
    return await world.client.post("/api/devices", json=body, headers=world.auth(ws, w=True))


async def test_create_returns_the_token_once(world: World):
    ws = await world.workspace()
    resp = await w_create(world, ws, metadata={"pins": [1, 2]})
    assert resp.status_code == 201, resp.text
    dev = resp.json()
    assert set(dev) == W_FIELDS | {"token"}
    assert HEX64.match(dev["token"])
    assert dev["workspace_id"] == ws and dev["device_type"] == "arduino" and dev["name"] == "Board"
    assert dev["status"] == "offline" and dev["last_seen"] is None
    assert dev["device_metadata"] == {"pins": [1, 2]}
    event = (await world.events())[-1][1]
    assert isinstance(event, DeviceRegistered) and event.device_id == dev["id"]
    assert [(c.kind, c.secret_sha256) for c in event.credentials] == [("token", secret_hash(dev["token"]))]
    assert world.host.identity is not None
    assert await world.host.identity.device_secret(dev["token"], "token", dev["id"]) is not None

    got = await world.client.get(f"/api/devices/{dev['id']}", headers=world.auth(ws, w=True))
    assert got.status_code == 200
    assert got.json() == {k: v for k, v in dev.items() if k != "token"}


async def test_every_w_type_and_no_other(world: World):
    ws = await world.workspace()
    for t in ("arduino", "esp32", "raspberry_pi", "virtual"):
        assert (await w_create(world, ws, device_type=t)).status_code == 201
    for t in ("linux_server", "pos_terminal", "ESP32", None):
        resp = await w_create(world, ws, device_type=t)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_list_is_an_array_newest_first_without_tokens(world: World):
    ws = await world.workspace()
    ids = [(await w_create(world, ws, name=f"d{i}")).json()["id"] for i in range(3)]
    h = world.auth(ws, w=True)
    resp = await world.client.get("/api/devices", headers=h)
    assert resp.status_code == 200
    items = resp.json()
    assert isinstance(items, list) and [d["id"] for d in items] == ids[::-1]
    assert all(set(d) == W_FIELDS for d in items)
    page = (await world.client.get("/api/devices", params={"limit": 1, "offset": 1}, headers=h)).json()
    assert [d["id"] for d in page] == [ids[1]]
    for bad in ({"limit": 1001}, {"limit": -1}, {"offset": -1}, {"limit": "x"}, {"offset": 10**30}):
        assert (await world.client.get("/api/devices", params=bad, headers=h)).status_code == 400


async def test_patch_delete_and_status(world: World):
    ws = await world.workspace()
    dev = (await w_create(world, ws)).json()
    h = world.auth(ws, w=True)
    url = f"/api/devices/{dev['id']}"
    resp = await world.client.patch(url, json={"name": "Renamed", "metadata": {"v": 2}}, headers=h)
    assert resp.status_code == 200
    assert resp.json()["name"] == "Renamed" and resp.json()["device_metadata"] == {"v": 2}
    assert "token" not in resp.json()
    event = (await world.events())[-1][1]
    assert isinstance(event, DeviceUpdated) and event.changes == {"name": "Renamed", "metadata": {"v": 2}}
    # fields outside W's patch are ignored, not applied
    ignored = await world.client.patch(url, json={"device_type": "esp32", "disabled": True}, headers=h)
    assert ignored.status_code == 200 and ignored.json()["device_type"] == "arduino"

    status = await world.client.get(f"{url}/status", headers=h)
    assert status.status_code == 200
    body = status.json()
    assert body["id"] == dev["id"] and body["status"] == "offline" and body["last_seen"] is None
    assert body["status_reason"] == "never_seen"

    assert (await world.client.delete(url, headers=h)).status_code == 204
    assert isinstance((await world.events())[-1][1], DeviceDeleted)
    for method in ("GET", "PATCH", "DELETE"):
        assert (await world.client.request(method, url, headers=h, json={"name": "x"})).status_code == 404
    assert (await world.client.get(f"{url}/status", headers=h)).status_code == 404
    assert (await world.client.get("/api/devices", headers=h)).json() == []


async def test_workspace_header_is_required_and_must_be_the_operators(world: World):
    ws = await world.workspace()
    dev = (await w_create(world, ws)).json()
    no_header = world.auth(ws)
    wrong = {**no_header, "X-Workspace-ID": "ws-not-mine"}
    url = f"/api/devices/{dev['id']}"
    calls = [
        ("POST", "/api/devices", {"name": "a", "device_type": "esp32"}),
        ("GET", "/api/devices", None),
        ("GET", url, None),
        ("PATCH", url, {"name": "b"}),
        ("DELETE", url, None),
        ("GET", f"{url}/status", None),
    ]
    for method, path, body in calls:
        resp = await world.client.request(method, path, headers=no_header, json=body)
        assert resp.status_code == 400, (method, path)
        assert resp.json()["error"]["code"] == "WORKSPACE_REQUIRED"
        assert (await world.client.request(method, path, headers=wrong, json=body)).status_code == 404
        assert (await world.client.request(method, path, json=body)).status_code == 401
    assert len(await world.events()) == 1


async def test_devices_of_every_dialect_are_one_registry(world: World):
    ws = await world.workspace(open_enrolment=True)
    site = await world.site(ws)
    k = await world.client.post(
        f"/api/v1/devices/sites/{site}/devices",
        json={"device_id": "k-" + ws, "name": "K", "device_type": "pos_terminal"},
    )
    w = (await w_create(world, ws)).json()
    op = await world.client.post(
        "/api/v1/devices", json={"name": "S", "device_type": "linux_server"}, headers=world.auth(ws)
    )
    listed = (await world.client.get("/api/devices", headers=world.auth(ws, w=True))).json()
    assert [d["id"] for d in listed] == [op.json()["device_id"], w["id"], k.json()["device_id"]]
    total = (await world.client.get("/api/v1/devices", headers=world.auth(ws))).json()["total"]
    assert total == 3
