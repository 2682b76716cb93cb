"""The portals' fleet view and frame coalescing (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from libs.events.schemas.commands import CommandFinished, CommandQueued, CommandSent
from libs.events.schemas.device import (
    DeviceDeleted,
    DeviceRegistered,
    DeviceStatusChanged,
    DeviceUpdated,
    InitialCredential,
)
from services.gateway.portal_view import Coalescer, FleetView, workspace_of

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def registered(dev: str, ws: str = "w1") -> DeviceRegistered:
    return DeviceRegistered(
        device_id=dev, workspace_id=ws, name=f"n-{dev}", device_type="esp32", groups=["g"]
    )


def status(dev: str, to: str, prev: str, reason: str, s: float, ws: str = "w1") -> DeviceStatusChanged:
    at = T0 + timedelta(seconds=s)
    return DeviceStatusChanged(device_id=dev, workspace_id=ws, status=to, previous=prev, reason=reason, at=at)


def test_the_fleet_of_each_workspace_follows_registry_and_presence() -> None:
    view = FleetView()
    assert view.apply(registered("d1"))[0]["device"]["status"] == "offline"
    view.apply(registered("d2"))
    view.apply(registered("x1", ws="w2"))
    [frame] = view.apply(status("d1", "online", "offline", "first_heartbeat", 1))
    assert frame == {
        "type": "status", "device_id": "d1", "status": "online", "previous": "offline",
        "reason": "first_heartbeat", "at": (T0 + timedelta(seconds=1)).isoformat(),
    }  # fmt: skip
    assert view.apply(
        DeviceUpdated(device_id="d2", workspace_id="w1", changes={"name": "new", "metadata": {}})
    ) == [{"type": "device", "device": {"device_id": "d2", "name": "new"}}]
    assert view.apply(DeviceDeleted(device_id="d2", workspace_id="w1")) == [
        {"type": "device_removed", "device_id": "d2"}
    ]
    [d1] = view.snapshot("w1")
    assert (d1["device_id"], d1["status"], d1["status_reason"], d1["groups"]) == (
        "d1",
        "online",
        "first_heartbeat",
        ["g"],
    )
    assert [d["device_id"] for d in view.snapshot("w2")] == ["x1"] and view.snapshot("w3") == []
    assert view.apply(status("ghost", "online", "offline", "first_heartbeat", 2)) == []  # unknown device
    assert view.set_metrics("w1", "d1", {"cpu": 5}, "t") and not view.set_metrics("w1", "d1", {"cpu": 5}, "t")
    assert not view.set_metrics("w2", "d1", {"cpu": 5}, "t")  # another workspace's device: nothing


def test_command_frames_carry_the_portal_vocabulary() -> None:
    view = FleetView()
    common = {"command_id": "c1", "device_id": "d1", "workspace_id": "w1"}
    queued = CommandQueued(**common, command_type="ping", created_at=T0, expires_at=T0 + timedelta(hours=1))
    [frame] = view.apply(queued)
    assert frame["command"]["state"] == "queued" and frame["command"]["command_type"] == "ping"
    assert view.apply(CommandSent(**common, at=T0, via="agent"))[0]["command"]["state"] == "sent"
    done = CommandFinished(**common, status="succeeded", at=T0, result={"pong": 1})
    assert view.apply(done)[0]["command"] == {
        "command_id": "c1", "device_id": "d1", "state": "succeeded", "result": {"pong": 1}, "error": None,
        "finished_at": T0.isoformat(),
    }  # fmt: skip
    assert workspace_of(done) == "w1"


def test_coalescing_keeps_the_newest_frame_per_thing_and_every_event() -> None:
    c = Coalescer(max_events=2)
    c.add({"type": "status", "device_id": "d1", "status": "late"})
    c.add({"type": "status", "device_id": "d2", "status": "online"})
    c.add({"type": "status", "device_id": "d1", "status": "online"})
    c.add({"type": "command", "command": {"command_id": "c1", "state": "pending", "command_type": "ping"}})
    c.add({"type": "command", "command": {"command_id": "c1", "state": "sent"}})
    for i in range(3):
        c.add({"type": "event", "id": str(i)})
    out = c.drain()
    assert [f.get("device_id") or f.get("id") or f["command"]["state"] for f in out] == [
        "d2",
        "d1",
        "sent",
        "1",
        "2",
    ]
    assert out[1]["status"] == "online" and out[2]["command"]["command_type"] == "ping"  # merged
    assert c.dropped == 1 and len(c) == 0 and c.drain() == []


def test_the_events_view_shows_no_secret_hashes_and_no_token_events_to_viewers() -> None:
    from libs.events.schemas.device import EnrolmentTokenCreated
    from services.gateway.portal_view import tail_allowed, tail_data

    registered = DeviceRegistered(
        device_id="d1",
        workspace_id="w",
        name="n",
        device_type="virtual",
        credentials=[InitialCredential(credential_id="c1", kind="secret", secret_sha256="ab" * 32)],
    )
    data = tail_data(registered)
    assert data["credentials"] == [{"credential_id": "c1", "kind": "secret"}]
    assert "sha256" not in str(data)
    from libs.events.schemas import tag_of

    created = tag_of(EnrolmentTokenCreated)
    assert not tail_allowed(created, "viewer") and tail_allowed(created, "operator")
    assert tail_allowed("device.registered.v1", "viewer")
