"""No secret, token, password or password hash ever reaches a log record."""

from __future__ import annotations

import logging

import pytest

from .conftest import PASSWORD, Env, bearer


async def test_flows_log_no_secrets(env: Env, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    env.start_worker()
    boot, owner = await env.owner()
    env.remember(PASSWORD)
    await env.client.post("/api/v1/auth/login", json={"email": boot["email"], "password": "wrong-password-1"})
    env.remember("wrong-password-1")
    device_id, secret = await env.register_device(boot["workspace_id"])
    session = (await env.device_auth(device_id, secret)).json()["token"]
    env.remember(session)
    minted = await env.client.post(
        f"/api/v1/devices/{device_id}/credentials", json={"kind": "secret"}, headers=owner
    )
    env.remember(minted.json()["secret"])
    await env.device_auth(device_id, secret)  # the rotated-out secret: 401
    added = await env.client.post(
        "/api/v1/operators", json={"email": "t@x.io", "role": "viewer"}, headers=owner
    )
    env.remember(added.json()["temporary_password"])
    new = "another long password"
    env.remember(new)
    await env.client.post(
        "/api/v1/auth/password", json={"current_password": PASSWORD, "new_password": new}, headers=owner
    )
    token = await env.login(boot["email"], new)
    await env.client.post("/api/v1/auth/logout", headers=bearer(token))
    await env.client.get("/api/v1/auth/me", headers=bearer(token))  # refused: logged out
    hashes = [r[0] for r in await env.pool.fetch("SELECT password_hash FROM operators")]
    await env.stop_worker()
    forbidden = {s for s in (*env.secrets_seen, *hashes) if len(s) >= 8}
    assert len(forbidden) >= 8
    assert any("/api/v1/auth/login" in r.getMessage() for r in caplog.records), "no request was logged"
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "") + repr(record.__dict__.get("args"))
        for secret_value in forbidden:
            assert secret_value not in text, f"{record.name} logged a secret"
