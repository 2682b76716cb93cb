"""The routes of every dialect as clients see them: shapes, status codes, FIFO and vocabulary."""

from __future__ import annotations

from datetime import datetime, timedelta

from libs.events.schemas.commands import CommandCancelled, CommandFinished, CommandQueued, CommandSent

from .conftest import World

K_KEYS = {"command_id", "command_type", "payload", "status", "created_at"}
W_KEYS = {
    "id",
    "device_id",
    "command_type",
    "parameters",
    "status",
    "result",
    "error_message",
    "created_at",
    "sent_at",
    "completed_at",
}


async def test_operator_queue_is_k_shaped_and_emits_queued(world: World) -> None:
    dev = await world.device()
    made = await world.queue(dev, "restart", payload={"delay": 5}, ttl_s=120)
    assert made.keys() >= K_KEYS
    assert (made["status"], made["payload"], made["command_type"]) == ("pending", {"delay": 5}, "restart")
    assert made["device_id"] == dev.device_id and made["state"] == "queued"
    created = datetime.fromisoformat(made["created_at"])
    assert datetime.fromisoformat(made["expires_at"]) - created == timedelta(seconds=120)
    (e,) = await world.events()
    assert isinstance(e, CommandQueued) and e.command_id == made["command_id"]
    assert (e.device_id, e.workspace_id, e.parameters) == (dev.device_id, dev.workspace_id, {"delay": 5})
    row = await world.row(made["command_id"])
    assert row["state"] == "queued" and row["attempts"] == 0 and row["expires_at"] is not None


async def test_history_newest_first_with_paging_and_get_one(world: World) -> None:
    dev = await world.device()
    ids = [(await world.queue(dev, f"t{i}"))["command_id"] for i in range(4)]
    h = world.auth(dev.workspace_id, role="viewer")
    resp = await world.client.get(f"/api/v1/devices/{dev.device_id}/commands", headers=h)
    assert resp.status_code == 200 and [c["command_id"] for c in resp.json()] == ids[::-1]
    resp = await world.client.get(f"/api/v1/devices/{dev.device_id}/commands?limit=2&offset=1", headers=h)
    assert [c["command_id"] for c in resp.json()] == [ids[2], ids[1]]
    resp = await world.client.get(f"/api/v1/commands/{ids[0]}", headers=h)
    assert resp.status_code == 200 and resp.json()["command_type"] == "t0"


async def test_cancel_then_cancel_again_and_finished_is_conflict(world: World) -> None:
    dev = await world.device()
    cid = (await world.queue(dev))["command_id"]
    h = world.auth(dev.workspace_id)
    resp = await world.client.post(f"/api/v1/commands/{cid}/cancel", headers=h)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert resp.json()["finished_at"] is not None
    resp = await world.client.post(f"/api/v1/commands/{cid}/cancel", headers=h)
    assert resp.status_code == 200
    assert len(await world.events((CommandCancelled,))) == 1
    done = (await world.queue(dev))["command_id"]
    await world.client.put(f"/api/v1/devices/{done}/status", json={"status": "completed"}, headers=dev.k)
    resp = await world.client.post(f"/api/v1/commands/{done}/cancel", headers=h)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "COMMAND_FINISHED"


async def test_viewer_reads_but_cannot_write(world: World) -> None:
    dev = await world.device()
    cid = (await world.queue(dev))["command_id"]
    viewer = world.auth(dev.workspace_id, role="viewer")
    resp = await world.client.post(
        f"/api/v1/devices/{dev.device_id}/commands", json={"command_type": "p"}, headers=viewer
    )
    assert resp.status_code == 403
    assert (await world.client.post(f"/api/v1/commands/{cid}/cancel", headers=viewer)).status_code == 403
    assert (await world.client.get(f"/api/v1/commands/{cid}", headers=viewer)).status_code == 200
    w_viewer = world.auth(dev.workspace_id, role="viewer", w=True)
    resp = await world.client.post(
        f"/api/devices/{dev.device_id}/command", json={"command_type": "p"}, headers=w_viewer
    )
    assert resp.status_code == 403


