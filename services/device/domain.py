"""The registry's rules: valid devices and sites, and the events each decision produces (pure)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from libs.events.schemas import Event
from libs.events.schemas.device import (
    DeviceDeleted,
    DeviceRegistered,
    DeviceUpdated,
    InitialCredential,
    SiteCreated,
)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z"  # \Z: "$" would admit a trailing newline
TYPE_PATTERN = r"^[a-z0-9_]{1,32}$"
_ID_RE = re.compile(ID_PATTERN)
MAX_METADATA_BYTES = 16_384
MAX_DEPTH = 16
ENROLMENT = "enrolment"

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
DeviceType = Annotated[str, msgspec.Meta(pattern=TYPE_PATTERN)]
Group = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Groups = Annotated[list[Group], msgspec.Meta(max_length=32)]
LabelKey = Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
LabelValue = Annotated[str, msgspec.Meta(max_length=255)]
Labels = Annotated[dict[LabelKey, LabelValue], msgspec.Meta(max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=1000)]
Kind = Literal["secret", "api_key", "token"]
WType = Literal["arduino", "esp32", "raspberry_pi", "virtual"]


class DomainError(Exception):
    """A refused decision; ``kind`` is invalid, not_found, conflict or forbidden."""

    def __init__(self, kind: str, code: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.code, self.message = kind, code, message


class NewDevice(msgspec.Struct, kw_only=True):
    """Operator registration (``POST /api/v1/devices``)."""

    name: Name
    device_type: DeviceType
    site_id: Id | None = None
    groups: Groups = []
    labels: Labels = {}
    metadata: dict[str, Any] = {}
    credentials: Annotated[list[Kind], msgspec.Meta(max_length=3)] = msgspec.field(
        default_factory=lambda: ["secret"]
    )


class EnrolDevice(msgspec.Struct, kw_only=True):
    """Dialect K registration (the client chooses ``device_id``)."""

    device_id: Id
    name: Name
    device_type: DeviceType
    ip_address: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    config: dict[str, Any] | None = None


class WNewDevice(msgspec.Struct, kw_only=True):
    """Dialect W registration."""

    name: Name
    device_type: WType
    metadata: dict[str, Any] | None = None


class DevicePatch(msgspec.Struct, kw_only=True):
    """Editable registry fields; absent ones stay as they are."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    site_id: Id | msgspec.UnsetType | None = msgspec.UNSET
    groups: Groups | msgspec.UnsetType = msgspec.UNSET
    labels: Labels | msgspec.UnsetType = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    disabled: bool | msgspec.UnsetType = msgspec.UNSET


