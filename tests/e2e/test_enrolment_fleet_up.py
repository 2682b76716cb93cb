"""Enrolment, bulk creation and backfilled points through a real ``fleet up`` on its one port (black
box): the launcher routes the new paths to the device service, and an enrolled agent's backfill is
told apart on the chart."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from .conftest import REDIS_URL, Start, clean_env, free_port


def wait_json(c: httpx.Client, path: str, headers: dict[str, str], ready: Callable[[dict], bool]) -> dict:
    deadline = time.monotonic() + 15
    while True:
        body = c.get(path, headers=headers).json()
        if ready(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


@pytest.mark.slow
def test_enrol_bulk_and_backfill_on_the_one_port(fleet: Start, tmp_path, own_database_url, prefix):
    port = free_port()
    env = clean_env(REDIS_URL=REDIS_URL, DATABASE_URL=own_database_url, STREAM_PREFIX=prefix)
    proc = fleet("up", "--port", str(port), cwd=tmp_path, env=env)
    proc.wait_for(r"fleet is up")
    demo = json.loads((tmp_path / ".fleet" / "demo.json").read_text())
    with httpx.Client(base_url=demo["url"].rstrip("/"), timeout=30) as c:
        login = c.post(
            "/api/v1/auth/login", json={"email": demo["owner_email"], "password": demo["owner_password"]}
        )
        op = {"Authorization": f"Bearer {login.json()['access_token']}"}
        made = c.post("/api/v1/enrolment-tokens", json={"max_uses": 5}, headers=op)
        assert made.status_code == 201, made.text
        assert c.get("/api/v1/enrolment-tokens", headers=op).status_code == 200
        body = {"enrolment_token": made.json()["token"], "agent_id": "e2e-agent".ljust(32, "0")}
        enrolled = c.post("/api/v1/agent/enrol", json=body)
        assert enrolled.status_code == 201, enrolled.text
        device_id, secret = enrolled.json()["device_id"], enrolled.json()["device_secret"]
        session = c.post("/api/v1/device/auth", json={"deviceId": device_id, "deviceSecret": secret})
        assert session.status_code == 200, session.text
        s = {"X-Device-Session": session.json()["token"]}

        now = datetime.now(UTC).replace(microsecond=0)
        old = now - timedelta(minutes=10)
        live = {"seq": 2, "sent_at": now.isoformat(), "metrics": {"cpu": 5}}
        assert c.post("/api/v1/agent/heartbeat", json=live, headers=s).status_code == 200
        batch = {"heartbeats": [{"seq": 1, "sent_at": old.isoformat(), "metrics": {"cpu": 3}}]}
        assert c.post("/api/v1/agent/heartbeats", json=batch, headers=s).status_code == 200
        url = f"/api/v1/devices/{device_id}/metrics?from={(now - timedelta(hours=1)).isoformat()}"
        chart = wait_json(
            c, url.replace("+", "%2B"), op, lambda b: len(b.get("series", {}).get("cpu", [])) == 2
        )
        assert [v for _t, v in chart["series"]["cpu"]] == [3, 5]
        assert chart["backfilled"] == {"cpu": [old.isoformat()]}

        bulk = c.post(
            "/api/v1/devices/bulk",
            json={"count": 50, "name_prefix": "sim", "device_type": "virtual"},
            headers=op,
        )
        assert bulk.status_code == 201, bulk.text
        item = bulk.json()["items"][0]
        got = c.post(
            "/api/v1/device/auth",
            json={"deviceId": item["device_id"], "deviceSecret": item["credentials"]["secret"]},
        )
        assert got.status_code == 200, got.text
        revoke = c.delete(f"/api/v1/enrolment-tokens/{made.json()['token_id']}", headers=op)
        assert revoke.status_code == 204
