"""The registry's rules: valid devices and sites, and the events each decision produces (pure)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from libs.events.schemas import Event
from libs.events.schemas.device import (
    CredentialRotated,
    DeviceDeleted,
    DeviceRegistered,
    DeviceUpdated,
    EnrolmentTokenCreated,
    EnrolmentTokenRevoked,
    EnrolmentTokenUsed,
    InitialCredential,
    SiteCreated,
)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z"  # \Z: "$" would admit a trailing newline
TYPE_PATTERN = r"^[a-z0-9_]{1,32}$"
_ID_RE = re.compile(ID_PATTERN)
MAX_METADATA_BYTES = 16_384
MAX_DEPTH = 16
ENROLMENT = "enrolment"
# Paths under /api/v1/devices/ that belong to other routes (K's pending list and registration, bulk
# creation): no device may have these ids, or its own routes would be unreachable.
RESERVED_IDS = frozenset({"pending", "sites", "bulk"})
MAX_TOKEN_USES = 100_000
MAX_TOKEN_TTL_S = 30 * 86_400
MAX_BULK = 1000
# An agent id is a secret of the agent's (with the token, it is the retry key): at least 128 bits.
AGENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{32,128}\Z"
# A retried enrolment (same token, same agent id) is answered only this long after the first one:
# long enough for an agent to retry after a lost answer, too short to make a stolen token and agent
# id a standing key to the device.
ENROL_RETRY_WINDOW = timedelta(minutes=10)

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


class BulkDevices(msgspec.Struct, kw_only=True):
    """Operator bulk registration (``POST /api/v1/devices/bulk``): ``count`` devices named
    ``<name_prefix>-<n>``, ``n`` from ``start``."""

    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_BULK)]
    name_prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
    device_type: DeviceType
    site_id: Id | None = None
    groups: Groups = []
    labels: Labels = {}
    credentials: Annotated[list[Kind], msgspec.Meta(min_length=1, max_length=3)] = msgspec.field(
        default_factory=lambda: ["secret"]
    )
    start: Annotated[int, msgspec.Meta(ge=1, le=999_999_999)] = 1


class NewEnrolmentToken(msgspec.Struct, kw_only=True):
    """An enrolment token (``POST /api/v1/enrolment-tokens``) and what its devices get."""

    name: Name | None = None
    site_id: Id | None = None
    device_type: DeviceType = "linux_server"
    groups: Groups = []
    labels: Labels = {}
    max_uses: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKEN_USES)] = 1
    ttl_s: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKEN_TTL_S)] = 86_400


class AgentEnrol(msgspec.Struct, kw_only=True):
    """An agent enrolling itself (``POST /api/v1/agent/enrol``); ``agent_id`` is its retry key."""

    enrolment_token: str
    agent_id: Annotated[str, msgspec.Meta(pattern=AGENT_ID_PATTERN)]
    name: Name | None = None
    device_type: DeviceType | None = None


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


@dataclass(frozen=True)
class EnrolmentToken:
    """An enrolment token as the registry keeps it (its secret only as SHA-256, elsewhere)."""

    token_id: str
    workspace_id: str
    name: str | None
    site_id: str | None
    device_type: str
    groups: list[str]
    labels: dict[str, str]
    max_uses: int
    uses: int
    expires_at: datetime
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None

    def state(self, now: datetime) -> str:
        """``revoked``, ``expired``, ``used_up`` or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        return "used_up" if self.uses >= self.max_uses else "active"


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
    for name in ("name", "name_prefix", "metadata", "config"):
        _check_field(name, getattr(cmd, name, None))
    return cmd


def _check_field(field: str, value: Any) -> None:
    if field in ("name", "name_prefix") and isinstance(value, str) and not value.strip():
        raise DomainError("invalid", "VALIDATION_ERROR", f"{field}: must not be blank")
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
    if device.device_id in RESERVED_IDS:
        raise DomainError("invalid", "VALIDATION_ERROR", f"device_id: {device.device_id!r} is reserved")
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