async def test_unknown_device_is_404(world: World) -> None:
    ws = (await world.device()).workspace_id
    resp = await world.client.post(
        "/api/v1/devices/nope/commands", json={"command_type": "p"}, headers=world.auth(ws)
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "DEVICE_NOT_FOUND"
    assert await world.events() == []


async def test_idempotency_key_same_answer_and_conflict(world: World) -> None:
    dev = await world.device()
    h = world.auth(dev.workspace_id)
    url = f"/api/v1/devices/{dev.device_id}/commands"
    body = {"command_type": "p", "payload": {"a": 1}, "idempotency_key": "key-1"}
    first = await world.client.post(url, json=body, headers=h)
    # the command moves on meanwhile: the retry still gets the first answer
    await world.client.get("/api/v1/devices/pending", headers=dev.k)
    again = await world.client.post(
        url,
        json={k: v for k, v in body.items() if k != "idempotency_key"},
        headers={**h, "Idempotency-Key": "key-1"},
    )
    assert (first.status_code, again.status_code) == (201, 201) and again.json() == first.json()
    other = await world.client.post(url, json={**body, "payload": {"a": 2}}, headers=h)
    assert other.status_code == 409 and other.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert len(await world.events((CommandQueued,))) == 1
    # another workspace may use the same key for its own command
    dev_b = await world.device()
    resp = await world.client.post(
        f"/api/v1/devices/{dev_b.device_id}/commands", json=body, headers=world.auth(dev_b.workspace_id)
    )
    assert resp.status_code == 201 and resp.json()["command_id"] != first.json()["command_id"]


async def test_concurrent_idempotent_requests_make_one_command(world: World) -> None:
    import asyncio

    dev = await world.device()
    h = {**world.auth(dev.workspace_id), "Idempotency-Key": "race"}
    url = f"/api/v1/devices/{dev.device_id}/commands"
    replies = await asyncio.gather(
        *(world.client.post(url, json={"command_type": "p"}, headers=h) for _ in range(8))
    )
    assert {r.status_code for r in replies} == {201}
    assert len({r.json()["command_id"] for r in replies}) == 1
    assert await world.count("SELECT count(*) FROM commands WHERE device_id = $1", dev.device_id) == 1


# ---- dialect K ----------------------------------------------------------------------------------


async def test_k_pending_fifo_marks_sent_once_and_stays_listed(world: World) -> None:
    dev = await world.device()
    ids = [(await world.queue(dev, f"t{i}"))["command_id"] for i in range(3)]
    for _ in range(3):
        resp = await world.client.get("/api/v1/devices/pending", headers=dev.k)
        assert resp.status_code == 200
        assert [c["command_id"] for c in resp.json()] == ids
        assert all(c.keys() == K_KEYS and c["status"] == "pending" for c in resp.json())
    sent = await world.events((CommandSent,))
    assert sorted(e.command_id for e in sent) == sorted(ids) and {e.via for e in sent} == {"k_poll"}
    assert {(await world.row(i))["state"] for i in ids} == {"sent"}
    resp = await world.client.put(
        f"/api/v1/devices/{ids[0]}/status", json={"status": "completed", "result": {"pong": 1}}, headers=dev.k
    )
    assert resp.status_code == 200
    got = resp.json()
    assert (got["command_id"], got["status"], got["result"]) == (ids[0], "completed", {"pong": 1})
    resp = await world.client.get("/api/v1/devices/pending", headers=dev.k)
    assert [c["command_id"] for c in resp.json()] == ids[1:]


async def test_k_failed_keeps_error_and_duplicate_changes_nothing(world: World) -> None:
    dev = await world.device()
    cid = (await world.queue(dev, "format"))["command_id"]
    body = {"status": "failed", "result": {"error": "unknown command"}}
    resp = await world.client.put(f"/api/v1/devices/{cid}/status", json=body, headers=dev.k)
    assert resp.status_code == 200 and resp.json()["status"] == "failed"
    resp = await world.client.put(
        f"/api/v1/devices/{cid}/status", json={"status": "completed"}, headers=dev.k
    )
    assert resp.status_code == 200 and resp.json()["status"] == "failed"
    (e,) = await world.events((CommandFinished,))
    assert (e.status, e.error, e.reported_status, e.via) == ("failed", "unknown command", "failed", "k_http")


async def test_k_status_unknown_404_other_device_403_other_workspace_404(world: World) -> None:
    dev, other = await world.device(), None
    other = await world.device(dev.workspace_id)
    foreign = await world.device()
    cid = (await world.queue(dev))["command_id"]
    body = {"status": "completed", "result": {}}
    unknown = "0190a0a0-0000-7000-8000-000000000000"
    assert (
        await world.client.put(f"/api/v1/devices/{unknown}/status", json=body, headers=dev.k)
    ).status_code == 404
    assert (
        await world.client.put("/api/v1/devices/nope/status", json=body, headers=dev.k)
    ).status_code == 404
    assert (
        await world.client.put(f"/api/v1/devices/{cid}/status", json=body, headers=other.k)
    ).status_code == 403
    assert (
        await world.client.put(f"/api/v1/devices/{cid}/status", json=body, headers=foreign.k)
    ).status_code == 404
    assert (await world.row(cid))["state"] == "queued"


async def test_k_wrong_key_401(world: World) -> None:
    dev = await world.device()
    resp = await world.client.get("/api/v1/devices/pending", headers={**dev.k, "X-API-Key": "wrong"})
    assert resp.status_code == 401
    assert (await world.client.get("/api/v1/devices/pending")).status_code == 401


# ---- dialect S ----------------------------------------------------------------------------------


async def test_s_result_words_and_vocabulary(world: World) -> None:
    dev = await world.device()
    cases = {
        "success": "completed",
        "failure": "failed",
        "timeout": "failed",
        "failed": "failed",
        "cancelled": "cancelled",
    }
    for word, shown in cases.items():
        cid = (await world.queue(dev))["command_id"]
        body = {
            "status": word,
            "executedAt": "2026-01-01T00:00:00Z",
            "duration": 12.5,
            "output": "out",
            "error": "boom" if word != "success" else None,
            "result": {"exitCode": 0, "stdout": "", "stderr": ""},
        }
        resp = await world.client.post(f"/api/v1/device/commands/{cid}/result", json=body, headers=dev.s)
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == shown and resp.json()["success"] is True
        got = (await world.client.get(f"/api/v1/commands/{cid}", headers=world.auth(dev.workspace_id))).json()
        assert got["status"] == shown and got["reported_status"] == word
    (*_, last) = await world.events((CommandFinished,))
    assert last.reported_status == "failed" and last.error == "boom" and last.duration_ms == 12.5


async def test_s_result_duplicate_and_other_device_404(world: World) -> None:
    dev = await world.device()
    other = await world.device(dev.workspace_id)
    cid = (await world.queue(dev))["command_id"]
    url = f"/api/v1/device/commands/{cid}/result"
    assert (await world.client.post(url, json={"status": "success"}, headers=other.s)).status_code == 404
    first = await world.client.post(url, json={"status": "success"}, headers=dev.s)
    again = await world.client.post(url, json={"status": "failure"}, headers=dev.s)
    assert first.json()["duplicate"] is False and again.json() == {**first.json(), "duplicate": True}
    assert len(await world.events((CommandFinished,))) == 1
    unknown = "/api/v1/device/commands/0190a0a0-0000-7000-8000-000000000000/result"
    assert (await world.client.post(unknown, json={"status": "success"}, headers=dev.s)).status_code == 404


async def test_s_bad_token_401_and_limits_413(world: World) -> None:
    dev = await world.device()
    cid = (await world.queue(dev))["command_id"]
    url = f"/api/v1/device/commands/{cid}/result"
    resp = await world.client.post(url, json={"status": "success"}, headers={"X-Device-Session": "bad"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "INVALID_TOKEN"
    for body in (
        {"status": "success", "output": "x" * (10 * 1024 + 1)},
        {"status": "failure", "error": "e" * (5 * 1024 + 1)},
        {"status": "success", "result": {"stdout": "x" * 100_001}},
    ):
        resp = await world.client.post(url, json=body, headers=dev.s)
        assert resp.status_code == 413, resp.text
    assert (await world.row(cid))["state"] == "queued"
    at_limit = {"status": "success", "output": "x" * 10 * 1024, "error": "e" * 5 * 1024}
    resp = await world.client.post(url, json=at_limit, headers=dev.s)
    assert resp.status_code == 200, resp.text


# ---- dialect W ----------------------------------------------------------------------------------


async def test_w_command_and_control_list_and_get(world: World) -> None:
    dev = await world.device()
    h = world.auth(dev.workspace_id, w=True)
    a = await world.client.post(
        f"/api/devices/{dev.device_id}/command",
        json={"command_type": "led", "parameters": {"on": True}},
        headers=h,
    )
    b = await world.client.post(
        f"/api/devices/{dev.device_id}/control", json={"command_type": "reboot"}, headers=h
    )
    assert (a.status_code, b.status_code) == (201, 201)
    assert (
        a.json().keys() >= W_KEYS
        and a.json()["status"] == "pending"
        and a.json()["parameters"] == {"on": True}
    )
    assert (a.json()["result"], a.json()["error_message"], a.json()["sent_at"]) == (None, None, None)
    resp = await world.client.get(f"/api/devices/{dev.device_id}/commands?limit=50", headers=h)
    assert resp.status_code == 200 and [c["id"] for c in resp.json()] == [b.json()["id"], a.json()["id"]]
    resp = await world.client.get(f"/api/devices/{dev.device_id}/commands/{a.json()['id']}", headers=h)
    assert resp.status_code == 200 and resp.json()["command_type"] == "led"
    other = await world.device(dev.workspace_id)
    resp = await world.client.get(f"/api/devices/{other.device_id}/commands/{a.json()['id']}", headers=h)
    assert resp.status_code == 404


async def test_w_needs_workspace_header(world: World) -> None:
    dev = await world.device()
    h = world.auth(dev.workspace_id)
    resp = await world.client.post(
        f"/api/devices/{dev.device_id}/command", json={"command_type": "p"}, headers=h
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "WORKSPACE_REQUIRED"
    assert (await world.client.get(f"/api/devices/{dev.device_id}/commands", headers=h)).status_code == 400
    assert await world.events() == []


async def test_workspace_listing_filters_by_device_and_status(world: World) -> None:
    a = await world.device()
    b = await world.device(a.workspace_id)
    stranger = await world.device()
    await world.queue(stranger)
    a1, b1 = (await world.queue(a))["command_id"], (await world.queue(b))["command_id"]
    a2 = (await world.queue(a))["command_id"]
    await world.client.put(f"/api/v1/devices/{a2}/status", json={"status": "completed"}, headers=a.k)
    h = world.auth(a.workspace_id, role="viewer")

    async def ids(query: str) -> list[str]:
        resp = await world.client.get(f"/api/v1/commands{query}", headers=h)
        assert resp.status_code == 200, resp.text
        return [c["command_id"] for c in resp.json()]

    assert await ids("") == [a2, b1, a1]
    assert await ids(f"?device_id={a.device_id}") == [a2, a1]
    assert await ids("?status=pending") == [b1, a1]
    assert await ids("?status=completed") == await ids("?status=succeeded") == [a2]
    assert await ids("?limit=1&offset=1") == [b1]
    assert (await world.client.get("/api/v1/commands?status=bogus", headers=h)).status_code == 400
    resp = await world.client.get(f"/api/v1/commands?device_id={stranger.device_id}", headers=h)
    assert resp.status_code == 404


async def test_w_idempotency_key_header(world: World) -> None:
    dev = await world.device()
    h = {**world.auth(dev.workspace_id, w=True), "Idempotency-Key": "w-1"}
    url = f"/api/devices/{dev.device_id}/command"
    first = await world.client.post(url, json={"command_type": "led"}, headers=h)
    again = await world.client.post(
        f"/api/devices/{dev.device_id}/control", json={"command_type": "led"}, headers=h
    )
    assert (first.status_code, again.status_code) == (201, 201) and again.json() == first.json()
    assert "id" in first.json()
    # the same key on the operator route is another request (another shape): a conflict
    resp = await world.client.post(
        f"/api/v1/devices/{dev.device_id}/commands", json={"command_type": "led"}, headers=h
    )
    assert resp.status_code == 409
    assert await world.count("SELECT count(*) FROM commands WHERE device_id = $1", dev.device_id) == 1
