"""Workspaces never see each other: another workspace's ids are 404 and lists never include them."""

from __future__ import annotations

from .conftest import World, uid


async def populate(world: World) -> dict[str, str]:
    """Workspace A with a site and a device of every dialect."""
    ws = await world.workspace(open_enrolment=True)
    site = await world.site(ws)
    k_id = uid("k-")
    k = await world.client.post(
        f"/api/v1/devices/sites/{site}/devices",
        json={"device_id": k_id, "name": "secret-name-k", "device_type": "pos_terminal"},
    )
    op = await world.client.post(
        "/api/v1/devices",
        json={"name": "secret-name-op", "device_type": "esp32", "site_id": site, "groups": ["g"]},
        headers=world.auth(ws),
    )
    w = await world.client.post(
        "/api/devices", json={"name": "secret-name-w", "device_type": "esp32"}, headers=world.auth(ws, w=True)
    )
    assert {k.status_code, op.status_code, w.status_code} == {201}
    return {"ws": ws, "site": site, "k": k_id, "op": op.json()["device_id"], "w": w.json()["id"]}


async def test_other_workspace_gets_404_on_every_id_route(world: World):
    a = await populate(world)
    b = await world.workspace()
    h, hw = world.auth(b), world.auth(b, w=True)
    before = len(await world.events())
    for dev in (a["k"], a["op"], a["w"]):
        calls = [
            ("GET", f"/api/v1/devices/{dev}", h, None),
            ("PATCH", f"/api/v1/devices/{dev}", h, {"name": "pwned"}),
            ("DELETE", f"/api/v1/devices/{dev}", h, None),
            ("GET", f"/api/devices/{dev}", hw, None),
            ("PATCH", f"/api/devices/{dev}", hw, {"name": "pwned"}),
            ("DELETE", f"/api/devices/{dev}", hw, None),
            ("GET", f"/api/devices/{dev}/status", hw, None),
        ]
        for method, path, headers, body in calls:
            resp = await world.client.request(method, path, headers=headers, json=body)
            assert resp.status_code == 404, (method, path, resp.text)
            assert resp.json()["error"]["code"] == "DEVICE_NOT_FOUND"
    assert (await world.client.get(f"/api/v1/sites/{a['site']}", headers=h)).status_code == 404
    # B cannot use A's site, neither to create nor to move a device, nor to register at it
    use = await world.client.post(
        "/api/v1/devices", json={"name": "x", "device_type": "esp32", "site_id": a["site"]}, headers=h
    )
    assert use.status_code == 404
    mine = (
        await world.client.post("/api/v1/devices", json={"name": "x", "device_type": "esp32"}, headers=h)
    ).json()
    move = await world.client.patch(
        f"/api/v1/devices/{mine['device_id']}", json={"site_id": a["site"]}, headers=h
    )
    assert move.status_code == 404
    reg = await world.client.post(
        f"/api/v1/devices/sites/{a['site']}/devices",
        json={"device_id": uid("b-"), "name": "x", "device_type": "esp32"},
        headers=h,
    )
    assert reg.status_code == 404
    # nothing of A changed: the only new event is B's own device
    assert len(await world.events()) == before + 1
    names = [
        d["name"]
        for d in (await world.client.get("/api/v1/devices", headers=world.auth(a["ws"]))).json()["items"]
    ]
    assert sorted(names) == ["secret-name-k", "secret-name-op", "secret-name-w"]


async def test_lists_never_include_another_workspace(world: World):
    a = await populate(world)
    b = await world.workspace()
    h = world.auth(b)
    for params in ({}, {"q": "secret-name"}, {"site": a["site"]}, {"group": "g"}, {"status": "offline"}):
        body = (await world.client.get("/api/v1/devices", params=params, headers=h)).json()
        assert body["items"] == [] and body["total"] == 0, params
    assert (await world.client.get("/api/v1/sites", headers=h)).json() == []
    assert (await world.client.get("/api/devices", headers=world.auth(b, w=True))).json() == []


async def test_workspace_header_cannot_reach_a_workspace_the_operator_is_not_in(world: World):
    a = await populate(world)
    b = await world.workspace()
    h = {**world.auth(b), "X-Workspace-ID": a["ws"]}
    for path in ("/api/v1/devices", f"/api/v1/devices/{a['op']}", "/api/v1/sites", "/api/devices"):
        assert (await world.client.get(path, headers=h)).status_code == 404, path


async def test_an_operator_of_both_picks_with_the_header(world: World):
    a = await populate(world)
    b = await world.workspace()
    token = world.token({b: "owner", a["ws"]: "viewer"})
    home = {"Authorization": f"Bearer {token}"}
    assert (await world.client.get(f"/api/v1/devices/{a['op']}", headers=home)).status_code == 404
    there = {**home, "X-Workspace-ID": a["ws"]}
    assert (await world.client.get(f"/api/v1/devices/{a['op']}", headers=there)).status_code == 200
    assert (await world.client.delete(f"/api/v1/devices/{a['op']}", headers=there)).status_code == 403
