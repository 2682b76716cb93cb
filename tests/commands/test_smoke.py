"""Smoke: queue, read, poll, report."""

from __future__ import annotations

from .conftest import World


async def test_queue_poll_report(world: World) -> None:
    dev = await world.device()
    made = await world.queue(dev, payload={"a": 1})
    assert made["status"] == "pending"
    resp = await world.client.get("/api/v1/devices/pending", headers=dev.k)
    assert resp.status_code == 200, resp.text
    assert [c["command_id"] for c in resp.json()] == [made["command_id"]]
    resp = await world.client.put(
        f"/api/v1/devices/{made['command_id']}/status",
        json={"status": "completed", "result": {"pong": 1}},
        headers=dev.k,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "completed"
    resp = await world.client.get(
        f"/api/v1/commands/{made['command_id']}", headers=world.auth(dev.workspace_id)
    )
    assert resp.json()["state"] == "succeeded"
