"""What portals see, pure: the fleet of each workspace folded from events, and the frames a change makes.

No I/O and no clock. :class:`FleetView` folds ``events:device`` (registry and presence changes) and
``events:commands``; :func:`frames_of` turns one event into the portal frames of its workspace.
Metrics come separately (the latest-metrics cache, throttled), never from raw heartbeats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from libs.events.schemas import Event
from libs.events.schemas.commands import (
    CommandCancelled,
    CommandDelivered,
    CommandExpired,
    CommandFinished,
    CommandQueued,
    CommandSent,
)
from libs.events.schemas.device import DeviceDeleted, DeviceRegistered, DeviceStatusChanged, DeviceUpdated

Frame = dict[str, Any]
REGISTRY_FIELDS = ("name", "device_type", "site_id", "groups", "labels")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass
class FleetView:
    """Per workspace, per device: registry fields, status, reason and last seen."""

    devices: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    workspace_of: dict[str, str] = field(default_factory=dict)

    def snapshot(self, workspace_id: str) -> list[dict[str, Any]]:
        """Every device of a workspace, as the portal's fleet table wants it."""
        return [dict(d) for d in self.devices.get(workspace_id, {}).values()]

    def device_ids(self, workspace_id: str) -> list[str]:
        """The ids of a workspace's devices."""
        return list(self.devices.get(workspace_id, {}))

    def apply(self, event: Event) -> list[Frame]:
        """Fold one event; returns the frames the portals of its workspace should get."""
        if isinstance(event, DeviceRegistered):
            device = {
                "device_id": event.device_id,
                "workspace_id": event.workspace_id,
                "name": event.name,
                "device_type": event.device_type,
                "site_id": event.site_id,
                "groups": list(event.groups),
                "labels": dict(event.labels),
                "status": "offline",
                "status_reason": "never_seen",
                "last_seen": None,
                "metrics": {},
            }
            self.devices.setdefault(event.workspace_id, {})[event.device_id] = device
            self.workspace_of[event.device_id] = event.workspace_id
            return [{"type": "device", "device": dict(device)}]
        if isinstance(event, DeviceUpdated):
            device = self._get(event.workspace_id, event.device_id)
            if device is None:
                return []
            changed = {k: v for k, v in event.changes.items() if k in REGISTRY_FIELDS}
            device.update(changed)
            return (
                [{"type": "device", "device": {"device_id": event.device_id, **changed}}] if changed else []
            )
        if isinstance(event, DeviceDeleted):
            self.devices.get(event.workspace_id, {}).pop(event.device_id, None)
            self.workspace_of.pop(event.device_id, None)
            return [{"type": "device_removed", "device_id": event.device_id}]
        if isinstance(event, DeviceStatusChanged):
            device = self._get(event.workspace_id, event.device_id)
            if device is None:
                return []
            device.update(status=event.status, status_reason=event.reason)
            if event.status != "offline":
                device["last_seen"] = _iso(event.at)
            frame = {
                "type": "status",
                "device_id": event.device_id,
                "status": event.status,
                "previous": event.previous,
                "reason": event.reason,
                "at": _iso(event.at),
            }
            return [frame]
        command = command_frame(event)
        return [command] if command is not None else []

    def set_metrics(
        self, workspace_id: str, device_id: str, metrics: dict[str, Any], seen: str | None
    ) -> bool:
        """Record a device's latest metrics; whether they changed."""
        device = self._get(workspace_id, device_id)
        if device is None or (device.get("metrics") == metrics and device.get("last_seen") == seen):
            return False
        device["metrics"] = metrics
        if seen is not None:
            device["last_seen"] = seen
        return True

    def _get(self, workspace_id: str, device_id: str) -> dict[str, Any] | None:
        return self.devices.get(workspace_id, {}).get(device_id)


_STATES: dict[type[Event], str] = {
    CommandQueued: "queued",
    CommandSent: "sent",
    CommandDelivered: "delivered",
    CommandExpired: "expired",
    CommandCancelled: "cancelled",
}


def command_frame(event: Event) -> Frame | None:
    """The portal's ``command`` frame for a lifecycle event (None for other events)."""
    if isinstance(event, CommandQueued):
        command: dict[str, Any] = {
            "command_type": event.command_type,
            "parameters": dict(event.parameters),
            "created_at": _iso(event.created_at),
            "expires_at": _iso(event.expires_at),
        }
    elif isinstance(event, CommandFinished):
        command = {
            "result": event.result,
            "error": event.error,
            "finished_at": _iso(event.at),
            "state": event.status,
        }
    elif type(event) in _STATES:
        command = {}
    else:
        return None
    base = {"command_id": event.command_id, "device_id": event.device_id}  # type: ignore[attr-defined]
    command.setdefault("state", _STATES.get(type(event)))
    return {"type": "command", "command": {**base, **command}}


# Events about enrolment tokens are for those who may manage tokens (GET /api/v1/enrolment-tokens
# is owner/operator only); the events view of a viewer leaves them out.
WRITER_ONLY = frozenset(
    {
        "device.enrolment_token_created.v1",
        "device.enrolment_token_revoked.v1",
        "device.enrolment_token_used.v1",
    }
)


def tail_data(event: Event) -> Any:
    """An event's fields for the events view, without any ``*_sha256`` (hashes of secrets)."""
    return _without_hashes(msgspec.to_builtins(event))


def _without_hashes(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_hashes(v) for k, v in value.items() if not k.endswith("_sha256")}
    if isinstance(value, list):
        return [_without_hashes(v) for v in value]
    return value


def tail_allowed(event_type: str, role: str | None) -> bool:
    """Whether an operator of this role sees this event in the events view."""
    return event_type not in WRITER_ONLY or role in ("owner", "operator")


def workspace_of(event: Event) -> str | None:
    """The workspace an event belongs to (events without one are not shown to portals)."""
    value = getattr(event, "workspace_id", None)
    return value if isinstance(value, str) else None


class Coalescer:
    """Frames waiting for a portal socket's next flush: one per key, the newest wins.

    A device's status, a device's registry delta and a command's state each keep only their latest
    frame, so a burst of changes costs one frame per thing per flush; events-view frames queue
    (bounded) in order.
    """

    def __init__(self, max_events: int = 500) -> None:
        self.latest: dict[tuple[str, str], Frame] = {}
        self.events: list[Frame] = []
        self.max_events = max_events
        self.dropped = 0

    def add(self, frame: Frame) -> None:
        """Queue a frame (replacing an older one of the same thing)."""
        kind = frame["type"]
        if kind == "event":
            if len(self.events) >= self.max_events:
                self.events.pop(0)
                self.dropped += 1
            self.events.append(frame)
            return
        if kind == "command":
            key = (kind, str(frame["command"]["command_id"]))
            old = self.latest.get(key)
            if old is not None:  # merge: a queued frame's fields plus the newer state
                frame = {"type": "command", "command": {**old["command"], **frame["command"]}}
        elif kind == "device":
            key = (kind, str(frame["device"]["device_id"]))
            old = self.latest.get(key)
            if old is not None:
                frame = {"type": "device", "device": {**old["device"], **frame["device"]}}
        else:
            key = (kind, str(frame.get("device_id", "")))
        self.latest.pop(key, None)  # re-insert: frames go out in the order of their last change
        self.latest[key] = frame

    def drain(self) -> list[Frame]:
        """Everything queued, in order; the queue is empty afterwards."""
        out = [*self.latest.values(), *self.events]
        self.latest, self.events = {}, []
        return out

    def __len__(self) -> int:
        return len(self.latest) + len(self.events)
