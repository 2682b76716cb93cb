"""Events published by the device service on ``events:device``."""

from __future__ import annotations

from datetime import datetime

from .base import Event


class DeviceRegistered(Event, frozen=True, tag="device.registered.v1"):
    """A device joined a workspace's registry."""

    device_id: str
    workspace_id: str
    name: str
    device_type: str
    site_id: str | None = None
    labels: dict[str, str] = {}


class DeviceStatusChanged(Event, frozen=True, tag="device.status_changed.v1"):
    """Presence moved a device between online, late and offline (with the reason)."""

    device_id: str
    workspace_id: str
    status: str
    previous: str
    reason: str
    at: datetime


EVENTS: tuple[type[Event], ...] = (DeviceRegistered, DeviceStatusChanged)