class WDevicePatch(msgspec.Struct, kw_only=True):
    """Dialect W edits: name and metadata only."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType | None = msgspec.UNSET


class NewSite(msgspec.Struct, kw_only=True):
    """A site (``POST /api/v1/sites``)."""

    site_id: Id
    name: Name
    location: Text | None = None
    description: Text | None = None


@dataclass(frozen=True)
class Device:
    """A device as the registry keeps it."""

    device_id: str
    workspace_id: str
    name: str
    device_type: str
    site_id: str | None
    groups: list[str]
    labels: dict[str, str]
    metadata: dict[str, Any]
    disabled: bool
    created_at: datetime
    updated_at: datetime
    ip_address: str | None = None
    status: str = "offline"
    status_reason: str = "never_seen"
    last_seen: datetime | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # latest heartbeat's, set by presence


@dataclass(frozen=True)
class Site:
    """A place devices belong to."""

    site_id: str
    workspace_id: str
    name: str
    location: str | None
    description: str | None
    created_at: datetime


T = TypeVar("T", bound=msgspec.Struct)
_encoder = msgspec.json.Encoder()


def parse(cls: type[T], data: Any) -> T:
    """A command from decoded JSON; DomainError(invalid) for wrong shapes, types or values."""
    if not isinstance(data, dict):
        raise DomainError("invalid", "VALIDATION_ERROR", "the body must be a JSON object")
    try:
        cmd = msgspec.convert(data, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise DomainError("invalid", "VALIDATION_ERROR", str(exc)) from None
    check_values(data)
    for name in ("name", "metadata", "config"):
        _check_field(name, getattr(cmd, name, None))
    return cmd


def _check_field(field: str, value: Any) -> None:
    if field == "name" and isinstance(value, str) and not value.strip():
        raise DomainError("invalid", "VALIDATION_ERROR", "name: must not be blank")
    big = isinstance(value, dict) and len(_encoder.encode(value)) > MAX_METADATA_BYTES
    if field in ("metadata", "config") and big:
        raise DomainError("invalid", "VALIDATION_ERROR", f"{field}: over {MAX_METADATA_BYTES} bytes")


def check_values(value: Any, depth: int = 0) -> None:
    """Refuse NUL characters (Postgres cannot store them) and nesting deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise DomainError("invalid", "VALIDATION_ERROR", f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise DomainError("invalid", "VALIDATION_ERROR", "strings must not contain NUL")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_values(k, depth + 1)
            check_values(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            check_values(v, depth + 1)


def is_id(value: str) -> bool:
    """Whether ``value`` can name a device or a site."""
    return bool(_ID_RE.match(value))


def check_ip(value: str | None) -> None:
    """An IPv4 or IPv6 address, or nothing."""
    if value is None:
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise DomainError("invalid", "VALIDATION_ERROR", "ip_address: not an IP address") from None


def check_site(site_id: str | None, site: Site | None, workspace_id: str) -> None:
    """A named site must exist in the same workspace (another workspace's is not found)."""
    if site_id is not None and (site is None or site.workspace_id != workspace_id):
        raise DomainError("not_found", "SITE_NOT_FOUND", f"site {site_id} not found")


def decide_register(
    device: Device, *, taken: bool, credentials: list[InitialCredential], by: str
) -> list[Event]:
    """Register a new device; its id is refused if any device (even a deleted one) ever had it."""
    if taken:
        raise DomainError("conflict", "DEVICE_EXISTS", f"device {device.device_id} already exists")
    return [
        DeviceRegistered(
            device_id=device.device_id,
            workspace_id=device.workspace_id,
            name=device.name,
            device_type=device.device_type,
            site_id=device.site_id,
            labels=device.labels,
            groups=device.groups,
            metadata=device.metadata,
            credentials=credentials,
            by=by,
        )
    ]


def decide_update(
    device: Device, patch: dict[str, Any], *, by: str, now: datetime
) -> tuple[Device, list[Event]]:
    """Apply the fields that actually change; no change, no event."""
    changes = {k: v for k, v in patch.items() if getattr(device, k) != v}
    if not changes:
        return device, []
    updated = dataclasses.replace(device, updated_at=now, **changes)
    event = DeviceUpdated(
        device_id=device.device_id, workspace_id=device.workspace_id, changes=changes, by=by
    )
    return updated, [event]


def decide_delete(device: Device, *, by: str) -> list[Event]:
    """Remove a device from the registry (its credentials stop working everywhere)."""
    return [DeviceDeleted(device_id=device.device_id, workspace_id=device.workspace_id, by=by)]


def decide_create_site(site: Site, *, taken: bool, by: str) -> list[Event]:
    """Create a site; site ids are unique across workspaces."""
    if taken:
        raise DomainError("conflict", "SITE_EXISTS", f"site {site.site_id} already exists")
    return [
        SiteCreated(
            site_id=site.site_id,
            workspace_id=site.workspace_id,
            name=site.name,
            location=site.location,
            description=site.description,
            by=by,
        )
    ]


def patch_fields(patch: DevicePatch | WDevicePatch) -> dict[str, Any]:
    """The fields a patch sets (W's ``metadata: null`` clears it)."""
    out = {f: getattr(patch, f) for f in patch.__struct_fields__ if getattr(patch, f) is not msgspec.UNSET}
    if "metadata" in out and out["metadata"] is None:
        out["metadata"] = {}
    return out
