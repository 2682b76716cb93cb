"""The command routes of every dialect through a real ``fleet up`` on its one port (black box):
K enrols, polls and reports; an operator queues and reads; W queues and lists; S reports a result."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .conftest import REDIS_URL, Start, clean_env, free_port


@pytest.mark.slow
def test_commands_of_every_dialect_on_the_one_port(fleet: Start, tmp_path, own_database_url, prefix):
    port = free_port()
    env = clean_env(REDIS_URL=REDIS_URL, DATABASE_URL=own_database_url, STREAM_PREFIX=prefix)
    proc = fleet("up", "--port", str(port), cwd=tmp_path, env=env)
    proc.wait_for(r"fleet is up")
    demo = json.loads((tmp_path / ".fleet" / "demo.json").read_text())
    with httpx.Client(base_url=demo["url"].rstrip("/"), timeout=10) as c:
        login = c.post(
            "/api/v1/auth/login", json={"email": demo["owner_email"], "password": demo["owner_password"]}
        )
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        # dialect K: enrol, the operator queues, the device polls (oldest first) and reports
        device_id = f"pos-{time.monotonic_ns()}"
        enrolled = c.post(
            "/api/v1/devices/sites/site-001/devices",
            json={"device_id": device_id, "name": "POS", "device_type": "pos_terminal"},
        )
        assert enrolled.status_code == 201, enrolled.text
        k = {"X-Device-ID": device_id, "X-API-Key": enrolled.json()["api_key"]}
        made = [
            c.post(
                f"/api/v1/devices/{device_id}/commands", json={"command_type": t, "payload": {}}, headers=auth
            )
            for t in ("ping", "restart")
        ]
        assert [m.status_code for m in made] == [201, 201], made[0].text
        assert {"command_id", "command_type", "payload", "status", "created_at"} <= made[0].json().keys()
        ids = [m.json()["command_id"] for m in made]
        pending = c.get("/api/v1/devices/pending", headers=k)
        assert pending.status_code == 200 and [p["command_id"] for p in pending.json()] == ids
        assert {p["status"] for p in pending.json()} == {"pending"}
        done = c.put(
            f"/api/v1/devices/{ids[0]}/status", json={"status": "completed", "result": {"pong": 1}}, headers=k
        )
        assert done.status_code == 200 and done.json()["status"] == "completed"
        assert [p["command_id"] for p in c.get("/api/v1/devices/pending", headers=k).json()] == ids[1:]
        got = c.get(f"/api/v1/commands/{ids[0]}", headers=auth).json()
        assert (got["status"], got["result"]) == ("completed", {"pong": 1})
        history = c.get(f"/api/v1/devices/{device_id}/commands", headers=auth).json()
        assert [h["command_id"] for h in history] == ids[::-1]
        cancelled = c.post(f"/api/v1/commands/{ids[1]}/cancel", headers=auth)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        # dialect W: queue through /command and /control, list newest first
        w = {**auth, "X-Workspace-ID": demo["workspace_id"]}
        esp = c.post("/api/devices", json={"name": "esp", "device_type": "esp32"}, headers=w).json()["id"]
        a = c.post(
            f"/api/devices/{esp}/command", json={"command_type": "led", "parameters": {"on": 1}}, headers=w
        )
        b = c.post(f"/api/devices/{esp}/control", json={"command_type": "reboot"}, headers=w)
        assert (a.status_code, b.status_code) == (201, 201) and a.json()["status"] == "pending"
        listed = c.get(f"/api/devices/{esp}/commands?limit=50", headers=w).json()
        assert [x["id"] for x in listed] == [b.json()["id"], a.json()["id"]]
        one = c.get(f"/api/devices/{esp}/commands/{a.json()['id']}", headers=w)
        assert one.status_code == 200 and one.json()["parameters"] == {"on": 1}
        # dialect S: the demo device reports a result for a command queued for it
        token = c.post(
            "/api/v1/device/auth", json={"deviceId": demo["device_id"], "deviceSecret": demo["device_secret"]}
        ).json()["token"]
        cid = c.post(
            f"/api/v1/devices/{demo['device_id']}/commands", json={"command_type": "ping"}, headers=auth
        ).json()["command_id"]
        res = c.post(
            f"/api/v1/device/commands/{cid}/result",
            json={"status": "timeout", "executedAt": "2026-01-01T00:00:00Z", "error": "slow"},
            headers={"X-Device-Session": token},
        )
        assert res.status_code == 200 and res.json()["status"] == "failed", res.text
        got = c.get(f"/api/v1/commands/{cid}", headers=auth).json()
        assert (got["status"], got["reported_status"], got["error"]) == ("failed", "timeout", "slow")
    assert proc.stop() == 0
