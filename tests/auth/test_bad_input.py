"""Isolation between workspaces, and bad input on every route: 4xx JSON, never 500, nothing written."""

from __future__ import annotations

import json
import uuid
from typing import Any

from .conftest import Env, bearer

FIELDS = (
    "email",
    "password",
    "workspace_name",
    "workspace_id",
    "open_enrolment",
    "name",
    "role",
    "kind",
    "current_password",
    "new_password",
    "deviceId",
    "deviceSecret",
)


def everywhere(value: Any) -> bytes:
    return json.dumps(dict.fromkeys(FIELDS, value)).encode()


BAD_BODIES: list[bytes] = [
    b"",
    b"   ",
    b"{",
    b"not json",
    b"[]",
    b"null",
    b"123",
    b'"a string"',
    b"{}",
    everywhere(123),
    everywhere(None),
    everywhere([]),
    everywhere({"nested": True}),
    everywhere(10**40),
    b'{"email": 1e999, "password": 1e999, "name": 1e999, "kind": 1e999, "role": 1e999, "deviceId": 1e999}',
    everywhere("a\x00b"),
    b'{"email": "\\ud800", "name": "\\ud800", "kind": "\\ud800", "role": "\\ud800", "deviceId": "\\ud800"}',
    b'{"email": "\xff\xfe", "name": "\xff", "kind": "\xff", "role": "\xff", "deviceId": "\xff"}',
    b'{"deep": ' + b"[" * 5000 + b"]" * 5000 + b', "email": "e@x.org", "password": "p"}',  # RecursionError
    everywhere("x" * 85_000),  # about 1 MB
    b'{"name": "' + b"y" * 1_000_000 + b'", "email": "z", "kind": "z", "role": "z", "deviceId": ""}',
]


async def snapshot(env: Env) -> dict[str, int]:
    counts = {}
    for table in ("workspaces", "operators", "memberships", "credentials", "outbox"):
        counts[table] = await env.pool.fetchval(f"SELECT count(*) FROM {table}")
    counts["stream"] = await env.r.xlen(env.prefix + "events:auth")
    return counts


async def test_every_route_refuses_bad_bodies_cleanly(env: Env):
    boot, owner = await env.owner()
    device_id, _ = await env.register_device(boot["workspace_id"])
    routes = [
        ("POST", "/api/v1/auth/bootstrap"),
        ("POST", "/api/v1/auth/login"),
        ("POST", "/api/v1/auth/password"),
        ("POST", "/api/v1/workspaces"),
        ("PATCH", f"/api/v1/workspaces/{boot['workspace_id']}"),
        ("POST", "/api/v1/operators"),
        ("PATCH", f"/api/v1/operators/{boot['operator_id']}"),
        ("POST", f"/api/v1/devices/{device_id}/credentials"),
        ("POST", "/api/v1/device/auth"),
    ]
    before = await snapshot(env)
    for method, path in routes:
        for body in [*BAD_BODIES, b"x" * 2_000_000]:
            resp = await env.client.request(
                method, path, content=body, headers={**owner, "Content-Type": "application/json"}
            )
            if method == "PATCH" and body in (b"{}", everywhere(None)) and "workspaces" in path:
                assert resp.status_code == 200  # an empty patch is a valid no-op
                continue
            assert 400 <= resp.status_code < 500, (method, path, body[:60], resp.status_code, resp.text[:200])
            error = resp.json()["error"]
            assert set(error) == {"code", "message"}, (path, body[:60])
    assert await snapshot(env) == before


async def test_unicode_is_fine_where_text_is_free(env: Env):
    _boot, owner = await env.owner()
    name = "Ünïcødé 工場 🚀"
    resp = await env.client.post("/api/v1/workspaces", json={"name": name}, headers=owner)
    assert resp.status_code == 201 and resp.json()["name"] == name
    email = f"jörg-{uuid.uuid4().hex[:4]}@bücher.de"
    added = await env.client.post("/api/v1/operators", json={"email": email, "role": "viewer"}, headers=owner)
    assert added.status_code == 201
    env.remember(added.json()["temporary_password"])
    unknown = await env.client.post("/api/v1/auth/login", json={"email": "☃@☃.☃", "password": "☃" * 20})
    assert unknown.status_code == 401


async def test_bad_tokens_and_headers(env: Env):
    boot, owner = await env.owner()
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Basic abc"}, 401),
        (bearer("x" * 10_000), 401),
        (bearer("fs1.a.b.c"), 401),
        ({**owner, "X-Workspace-ID": "not-a-workspace"}, 404),
    ):
        resp = await env.client.get("/api/v1/operators", headers=headers)
        assert resp.status_code == status, headers
        assert "error" in resp.json()
    assert boot


async def test_another_workspace_sees_nothing_of_the_first(env: Env):
    boot, owner = await env.owner()
    ws1 = boot["workspace_id"]
    viewer, _ = await env.member(owner, "viewer")
    _ws2, stranger = await env.other_workspace(boot["email"], owner)
    device_id, _ = await env.register_device(ws1)
    before = await snapshot(env)
    calls = [
        ("GET", f"/api/v1/workspaces/{ws1}", None),
        ("PATCH", f"/api/v1/workspaces/{ws1}", {"name": "mine now"}),
        ("PATCH", f"/api/v1/operators/{viewer['operator_id']}", {"role": "owner"}),
        ("DELETE", f"/api/v1/operators/{viewer['operator_id']}", None),
        ("POST", f"/api/v1/devices/{device_id}/credentials", {"kind": "secret"}),
        ("DELETE", f"/api/v1/devices/{device_id}/credentials?kind=secret", None),
        ("GET", "/api/v1/operators", "ws-header"),
    ]
    for method, path, body in calls:
        headers = {**stranger, "X-Workspace-ID": ws1} if body == "ws-header" else stranger
        kwargs = {"json": body} if isinstance(body, dict) else {}
        resp = await env.client.request(method, path, headers=headers, **kwargs)
        assert resp.status_code == 404, (method, path, resp.text)
    assert await snapshot(env) == before
    listed = json.dumps(
        [
            (await env.client.get(p, headers=stranger)).json()
            for p in ("/api/v1/workspaces", "/api/v1/operators")
        ]
    )
    # (the first owner made the second workspace, so only they are in both)
    for secret_id in (ws1, viewer["operator_id"]):
        assert secret_id not in listed
