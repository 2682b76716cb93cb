"""Operator registry routes: create, list with filters, read, edit, delete; sites."""

from __future__ import annotations

from libs.events.identity import secret_hash
from libs.events.schemas.device import DeviceDeleted, DeviceRegistered, DeviceUpdated, SiteCreated

from .conftest import World, uid

DEVICE_FIELDS = {
    "device_id",
    "workspace_id",
    "name",
    "device_type",
    "site_id",
    "groups",
    "labels",
    "metadata",
    "disabled",
    "status",
    "status_reason",
    "metrics",
    "last_seen",
    "ip_address",
    "created_at",
    "updated_at",
}


async def create(world: World, ws: str, **body):
    body = {"name": "thermostat", "device_type": "esp32", **body}
    return await world.client.post("/api/v1/devices", json=body, headers=world.auth(ws))


async def test_create_device_returns_secrets_once_and_announces_hashes(world: World):
    ws = await world.workspace()
    site = await world.site(ws)
    resp = await create(
        world,
        ws,
        site_id=site,
        groups=["lab"],
        labels={"floor": "2"},
        metadata={"fw": "1.2"},
        credentials=["secret", "api_key"],
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == DEVICE_FIELDS | {"credentials"}
    assert body["workspace_id"] == ws and body["site_id"] == site
    assert body["status"] == "offline" and body["status_reason"] == "never_seen"
    assert body["last_seen"] is None and body["disabled"] is False
    assert set(body["credentials"]) == {"secret", "api_key"}
    assert all(len(s) == 64 for s in body["credentials"].values())

    [(_, site_event), (env, event)] = await world.events()
    assert isinstance(site_event, SiteCreated) and site_event.site_id == site
    assert isinstance(event, DeviceRegistered) and env.device_id == body["device_id"]
    assert event.workspace_id == ws and event.groups == ["lab"] and event.labels == {"floor": "2"}
    assert {c.kind: c.secret_sha256 for c in event.credentials} == {
        k: secret_hash(s) for k, s in body["credentials"].items()
    }
    assert event.by != "enrolment"

    got = await world.client.get(f"/api/v1/devices/{body['device_id']}", headers=world.auth(ws))
    assert got.status_code == 200
    assert got.json() == {k: v for k, v in body.items() if k != "credentials"}


async def test_default_credential_is_a_secret_that_verifies(world: World):
    ws = await world.workspace()
    body = (await create(world, ws)).json()
    assert list(body["credentials"]) == ["secret"]
    assert world.host.identity is not None
    cred = await world.host.identity.device_secret(body["credentials"]["secret"], "secret", body["device_id"])
    assert cred is not None and cred.workspace_id == ws


async def test_unknown_or_foreign_site_is_404_and_writes_nothing(world: World):
    ws, other = await world.workspace(), await world.workspace()
    foreign = await world.site(other)
    for site in ("no-such-site", foreign):
        resp = await create(world, ws, site_id=site)
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "SITE_NOT_FOUND"
    assert await world.count("SELECT count(*) FROM devices WHERE workspace_id = $1", ws) == 0
    assert [type(e) for _, e in await world.events()] == [SiteCreated]


async def test_list_filters_and_pages_newest_first(world: World):
    ws = await world.workspace()
    site = await world.site(ws)
    a = (await create(world, ws, name="Kitchen 50%_off", groups=["g1"], labels={"env": "prod"})).json()
    b = (await create(world, ws, name="Garage", site_id=site, labels={"env": "dev"})).json()
    c = (await create(world, ws, name="Attic", groups=["g1", "g2"])).json()
    h = world.auth(ws)

    async def ids(**params):
        resp = await world.client.get("/api/v1/devices", params=params, headers=h)
        assert resp.status_code == 200, resp.text
        return [d["device_id"] for d in resp.json()["items"]]

    assert await ids() == [c["device_id"], b["device_id"], a["device_id"]]
    assert await ids(group="g1") == [c["device_id"], a["device_id"]]
    assert await ids(site=site) == [b["device_id"]]
    assert await ids(label="env:prod") == [a["device_id"]]
    assert await ids(q="50%_") == [a["device_id"]]
    assert await ids(q="%") == [a["device_id"]]
    assert await ids(q="gar") == [b["device_id"]]
    assert await ids(q=b["device_id"][:8]) == [b["device_id"]]
    assert await ids(status="offline") == [c["device_id"], b["device_id"], a["device_id"]]
    assert await ids(status="online") == []
    page = (await world.client.get("/api/v1/devices", params={"limit": 1, "offset": 1}, headers=h)).json()
    assert page["total"] == 3 and page["limit"] == 1 and page["offset"] == 1
    assert [d["device_id"] for d in page["items"]] == [b["device_id"]]
    default = (await world.client.get("/api/v1/devices", headers=h)).json()
    assert default["limit"] == 100 and default["offset"] == 0


async def test_patch_changes_fields_and_emits_only_changes(world: World):
    ws = await world.workspace()
    site = await world.site(ws)
    dev = (await create(world, ws)).json()
    url = f"/api/v1/devices/{dev['device_id']}"
    patch = {"name": "Renamed ✓", "site_id": site, "groups": ["x"], "labels": {"a": "b"}, "disabled": True}
    resp = await world.client.patch(url, json=patch, headers=world.auth(ws))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert {k: body[k] for k in patch} == patch
    assert body["updated_at"] >= dev["updated_at"]
    event = (await world.events())[-1][1]
    assert isinstance(event, DeviceUpdated) and event.changes == patch and event.device_id == dev["device_id"]

    again = await world.client.patch(url, json={"name": "Renamed ✓"}, headers=world.auth(ws))
    assert again.status_code == 200
    assert len(await world.events()) == 3  # site, registered, updated: no event for no change

    cleared = await world.client.patch(url, json={"site_id": None, "disabled": False}, headers=world.auth(ws))
    assert cleared.json()["site_id"] is None and cleared.json()["disabled"] is False
    assert (await world.events())[-1][1].changes == {"site_id": None, "disabled": False}


async def test_status_is_not_editable(world: World):
    ws = await world.workspace()
    dev = (await create(world, ws)).json()
    for field in ("status", "status_reason", "last_seen"):
        resp = await world.client.patch(
            f"/api/v1/devices/{dev['device_id']}", json={field: "online"}, headers=world.auth(ws)
        )
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "READ_ONLY_FIELD"
    assert len(await world.events()) == 1


async def test_delete_hides_device_everywhere_and_revokes_credentials(world: World):
    ws = await world.workspace()
    dev = (await create(world, ws)).json()
    url = f"/api/v1/devices/{dev['device_id']}"
    h = world.auth(ws)
    resp = await world.client.delete(url, headers=h)
    assert resp.status_code == 204 and resp.content == b""
    assert (await world.client.get(url, headers=h)).status_code == 404
    assert (await world.client.patch(url, json={"name": "x"}, headers=h)).status_code == 404
    assert (await world.client.delete(url, headers=h)).status_code == 404
    assert (await world.client.get("/api/v1/devices", headers=h)).json()["total"] == 0
    event = (await world.events())[-1][1]
    assert isinstance(event, DeviceDeleted) and event.device_id == dev["device_id"]
    assert world.host.identity is not None
    assert await world.host.identity.device_secret(dev["credentials"]["secret"], "secret") is None


async def test_viewer_reads_but_cannot_write(world: World):
    ws = await world.workspace()
    dev = (await create(world, ws)).json()
    viewer = world.auth(ws, role="viewer")
    url = f"/api/v1/devices/{dev['device_id']}"
    assert (await world.client.get(url, headers=viewer)).status_code == 200
    assert (await world.client.get("/api/v1/devices", headers=viewer)).status_code == 200
    assert (await world.client.get("/api/v1/sites", headers=viewer)).status_code == 200
    writes = [
        world.client.post("/api/v1/devices", json={"name": "a", "device_type": "esp32"}, headers=viewer),
        world.client.patch(url, json={"name": "b"}, headers=viewer),
        world.client.delete(url, headers=viewer),
        world.client.post("/api/v1/sites", json={"site_id": uid("s"), "name": "S"}, headers=viewer),
    ]
    for call in writes:
        resp = await call
        assert resp.status_code == 403
        assert resp.json()["error"]["code"] == "FORBIDDEN"
    assert len(await world.events()) == 1


async def test_routes_need_an_operator_token(world: World):
    ws = await world.workspace()
    for method, path in [
        ("GET", "/api/v1/devices"),
        ("POST", "/api/v1/devices"),
        ("GET", "/api/v1/devices/x"),
        ("PATCH", "/api/v1/devices/x"),
        ("DELETE", "/api/v1/devices/x"),
        ("GET", "/api/v1/sites"),
        ("POST", "/api/v1/sites"),
        ("GET", "/api/v1/sites/x"),
    ]:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
            resp = await world.client.request(method, path, headers=headers, json={})
            assert resp.status_code == 401, (method, path)
            assert resp.json()["error"]["code"] == "UNAUTHORIZED"
    # a workspace header naming a workspace the operator is not in is 404
    headers = {**world.auth(ws), "X-Workspace-ID": "ws-other"}
    assert (await world.client.get("/api/v1/devices", headers=headers)).status_code == 404


async def test_sites_create_list_get_and_conflict(world: World):
    ws = await world.workspace()
    h = world.auth(ws)
    site_id = uid("site-")
    body = {"site_id": site_id, "name": "Depot", "location": "Oslo", "description": "north"}
    resp = await world.client.post("/api/v1/sites/", json=body, headers=h)
    assert resp.status_code == 201, resp.text
    site = resp.json()
    assert set(site) == {"site_id", "name", "location", "description", "workspace_id", "created_at"}
    assert site["workspace_id"] == ws and site["location"] == "Oslo"
    dup = await world.client.post("/api/v1/sites", json=body, headers=h)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "SITE_EXISTS"
    other = await world.workspace()
    clash = await world.client.post("/api/v1/sites", json=body, headers=world.auth(other))
    assert clash.status_code == 409  # site ids are global
    second = await world.site(ws)
    listed = (await world.client.get("/api/v1/sites", headers=h)).json()
    assert [s["site_id"] for s in listed] == [second, site_id]
    assert (await world.client.get(f"/api/v1/sites/{site_id}", headers=h)).json() == site
    assert (await world.client.get("/api/v1/sites/nope", headers=h)).status_code == 404
    minimal = await world.client.post("/api/v1/sites", json={"site_id": uid("s"), "name": "M"}, headers=h)
    assert minimal.json()["location"] is None and minimal.json()["description"] is None
    event = (await world.events())[0][1]
    assert isinstance(event, SiteCreated) and event.location == "Oslo" and event.workspace_id == ws


async def test_disabling_stops_credentials_and_enabling_restores_them(world: World):
    ws = await world.workspace()
    dev = (await create(world, ws)).json()
    secret, url = dev["credentials"]["secret"], f"/api/v1/devices/{dev['device_id']}"
    identity = world.host.identity
    assert identity is not None
    await world.client.patch(url, json={"disabled": True}, headers=world.auth(ws))
    await identity.feed.catch_up()
    assert identity.feed.index.credential(secret, "secret") is None
    await world.client.patch(url, json={"disabled": False}, headers=world.auth(ws))
    await identity.feed.catch_up()
    assert identity.feed.index.credential(secret, "secret") is not None
