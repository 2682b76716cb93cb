"""Events published by the device service on ``events:device``.

``by`` names who acted: an operator id, ``enrolment`` (open enrolment, or an agent presenting an
enrolment token), or ``system``. Enrolment tokens and device secrets appear only as SHA-256.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from .base import Event


class InitialCredential(msgspec.Struct, frozen=True, kw_only=True):
    """A credential minted with the device: its id, kind and SHA-256 (never the secret)."""

    credential_id: str
    kind: str
    secret_sha256: str


class DeviceRegistered(Event, frozen=True, tag="device.registered.v1"):
    """A device joined a workspace's registry, with the credentials it was given (hashes only)."""

    device_id: str
    workspace_id: str
    name: str
    device_type: str
    site_id: str | None = None
    labels: dict[str, str] = {}
    groups: list[str] = []
    metadata: dict[str, Any] = {}
    credentials: list[InitialCredential] = []
    by: str = "system"


class DeviceUpdated(Event, frozen=True, tag="device.updated.v1"):
    """Registry fields changed; ``changes`` holds the new values (``disabled`` among them)."""

    device_id: str
    workspace_id: str
    changes: dict[str, Any]
    by: str = "system"


class DeviceDeleted(Event, frozen=True, tag="device.deleted.v1"):
    """A device left the registry; its credentials and sessions stop working."""

    device_id: str
    workspace_id: str
    by: str = "system"


class SiteCreated(Event, frozen=True, tag="device.site_created.v1"):
    """A site (a place devices belong to) was created; site ids are unique across workspaces."""

    site_id: str
    workspace_id: str
    name: str
    location: str | None = None
    description: str | None = None
    by: str = "system"


class DeviceStatusChanged(Event, frozen=True, tag="device.status_changed.v1"):
    """Presence moved a device between online, late and offline (with the reason)."""

    device_id: str
    workspace_id: str
    status: str
    previous: str
    reason: str
    at: datetime


class PresenceTimingSet(Event, frozen=True, tag="device.presence_timing_set.v1"):
    """A workspace's heartbeat interval and timeout were set (None: the service default applies)."""

    workspace_id: str
    heartbeat_interval_s: float | None = None
    heartbeat_timeout_s: float | None = None
    by: str = "system"


class EnrolmentTokenCreated(Event, frozen=True, tag="device.enrolment_token_created.v1"):
    """An operator created an enrolment token: agents presenting it register themselves.

    ``secret_sha256`` is the token's SHA-256 (the token itself is shown once, to its creator). The
    devices it enrols get ``device_type``, ``site_id``, ``groups`` and ``labels``.
    """

    token_id: str
    workspace_id: str
    secret_sha256: str
    max_uses: int
    expires_at: datetime
    name: str | None = None
    site_id: str | None = None
    device_type: str = "linux_server"
    groups: list[str] = []
    labels: dict[str, str] = {}
    by: str = "system"


class EnrolmentTokenRevoked(Event, frozen=True, tag="device.enrolment_token_revoked.v1"):
    """An enrolment token was revoked: it enrols nothing more (devices it enrolled stay)."""

    token_id: str
    workspace_id: str
    by: str = "system"


class EnrolmentTokenUsed(Event, frozen=True, tag="device.enrolment_token_used.v1"):
    """An agent enrolled with a token: one use counted (``uses`` after it), for a new device.

    ``agent_sha256`` is the SHA-256 of the agent's own id (its retry key, kept out of the log).
    A retry by the same agent is not a use: it is a ``device.credential_rotated.v1``.
    """

    token_id: str
    workspace_id: str
    device_id: str
    agent_sha256: str
    uses: int
    by: str = "enrolment"


class CredentialRotated(Event, frozen=True, tag="device.credential_rotated.v1"):
    """The registry gave a device a new credential; those in ``replaces`` stop working.

    Sent when an agent enrols again with the same token and agent id (it lost the first answer):
    same device, a fresh secret, the old one refused everywhere.
    """

    device_id: str
    workspace_id: str
    credential_id: str
    kind: str
    secret_sha256: str
    replaces: list[str] = []
    by: str = "enrolment"


EVENTS: tuple[type[Event], ...] = (
    DeviceRegistered,
    DeviceUpdated,
    DeviceDeleted,
    SiteCreated,
    DeviceStatusChanged,
    PresenceTimingSet,
    EnrolmentTokenCreated,
    EnrolmentTokenRevoked,
    EnrolmentTokenUsed,
    CredentialRotated,
)