def new_token(
    cmd: NewEnrolmentToken, *, token_id: str, workspace_id: str, by: str, now: datetime
) -> EnrolmentToken:
    """The token a creation command describes, unused."""
    return EnrolmentToken(
        token_id=token_id,
        workspace_id=workspace_id,
        name=cmd.name,
        site_id=cmd.site_id,
        device_type=cmd.device_type,
        groups=list(cmd.groups),
        labels=dict(cmd.labels),
        max_uses=cmd.max_uses,
        uses=0,
        expires_at=now + timedelta(seconds=cmd.ttl_s),
        created_at=now,
        created_by=by,
    )


def decide_create_token(token: EnrolmentToken, *, secret_sha256: str) -> list[Event]:
    """Announce a new enrolment token (its hash only)."""
    return [
        EnrolmentTokenCreated(
            token_id=token.token_id,
            workspace_id=token.workspace_id,
            secret_sha256=secret_sha256,
            max_uses=token.max_uses,
            expires_at=token.expires_at,
            name=token.name,
            site_id=token.site_id,
            device_type=token.device_type,
            groups=token.groups,
            labels=token.labels,
            by=token.created_by,
        )
    ]


def decide_revoke_token(
    token: EnrolmentToken, *, by: str, now: datetime
) -> tuple[EnrolmentToken, list[Event]]:
    """Revoke a token; revoking it again changes nothing (no event)."""
    if token.revoked_at is not None:
        return token, []
    event = EnrolmentTokenRevoked(token_id=token.token_id, workspace_id=token.workspace_id, by=by)
    return dataclasses.replace(token, revoked_at=now), [event]


def invalid_token() -> DomainError:
    """The one answer for an unknown, expired, revoked or used-up token (no oracle)."""
    return DomainError("unauthorized", "INVALID_ENROLMENT_TOKEN", "invalid enrolment token")


@dataclass(frozen=True)
class EnrolledAgent:
    """What the registry remembers of an agent that enrolled with a token."""

    device_id: str
    credential_id: str  # the secret the registry last gave it
    first_enrolled_at: datetime
    credential_revoked: bool  # an operator revoked or replaced that secret since


def decide_enrol(token: EnrolmentToken | None, *, enrolled: EnrolledAgent | None, now: datetime) -> str:
    """``retry`` (the agent already has a live device from this token) or ``new``; else refused.

    A retry needs a token that is neither revoked nor expired, but does not need a use left: the
    use was counted by the first enrolment. It is refused once ``ENROL_RETRY_WINDOW`` has passed
    since the first enrolment, or when the device's secret was revoked since: the token and agent id
    (say, from a stolen SD card) must not undo an operator's revocation.
    """
    if token is None or token.state(now) in ("revoked", "expired"):
        raise invalid_token()
    if enrolled is not None:
        if enrolled.credential_revoked or now - enrolled.first_enrolled_at > ENROL_RETRY_WINDOW:
            raise invalid_token()
        return "retry"
    if token.state(now) == "used_up":
        raise invalid_token()
    return "new"


def decide_token_used(
    token: EnrolmentToken, *, device_id: str, agent_sha256: str
) -> tuple[EnrolmentToken, list[Event]]:
    """Count one use of a token for a newly enrolled device."""
    used = dataclasses.replace(token, uses=token.uses + 1)
    event = EnrolmentTokenUsed(
        token_id=token.token_id,
        workspace_id=token.workspace_id,
        device_id=device_id,
        agent_sha256=agent_sha256,
        uses=used.uses,
    )
    return used, [event]


def decide_rotate(
    device_id: str, workspace_id: str, credential: InitialCredential, *, replaces: list[str], by: str
) -> list[Event]:
    """Give a device a fresh credential; ``replaces`` stop working everywhere."""
    return [
        CredentialRotated(
            device_id=device_id,
            workspace_id=workspace_id,
            credential_id=credential.credential_id,
            kind=credential.kind,
            secret_sha256=credential.secret_sha256,
            replaces=[c for c in dict.fromkeys(replaces) if c != credential.credential_id],
            by=by,
        )
    ]


def bulk_names(prefix: str, count: int, start: int = 1) -> list[str]:
    """``<prefix>-00001`` ... (``start`` first; five digits at least, so names sort as numbered)."""
    return [f"{prefix}-{n:05d}" for n in range(start, start + count)]
