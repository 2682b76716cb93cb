"""Workspaces and operators: contracts, roles, the last owner, and revocation on role changes."""

from __future__ import annotations

import uuid

from .conftest import PASSWORD, Env, bearer

WS_KEYS = {"workspace_id", "name", "open_enrolment", "role", "created_at"}
MEMBER_KEYS = {"operator_id", "email", "role", "workspace_id", "joined_at"}


async def test_workspace_routes(env: Env):
    boot, headers = await env.owner()
    listed = await env.client.get("/api/v1/workspaces", headers=headers)
    assert listed.status_code == 200
    [only] = listed.json()
    assert set(only) == WS_KEYS and only["workspace_id"] == boot["workspace_id"]
    created = await env.client.post(
        "/api/v1/workspaces", json={"name": "Lab", "open_enrolment": True}, headers=headers
    )
    assert created.status_code == 201
    body = created.json()
    assert set(body) == WS_KEYS | {"note"} and body["role"] == "owner" and body["open_enrolment"] is True
    ws2 = body["workspace_id"]
    # the current token does not carry the new workspace; the listing and GET do
    assert (
        await env.client.get("/api/v1/auth/me", headers=bearer(headers_token(headers), ws2))
    ).status_code == 404
    assert len((await env.client.get("/api/v1/workspaces", headers=headers)).json()) == 2
    got = await env.client.get(f"/api/v1/workspaces/{ws2}", headers=headers)
    assert got.status_code == 200 and got.json()["name"] == "Lab"
    patched = await env.client.patch(
        f"/api/v1/workspaces/{ws2}", json={"name": "Lab 2", "open_enrolment": False}, headers=headers
    )
    assert patched.status_code == 200
    assert patched.json()["name"] == "Lab 2" and patched.json()["open_enrolment"] is False
    assert env.host.identity is not None
    assert env.host.identity.feed.index.open_enrolment[ws2] is False
    assert (await env.stream())[-1] == "auth.workspace_updated.v1"
    # nothing changes: no event
    n = len(await env.stream())
    same = await env.client.patch(f"/api/v1/workspaces/{ws2}", json={"name": "Lab 2"}, headers=headers)
    assert same.status_code == 200 and len(await env.stream()) == n
    for bad in ("not-a-uuid", str(uuid.uuid4())):
        assert (await env.client.get(f"/api/v1/workspaces/{bad}", headers=headers)).status_code == 404
        assert (
            await env.client.patch(f"/api/v1/workspaces/{bad}", json={"name": "x"}, headers=headers)
        ).status_code == 404


def headers_token(headers: dict[str, str]) -> str:
    return headers["Authorization"].split(" ", 1)[1]


async def test_roles_viewer_reads_operator_cannot_manage(env: Env):
    boot, owner = await env.owner()
    ws = boot["workspace_id"]
    _, viewer = await env.member(owner, "viewer")
    _, operator = await env.member(owner, "operator")
    assert (await env.client.get("/api/v1/operators", headers=viewer)).status_code == 200
    assert (await env.client.get(f"/api/v1/workspaces/{ws}", headers=viewer)).status_code == 200
    for who in (viewer, operator):
        calls = [
            env.client.post("/api/v1/operators", json={"email": "n@x.io", "role": "viewer"}, headers=who),
            env.client.patch(
                f"/api/v1/operators/{boot['operator_id']}", json={"role": "viewer"}, headers=who
            ),
            env.client.delete(f"/api/v1/operators/{boot['operator_id']}", headers=who),
            env.client.post("/api/v1/workspaces", json={"name": "Mine"}, headers=who),
            env.client.patch(f"/api/v1/workspaces/{ws}", json={"name": "Mine"}, headers=who),
        ]
        for call in calls:
            resp = await call
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"]["code"] == "FORBIDDEN"
    creds = await env.client.post("/api/v1/devices/d1/credentials", json={"kind": "secret"}, headers=viewer)
    assert creds.status_code == 403


async def test_operator_routes(env: Env):
    boot, owner = await env.owner()
    email = f"New-{uuid.uuid4().hex[:6]}@Example.com"
    resp = await env.client.post(
        "/api/v1/operators", json={"email": email, "role": "operator"}, headers=owner
    )
    assert resp.status_code == 201
    body = resp.json()
    assert set(body) == {"operator_id", "email", "role", "workspace_id", "created", "temporary_password"}
    assert body["email"] == email.lower() and body["created"] is True
    env.remember(body["temporary_password"])
    member = bearer(await env.login(email, body["temporary_password"]))
    assert (await env.client.get("/api/v1/auth/me", headers=member)).json()["role"] == "operator"
    listed = (await env.client.get("/api/v1/operators", headers=owner)).json()
    assert [m["operator_id"] for m in listed] == [boot["operator_id"], body["operator_id"]]
    assert all(set(m) == MEMBER_KEYS for m in listed)
    dup = await env.client.post("/api/v1/operators", json={"email": email, "role": "viewer"}, headers=owner)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "ALREADY_MEMBER"
    # role change: new role, and the member's sessions restart
    changed = await env.client.patch(
        f"/api/v1/operators/{body['operator_id']}", json={"role": "viewer"}, headers=owner
    )
    assert changed.status_code == 200 and changed.json()["role"] == "viewer"
    assert set(changed.json()) == MEMBER_KEYS
    assert (await env.client.get("/api/v1/auth/me", headers=member)).status_code == 401
    member = bearer(await env.login(email, body["temporary_password"]))
    removed = await env.client.delete(f"/api/v1/operators/{body['operator_id']}", headers=owner)
    assert removed.status_code == 204
    assert (await env.client.get("/api/v1/auth/me", headers=member)).status_code == 401
    assert len((await env.client.get("/api/v1/operators", headers=owner)).json()) == 1
    types = await env.stream()
    assert "auth.operator_role_changed.v1" in types and types[-1] == "auth.operator_removed.v1"
    for bad in ("nope", str(uuid.uuid4())):
        assert (await env.client.delete(f"/api/v1/operators/{bad}", headers=owner)).status_code == 404
        patch = await env.client.patch(f"/api/v1/operators/{bad}", json={"role": "viewer"}, headers=owner)
        assert patch.status_code == 404


async def test_adding_an_existing_operator_keeps_their_password(env: Env):
    boot, owner = await env.owner()
    _ws2, stranger = await env.other_workspace(boot["email"], owner)
    me = (await env.client.get("/api/v1/auth/me", headers=stranger)).json()
    resp = await env.client.post(
        "/api/v1/operators",
        json={"email": me["email"], "role": "viewer", "password": "ignored-pass"},
        headers=owner,
    )
    assert resp.status_code == 201
    assert resp.json()["created"] is False and "temporary_password" not in resp.json()
    again = await env.client.post("/api/v1/auth/login", json={"email": me["email"], "password": PASSWORD})
    assert again.status_code == 200


async def test_the_last_owner_stays(env: Env):
    boot, owner = await env.owner()
    me = boot["operator_id"]
    demote = await env.client.patch(f"/api/v1/operators/{me}", json={"role": "viewer"}, headers=owner)
    assert demote.status_code == 409 and demote.json()["error"]["code"] == "LAST_OWNER"
    remove = await env.client.delete(f"/api/v1/operators/{me}", headers=owner)
    assert remove.status_code == 409
    second, _ = await env.member(owner, "owner")
    assert (await env.client.delete(f"/api/v1/operators/{me}", headers=owner)).status_code == 204
    assert second["role"] == "owner"
