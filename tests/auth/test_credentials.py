"""Device credentials (mint, rotate, revoke) and dialect S device sessions."""

from __future__ import annotations

import asyncio
import time

import pytest

from libs.events.identity import TokenError

from .conftest import Env


async def test_device_auth_with_the_registered_secret(env: Env):
    boot, _ = await env.owner()
    device_id, secret = await env.register_device(boot["workspace_id"])
    before = await env.stream("events:device")
    resp = await env.device_auth(device_id, secret)
    assert resp.status_code == 200
    body = resp.json()
    assert body["deviceId"] == device_id and body["expiresIn"] == 86400
    assert body["data"] == {"token": body["token"], "expiresIn": 86400, "deviceId": device_id}
    env.remember(body["token"])
    assert env.host.identity is not None
    claims = env.host.identity.claims(body["token"])
    assert (claims.typ, claims.sub, claims.ws) == ("device", device_id, boot["workspace_id"])
    # authenticating is not presence: nothing published anywhere
    assert await env.stream("events:device") == before
    assert "device" not in " ".join(await env.stream())


async def test_device_auth_refusals(env: Env):
    boot, _ = await env.owner()
    device_id, secret = await env.register_device(boot["workspace_id"])
    wrong_secret = await env.device_auth(device_id, "0" * 64)
    wrong_id = await env.device_auth("nobody", secret)
    assert wrong_secret.status_code == wrong_id.status_code == 401
    assert wrong_secret.json() == wrong_id.json()
    assert wrong_secret.json()["error"]["code"] == "INVALID_CREDENTIALS"
    for bad in ({}, {"deviceId": device_id}, {"deviceId": 5, "deviceSecret": secret}, [1], "x"):
        resp = await env.client.post("/api/v1/device/auth", json=bad)
        assert resp.status_code == 400, bad
    not_json = await env.client.post("/api/v1/device/auth", content=b"{nope")
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "BAD_REQUEST"
    await env.disable_device(device_id, boot["workspace_id"])
    disabled = await env.device_auth(device_id, secret)
    assert disabled.status_code == 403 and disabled.json()["error"]["code"] == "DEVICE_DISABLED"
    # a wrong secret for a disabled device does not learn that it is disabled
    assert (await env.device_auth(device_id, "1" * 64)).status_code == 401
    await env.disable_device(device_id, boot["workspace_id"], disabled=False)
    assert (await env.device_auth(device_id, secret)).status_code == 200


async def test_device_auth_rate_limit(env: Env):
    boot, _ = await env.owner()
    device_id, secret = await env.register_device(boot["workspace_id"])
    for _ in range(20):
        assert (await env.device_auth(device_id, "2" * 64)).status_code == 401
    resp = await env.device_auth(device_id, secret)
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1


async def test_mint_rotate_and_revoke(env: Env):
    boot, owner = await env.owner()
    ws = boot["workspace_id"]
    device_id, first = await env.register_device(ws)
    session = (await env.device_auth(device_id, first)).json()["token"]
    resp = await env.client.post(
        f"/api/v1/devices/{device_id}/credentials", json={"kind": "secret"}, headers=owner
    )
    assert resp.status_code == 201
    body = resp.json()
    assert set(body) == {"device_id", "kind", "secret"} and body["kind"] == "secret"
    assert len(body["secret"]) == 64
    env.remember(body["secret"])
    assert (await env.device_auth(device_id, first)).status_code == 401
    identity = env.host.identity
    assert identity is not None
    deadline = time.monotonic() + 1.0
    while True:  # the old session is refused within a second
        try:
            identity.claims(session)
        except TokenError:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    second = (await env.device_auth(device_id, body["secret"])).json()["token"]
    identity.claims(second)
    issued = await env.r.xrange(env.prefix + "events:auth")
    raw = issued[-1][1][b"envelope"].decode()
    assert body["secret"] not in raw and "credential_issued" in raw and "replaces" in raw
    # other kinds live side by side
    key = await env.client.post(
        f"/api/v1/devices/{device_id}/credentials", json={"kind": "api_key"}, headers=owner
    )
    assert key.status_code == 201
    env.remember(key.json()["secret"])
    assert await identity.device_secret(key.json()["secret"], "api_key", device_id) is not None
    # revoke the secrets: the session opened with it dies too
    gone = await env.client.delete(f"/api/v1/devices/{device_id}/credentials?kind=secret", headers=owner)
    assert gone.status_code == 204
    with pytest.raises(TokenError):
        identity.claims(second)
    assert (await env.device_auth(device_id, body["secret"])).status_code == 401
    assert await identity.device_secret(key.json()["secret"], "api_key", device_id) is not None
    assert (await env.stream())[-1] == "auth.credential_revoked.v1"
    # revoking again is harmless; a bad kind is 400
    again = await env.client.delete(f"/api/v1/devices/{device_id}/credentials?kind=secret", headers=owner)
    assert again.status_code == 204
    for url in (
        f"/api/v1/devices/{device_id}/credentials",
        f"/api/v1/devices/{device_id}/credentials?kind=pin",
    ):
        assert (await env.client.delete(url, headers=owner)).status_code == 400


async def test_credentials_of_unknown_or_foreign_devices_are_404(env: Env):
    boot, owner = await env.owner()
    ws2, stranger = await env.other_workspace(boot["email"], owner)
    device_id, _ = await env.register_device(boot["workspace_id"])
    foreign, _ = await env.register_device(ws2)
    for who, dev in ((owner, "no-such-device"), (owner, foreign), (stranger, device_id)):
        post = await env.client.post(
            f"/api/v1/devices/{dev}/credentials", json={"kind": "secret"}, headers=who
        )
        assert post.status_code == 404, post.text
        delete = await env.client.delete(f"/api/v1/devices/{dev}/credentials?kind=secret", headers=who)
        assert delete.status_code == 404
    mine = await env.client.post(
        f"/api/v1/devices/{foreign}/credentials", json={"kind": "token"}, headers=stranger
    )
    assert mine.status_code == 201
    env.remember(mine.json()["secret"])
