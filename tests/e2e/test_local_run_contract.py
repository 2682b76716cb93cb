"""PROTOCOLS.md "Local run contract" through a real ``fleet up``: the demo is seeded once, and the
dialects' registration and auth routes answer on the one port."""

from __future__ import annotations

import json
import stat
import time

import httpx
import pytest

from .conftest import REDIS_URL, Start, clean_env, free_port

DEMO_KEYS = {"url", "owner_email", "owner_password", "workspace_id", "site_id", "device_id", "device_secret"}


@pytest.mark.slow
def test_demo_is_seeded_once_and_every_dialect_answers(fleet: Start, tmp_path, own_database_url, prefix):
    port = free_port()
    env = clean_env(REDIS_URL=REDIS_URL, DATABASE_URL=own_database_url, STREAM_PREFIX=prefix)
    proc = fleet("up", "--port", str(port), cwd=tmp_path, env=env)
    proc.wait_for(r"fleet is up")
    seeded = proc.wait_for(r"owner login: |demo: not seeded")
    assert seeded.group(0) == "owner login: ", proc.report()
    path = tmp_path / ".fleet" / "demo.json"
    demo = json.loads(path.read_text())
    assert set(demo) == DEMO_KEYS
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert demo["site_id"] == "site-001"
    assert demo["url"] == f"http://127.0.0.1:{port}/"
    proc.wait_for(rf"owner login: {demo['owner_email']} / ")
    proc.wait_for(rf"demo device: {demo['device_id']} secret ")
    base = demo["url"].rstrip("/")
    with httpx.Client(base_url=base, timeout=10) as c:
        # dialect S: the demo device authenticates with its secret
        s = c.post(
            "/api/v1/device/auth", json={"deviceId": demo["device_id"], "deviceSecret": demo["device_secret"]}
        )
        assert s.status_code == 200, s.text
        body = s.json()
        assert body["deviceId"] == demo["device_id"] and body["expiresIn"] > 0 and body["token"]
        bad = c.post("/api/v1/device/auth", json={"deviceId": demo["device_id"], "deviceSecret": "0" * 64})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "INVALID_CREDENTIALS"
        # dialect K: open enrolment on site-001
        device_id = f"pos-{time.monotonic_ns()}"
        k = c.post(
            "/api/v1/devices/sites/site-001/devices",
            json={"device_id": device_id, "name": "POS", "device_type": "pos_terminal"},
        )
        assert k.status_code == 201, k.text
        assert set(k.json()) == {"message", "device_id", "site_id", "api_key"}
        assert (
            c.post(
                "/api/v1/devices/sites/site-001/devices",
                json={"device_id": device_id, "name": "POS", "device_type": "pos_terminal"},
            ).status_code
            == 409
        )
        # operator essentials: login, then rotate the demo device's secret
        login = c.post(
            "/api/v1/auth/login", json={"email": demo["owner_email"], "password": demo["owner_password"]}
        )
        assert login.status_code == 200
        assert set(login.json()) == {"access_token", "token_type", "expires_in", "workspace_id", "role"}
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        rotated = c.post(
            f"/api/v1/devices/{demo['device_id']}/credentials", json={"kind": "secret"}, headers=auth
        )
        assert rotated.status_code == 201, rotated.text
        assert set(rotated.json()) == {"device_id", "kind", "secret"}
        started = time.monotonic()
        old = c.post(
            "/api/v1/device/auth", json={"deviceId": demo["device_id"], "deviceSecret": demo["device_secret"]}
        )
        assert old.status_code == 401 and time.monotonic() - started < 1
        new = c.post(
            "/api/v1/device/auth",
            json={"deviceId": demo["device_id"], "deviceSecret": rotated.json()["secret"]},
        )
        assert new.status_code == 200
        # dialect S heartbeat with the new session: acknowledged, and presence turns the device online
        session = {"X-Device-Session": new.json()["token"]}
        hb = c.post(
            "/api/v1/device/heartbeat",
            json={"status": "healthy", "metrics": {"cpu": 12.5, "memory": 40, "uptime": 3600}},
            headers=session,
        )
        assert hb.status_code == 200, hb.text
        assert hb.json()["success"] is True and hb.json()["acknowledged"] is True
        deadline = time.monotonic() + 10
        while True:
            dev = c.get(f"/api/v1/devices/{demo['device_id']}", headers=auth).json()
            if dev["status"] == "online" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert (dev["status"], dev["status_reason"]) == ("online", "first_heartbeat")
        assert dev["metrics"]["cpu"] == 12.5
        # dialect W: X-Workspace-ID is required
        w = c.post("/api/devices", json={"name": "esp", "device_type": "esp32"}, headers=auth)
        assert w.status_code == 400
        w = c.post(
            "/api/devices",
            json={"name": "esp", "device_type": "esp32"},
            headers={**auth, "X-Workspace-ID": demo["workspace_id"]},
        )
        assert w.status_code == 201 and len(w.json()["token"]) == 64
    assert proc.stop() == 0
    # secrets reach the terminal's demo summary (by contract) but never a log line
    logs = proc.stderr_path.read_text(errors="replace")
    shown = [
        demo["owner_password"],
        demo["device_secret"],
        body["token"],
        new.json()["token"],
        k.json()["api_key"],
        login.json()["access_token"],
        rotated.json()["secret"],
        w.json()["token"],
    ]
    assert [x for x in shown if x in logs] == []

    # a second run on the same data keeps the same demo and seeds nothing new
    port2 = free_port()
    again = fleet("up", "--port", str(port2), cwd=tmp_path, env=env)
    again.wait_for(r"fleet is up")
    assert json.loads(path.read_text()) == {**demo, "url": f"http://127.0.0.1:{port2}/"}
    assert again.stop() == 0
