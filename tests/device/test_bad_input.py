"""Bad input on every route: a 4xx JSON error, never a 500, and nothing written (tables, stream)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from .conftest import World, uid

MALFORMED = [b"", b"{", b"not json", b"[]", b"null", b"123", b'"text"', b"\xff\xfe\x00", b'{"name": 1e999}']
MALFORMED += [
    b'{"name": "\\ud800"}',
    b'{"name": "a"',
    b"{" * 10_000,
    b'{"z": ' + b"[" * 5000 + b"]" * 5000 + b"}",
]


def bad_bodies(required: dict) -> list[object]:
    """Well-formed JSON that is wrong: missing fields, wrong types, out-of-range values."""
    out: list[object] = [{}, {"unrelated": 1}]
    for key in required:
        out.append({k: v for k, v in required.items() if k != key})
        for wrong in (None, 1, 10**30, 1.5, True, [], {}, ["x"]):
            out.append({**required, key: wrong})
    for name in ("", "   ", "x" * 101, "🚀" * 101, "nul\x00byte", "\x00"):
        out.append({**required, "name": name})
    return out


EXTRA_BAD = {
    "operator": [
        {"groups": "g"},
        {"groups": [1]},
        {"groups": ["x" * 65]},
        {"groups": ["g"] * 33},
        {"labels": {"a": 1}},
        {"labels": ["a"]},
        {"labels": {"": "v"}},
        {"labels": {"k": "v" * 256}},
        {"metadata": []},
        {"metadata": "x"},
        {"metadata": {"deep": json.loads("[" * 40 + "]" * 40)}},
        {"metadata": {"deep": json.loads("[" * 900 + "]" * 900)}},
        {"metadata": {"blob": "x" * 20_000}},
        {"metadata": {"k": "nul\x00"}},
        {"metadata": {"nul\x00key": 1}},
        {"credentials": ["bad"]},
        {"credentials": "secret"},
        {"site_id": "bad id with spaces"},
        {"site_id": 5},
        {"device_type": "UPPER"},
    ],
    "k": [{"ip_address": "nope"}, {"config": []}, {"device_id": "has space"}, {"device_id": "x" * 129}],
    "w": [{"device_type": "linux_server"}, {"metadata": [1]}],
    "site": [{"location": 1}, {"description": "x" * 1001}, {"site_id": "../etc"}, {"site_id": ""}],
    "patch": [
        {"name": None},
        {"name": ""},
        {"disabled": "yes"},
        {"groups": None},
        {"labels": {"a": None}},
        {"site_id": "no-such-site"},
        {"status": "online"},
    ],
    "w_patch": [{"name": None}, {"name": "x" * 101}, {"metadata": "x"}],
}


async def snapshot(world: World, ws: str) -> tuple[int, int, int, str]:
    devices = await world.count("SELECT count(*) FROM devices WHERE workspace_id = $1", ws)
    sites = await world.count("SELECT count(*) FROM sites WHERE workspace_id = $1", ws)
    events = len(await world.events())
    assert world.host.pool is not None
    updated = await world.host.pool.fetchval(
        "SELECT coalesce(max(updated_at)::text, '') FROM devices WHERE workspace_id = $1", ws
    )
    return devices, sites, events, updated


def assert_json_4xx(resp, allowed=(400, 404, 409, 413)) -> None:
    assert resp.status_code in allowed, (resp.status_code, resp.text)
    error = resp.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)


@pytest.fixture
async def targets(world: World) -> AsyncIterator[dict]:
    """A workspace with open enrolment, a site, an operator device and a W device."""
    ws = await world.workspace(open_enrolment=True)
    site = await world.site(ws)
    dev = await world.client.post(
        "/api/v1/devices", json={"name": "d", "device_type": "esp32"}, headers=world.auth(ws)
    )
    w = await world.client.post(
        "/api/devices", json={"name": "w", "device_type": "esp32"}, headers=world.auth(ws, w=True)
    )
    yield {"ws": ws, "site": site, "dev": dev.json()["device_id"], "w": w.json()["id"]}


def routes(t: dict, world: World) -> list[tuple[str, str, str, dict, dict]]:
    """(kind, method, path, headers, a valid body) of every route that takes a body."""
    ws = t["ws"]
    return [
        ("operator", "POST", "/api/v1/devices", world.auth(ws), {"name": "n", "device_type": "esp32"}),
        ("site", "POST", "/api/v1/sites", world.auth(ws), {"site_id": uid("s"), "name": "n"}),
        ("site", "POST", "/api/v1/sites/", world.auth(ws), {"site_id": uid("s"), "name": "n"}),
        (
            "k",
            "POST",
            f"/api/v1/devices/sites/{t['site']}/devices",
            world.auth(ws),
            {"device_id": uid("k"), "name": "n", "device_type": "pos"},
        ),
        ("w", "POST", "/api/devices", world.auth(ws, w=True), {"name": "n", "device_type": "esp32"}),
        ("patch", "PATCH", f"/api/v1/devices/{t['dev']}", world.auth(ws), {"name": "n"}),
        ("w_patch", "PATCH", f"/api/devices/{t['w']}", world.auth(ws, w=True), {"name": "n"}),
    ]


async def test_malformed_bodies(world: World, targets: dict):
    before = await snapshot(world, targets["ws"])
    for _kind, method, path, headers, _valid in routes(targets, world):
        for raw in MALFORMED:
            resp = await world.client.request(
                method, path, content=raw, headers={**headers, "Content-Type": "application/json"}
            )
            assert_json_4xx(resp, (400,))
    assert await snapshot(world, targets["ws"]) == before


async def test_wrong_types_missing_fields_and_bad_values(world: World, targets: dict):
    before = await snapshot(world, targets["ws"])
    for kind, method, path, headers, valid in routes(targets, world):
        bodies = [{**valid, **extra} for extra in EXTRA_BAD[kind]]
        if method == "POST":
            bodies += bad_bodies(valid)
        for body in bodies:
            resp = await world.client.request(method, path, json=body, headers=headers)
            assert_json_4xx(resp)
    assert await snapshot(world, targets["ws"]) == before


async def test_oversized_bodies_are_413(world: World, targets: dict):
    before = await snapshot(world, targets["ws"])
    big = json.dumps({"name": "n", "device_type": "esp32", "metadata": {"x": "a" * 1_100_000}}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    for _kind, method, path, headers, _valid in routes(targets, world):
        declared = await world.client.request(method, path, content=big, headers=headers)
        assert_json_4xx(declared, (413,))
        streamed = await world.client.request(method, path, content=chunks(), headers=headers)
        assert_json_4xx(streamed, (413,))
    assert await snapshot(world, targets["ws"]) == before


async def test_unicode_and_edge_values_that_are_fine(world: World, targets: dict):
    h = world.auth(targets["ws"])
    for name in ("Ünïcødé ✓", "🚀" * 100, "x" * 100, "日本語の名前", "a"):
        resp = await world.client.post(
            "/api/v1/devices",
            json={"name": name, "device_type": "esp32", "metadata": {"big": 10**30, "neg": -(10**30)}},
            headers=h,
        )
        assert resp.status_code == 201, resp.text
        assert resp.json()["name"] == name and resp.json()["metadata"]["big"] == 10**30


async def test_bad_query_and_path_values(world: World, targets: dict):
    before = await snapshot(world, targets["ws"])
    h, hw = world.auth(targets["ws"]), world.auth(targets["ws"], w=True)
    for params in (
        {"limit": "abc"},
        {"limit": 1001},
        {"limit": -1},
        {"limit": 10**30},
        {"offset": -5},
        {"offset": 10**30},
        {"label": "nocolon"},
        {"label": ":v"},
        {"q": "nul\x00"},
        {"q": "x" * 300},
        {"status": "\x00"},
        {"site": "\x00"},
        {"group": "\x00"},
    ):
        assert_json_4xx(await world.client.get("/api/v1/devices", params=params, headers=h), (400,))
    for bad in ("%00", "a%00b", "x" * 200, "%F0%9F%9A%80", "..", "pending", "sites", "a%20b"):
        for method in ("GET", "PATCH", "DELETE"):
            resp = await world.client.request(method, f"/api/v1/devices/{bad}", headers=h, json={"name": "n"})
            assert_json_4xx(resp, (404,))
            resp = await world.client.request(method, f"/api/devices/{bad}", headers=hw, json={"name": "n"})
            assert_json_4xx(resp, (404,))
        assert_json_4xx(await world.client.get(f"/api/devices/{bad}/status", headers=hw), (404,))
        assert_json_4xx(await world.client.get(f"/api/v1/sites/{bad}", headers=h), (404,))
        reg = await world.client.post(
            f"/api/v1/devices/sites/{bad}/devices",
            json={"device_id": uid("k"), "name": "n", "device_type": "pos"},
            headers=h,
        )
        assert_json_4xx(reg, (404, 405))  # httpx folds ".." into /api/v1/devices/devices
    assert await snapshot(world, targets["ws"]) == before


async def test_oversized_headers_and_tokens(world: World, targets: dict):
    huge = {"Authorization": "Bearer " + "a" * 10_000, "X-Workspace-ID": targets["ws"]}
    for path in ("/api/v1/devices", "/api/devices", "/api/v1/sites"):
        assert_json_4xx(await world.client.get(path, headers=huge), (401,))
    odd = {**world.auth(targets["ws"]), "X-Workspace-ID": ("\u00e9" * 10).encode("latin-1")}
    assert_json_4xx(await world.client.get("/api/devices", headers=odd), (404,))
