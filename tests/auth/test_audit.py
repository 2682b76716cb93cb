"""The audit projection: operator actions of events:auth and events:device, per workspace."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from libs.events.replay import rebuild
from libs.events.schemas.device import DeviceStatusChanged
from services.auth.projections import audit_projection

from .conftest import Env


async def wait_audit(env: Env, headers: dict[str, str], n: int, **params: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        resp = await env.client.get("/api/v1/audit", headers=headers, params=params)
        assert resp.status_code == 200
        if len(resp.json()) >= n:
            return list(resp.json())
        assert time.monotonic() < deadline, f"audit has {len(resp.json())} entries, waited for {n}"
        await asyncio.sleep(0.05)


async def test_audit_log_lists_actions_newest_first_and_skips_presence(env: Env):
    env.start_worker()
    boot, owner = await env.owner()
    ws = boot["workspace_id"]
    device_id, _ = await env.register_device(ws)
    await env.publish_device(
        DeviceStatusChanged(
            device_id=device_id, workspace_id=ws, status="online", previous="offline", reason="x", at=_now()
        )
    )
    resp = await env.client.post(
        f"/api/v1/devices/{device_id}/credentials", json={"kind": "secret"}, headers=owner
    )
    env.remember(resp.json()["secret"])
    entries = await wait_audit(env, owner, 5)
    actions = [e["action"] for e in entries]
    assert actions == [
        "auth.credential_issued",
        "device.registered",
        "auth.operator_logged_in",
        "auth.operator_added",
        "auth.workspace_created",
    ]
    assert set(entries[0]) == {"event_id", "at", "actor", "action", "subject", "details"}
    issued = entries[0]
    assert issued["actor"] == boot["operator_id"] and issued["subject"]
    assert "secret_sha256" not in issued["details"] and issued["details"]["kind"] == "secret"
    assert entries[2]["actor"] == boot["operator_id"] and entries[2]["subject"] == boot["operator_id"]
    assert "secret_sha256" not in str(entries[1]["details"])
    only = await env.client.get(
        "/api/v1/audit", headers=owner, params={"action": "device.registered", "limit": 1}
    )
    assert [e["action"] for e in only.json()] == ["device.registered"]
    page = await env.client.get("/api/v1/audit", headers=owner, params={"limit": 2, "offset": 1})
    assert [e["action"] for e in page.json()] == actions[1:3]
    # the same projection rebuilds from the log to the same lines
    assert env.host.pool is not None and env.host.redis is not None
    await env.stop_worker()
    await rebuild(env.host.pool, env.host.redis, audit_projection(env.host))
    assert (await env.client.get("/api/v1/audit", headers=owner)).json() == entries


async def test_audit_is_scoped_to_the_workspace(env: Env):
    env.start_worker()
    boot, owner = await env.owner()
    ws2, stranger = await env.other_workspace(boot["email"], owner)
    await env.register_device(boot["workspace_id"])
    mine = await wait_audit(env, owner, 4)
    theirs = await wait_audit(env, stranger, 5)
    assert len(mine) == 4 and len(theirs) == 5
    assert theirs and all(e["action"].startswith("auth.") for e in theirs)
    assert {e["event_id"] for e in mine}.isdisjoint({e["event_id"] for e in theirs})
    assert "device.registered" not in [e["action"] for e in theirs]
    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"offset": -1},
        {"limit": "x"},
        {"limit": "9" * 40},
        {"action": "a\x00b"},
    ):
        resp = await env.client.get("/api/v1/audit", headers=owner, params=params)
        assert resp.status_code == 400, params
    assert ws2


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)
