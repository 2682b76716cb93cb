"""Pure rules of the auth service: input rules, roles, decisions and the audit mapping.

No I/O and no clock: ids, hashes and ``now`` are passed in, events come out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from libs.events.identity import SECRET_KINDS, Claims
from libs.events.schemas import Event, tag_of
from libs.events.schemas import auth as A
from libs.events.schemas import device as D

ROLES = ("owner", "operator", "viewer")
WRITERS = ("owner", "operator")
MANAGERS = ("owner",)
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
MAX_EMAIL, MAX_NAME = 254, 100


class DomainError(Exception):
    """A refused command, with a machine-readable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Invalid(DomainError):
    """The input breaks a rule (bad request)."""


class NotFound(DomainError):
    """The thing does not exist for this caller (never says whether it exists elsewhere)."""


class Conflict(DomainError):
    """The command contradicts the current state."""


class Forbidden(DomainError):
    """The caller may not do this."""


class Unauthorized(DomainError):
    """Wrong credentials (the same answer whatever was wrong)."""


class RateLimited(DomainError):
    """Too many attempts; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("RATE_LIMITED", "too many attempts; retry later")
        self.retry_after = retry_after


def _printable(text: str) -> bool:
    return all(ch.isprintable() for ch in text)


def normalize_email(raw: str) -> str:
    """The lower-cased, stripped email; Invalid unless it loosely looks like one."""
    email = raw.strip().lower()
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or len(email) > MAX_EMAIL:
        raise Invalid("INVALID_EMAIL", "email must look like name@domain (at most 254 characters)")
    if not _printable(email) or any(ch.isspace() for ch in email):
        raise Invalid("INVALID_EMAIL", "email must not contain spaces or control characters")
    return email


def check_password(password: str, field: str = "password") -> str:
    """The password if its length is acceptable (8 to 1024 characters)."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise Invalid("WEAK_PASSWORD", f"{field} must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def clean_name(raw: str, field: str = "name") -> str:
    """A stripped display name of 1 to 100 printable characters."""
    name = raw.strip()
    if not 1 <= len(name) <= MAX_NAME or not _printable(name):
        raise Invalid("INVALID_NAME", f"{field} must be 1 to {MAX_NAME} printable characters")
    return name


def check_role(role: str) -> str:
    """The role if it is one of owner, operator, viewer."""
    if role not in ROLES:
        raise Invalid("INVALID_ROLE", f"role must be one of {', '.join(ROLES)}")
    return role


def check_kind(kind: str) -> str:
    """The credential kind if known (secret, api_key, token)."""
    if kind not in SECRET_KINDS:
        raise Invalid("INVALID_KIND", f"kind must be one of {', '.join(SECRET_KINDS)}")
    return kind


@dataclass(frozen=True)
class Member:
    """One operator's role in a workspace."""

    operator_id: str
    role: str


@dataclass(frozen=True)
class Workspace:
    """The settings of a workspace that decisions look at."""

    workspace_id: str
    name: str
    open_enrolment: bool


def decide_bootstrap(
    *, operators_exist: bool, workspace_id: str, operator_id: str, email: str, name: str, open_enrolment: bool
) -> list[Event]:
    """The first workspace and its owner, only while no operator exists."""
    if operators_exist:
        raise Conflict("ALREADY_BOOTSTRAPPED", "the platform already has operators; log in instead")
    return decide_create_workspace(
        workspace_id=workspace_id,
        name=name,
        open_enrolment=open_enrolment,
        operator_id=operator_id,
        email=email,
        by="system",
    )


def decide_create_workspace(
    *, workspace_id: str, name: str, open_enrolment: bool, operator_id: str, email: str, by: str
) -> list[Event]:
    """A new workspace whose creator is its owner."""
    return [
        A.WorkspaceCreated(workspace_id=workspace_id, name=name, open_enrolment=open_enrolment, by=by),
        A.OperatorAdded(operator_id=operator_id, workspace_id=workspace_id, email=email, role="owner", by=by),
    ]


def decide_update_workspace(
    current: Workspace, *, name: str | None, open_enrolment: bool | None, by: str
) -> list[Event]:
    """A WorkspaceUpdated with the fields that really change (none: no event)."""
    changes: dict[str, str | bool] = {}
    if name is not None and name != current.name:
        changes["name"] = name
    if open_enrolment is not None and open_enrolment != current.open_enrolment:
        changes["open_enrolment"] = open_enrolment
    if not changes:
        return []
    return [A.WorkspaceUpdated(workspace_id=current.workspace_id, changes=changes, by=by)]


def _find(members: Sequence[Member], operator_id: str) -> Member:
    for m in members:
        if m.operator_id == operator_id:
            return m
    raise NotFound("NOT_FOUND", "operator not found")


def _owners(members: Sequence[Member]) -> int:
    return sum(1 for m in members if m.role == "owner")


def decide_add_member(
    members: Sequence[Member], *, operator_id: str, workspace_id: str, email: str, role: str, by: str
) -> list[Event]:
    """Add an operator to a workspace unless already a member."""
    if any(m.operator_id == operator_id for m in members):
        raise Conflict("ALREADY_MEMBER", "this operator is already a member of the workspace")
    return [
        A.OperatorAdded(operator_id=operator_id, workspace_id=workspace_id, email=email, role=role, by=by)
    ]


def decide_change_role(
    members: Sequence[Member], *, operator_id: str, workspace_id: str, role: str, by: str, now: datetime
) -> list[Event]:
    """Change a member's role; the last owner cannot stop being one."""
    target = _find(members, operator_id)
    if target.role == role:
        return []
    if target.role == "owner" and _owners(members) == 1:
        raise Conflict("LAST_OWNER", "a workspace needs at least one owner")
    return [
        A.OperatorRoleChanged(operator_id=operator_id, workspace_id=workspace_id, role=role, at=now, by=by)
    ]


def decide_remove_member(
    members: Sequence[Member], *, operator_id: str, workspace_id: str, by: str, now: datetime
) -> list[Event]:
    """Remove a member; the last owner cannot be removed."""
    target = _find(members, operator_id)
    if target.role == "owner" and _owners(members) == 1:
        raise Conflict("LAST_OWNER", "a workspace needs at least one owner")
    return [A.OperatorRemoved(operator_id=operator_id, workspace_id=workspace_id, at=now, by=by)]


def decide_issue_credential(
    live: Sequence[str],
    *,
    credential_id: str,
    device_id: str,
    workspace_id: str,
    kind: str,
    secret_sha256: str,
    by: str,
) -> list[Event]:
    """Mint a credential that replaces the live one of its kind (extra live ones are revoked)."""
    extra = [_revoked(c, device_id, workspace_id, kind, "rotated", by) for c in live[1:]]
    issued = A.CredentialIssued(
        credential_id=credential_id,
        device_id=device_id,
        workspace_id=workspace_id,
        kind=kind,
        secret_sha256=secret_sha256,
        replaces=live[0] if live else None,
        by=by,
    )
    return [*extra, issued]


def decide_revoke_credentials(
    live: Sequence[str], *, device_id: str, workspace_id: str, kind: str, by: str
) -> list[Event]:
    """Revoke every live credential of a kind (none live: nothing to do)."""
    return [_revoked(c, device_id, workspace_id, kind, "revoked", by) for c in live]


def _revoked(cid: str, device_id: str, workspace_id: str, kind: str, reason: str, by: str) -> Event:
    return A.CredentialRevoked(
        credential_id=cid, device_id=device_id, workspace_id=workspace_id, kind=kind, reason=reason, by=by
    )


def choose_workspace(memberships: Mapping[str, str], requested: str | None) -> tuple[str, str]:
    """The login workspace and role: the requested one, else the first membership."""
    if requested is not None:
        if requested not in memberships:
            raise NotFound("NOT_FOUND", "workspace not found")
        return requested, memberships[requested]
    if not memberships:
        raise Forbidden("NO_WORKSPACE", "this operator belongs to no workspace")
    first = next(iter(memberships))
    return first, memberships[first]


def operator_claims(
    *, operator_id: str, workspace_id: str, roles: Mapping[str, str], now: float, ttl_s: int, jti: str
) -> Claims:
    """The claims of an operator session."""
    return Claims(
        typ="operator",
        sub=operator_id,
        ws=workspace_id,
        iat=now,
        exp=int(now) + ttl_s,
        jti=jti,
        roles=dict(roles),
    )


def device_claims(
    *, device_id: str, workspace_id: str, credential_id: str, now: float, ttl_s: int, jti: str
) -> Claims:
    """The claims of a device session opened with a credential."""
    return Claims(
        typ="device",
        sub=device_id,
        ws=workspace_id,
        cid=credential_id,
        iat=now,
        exp=int(now) + ttl_s,
        jti=jti,
    )


# ---- audit -------------------------------------------------------------------------------------

AUDITED: frozenset[str] = frozenset(
    tag_of(c) for c in (*A.EVENTS, *D.EVENTS) if c is not D.DeviceStatusChanged
)
_SUBJECT_KEYS = ("credential_id", "device_id", "operator_id", "token_id", "site_id", "workspace_id")
# Never copied into details: hashes of secrets, and fields the entry already has.
_DROP = frozenset({"type", "by", "workspace_id", "secret_sha256", "credentials"})


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    workspace_id: str
    actor: str
    action: str
    subject: str
    details: dict[str, Any]


def audit_entry(event: Event) -> AuditEntry | None:
    """The audit line of an event, or None for events that are not operator actions."""
    tag = tag_of(type(event))
    if tag not in AUDITED:
        return None
    fields: dict[str, Any] = msgspec.to_builtins(event)
    subject_key = next(k for k in _SUBJECT_KEYS if fields.get(k))
    actor = fields.get("by") or fields.get("operator_id") or "system"
    details = {
        k: v for k, v in fields.items() if k not in _DROP and not k.endswith("_sha256") and k != subject_key
    }
    if isinstance(event, D.DeviceRegistered):
        details["credentials"] = [
            {"credential_id": c.credential_id, "kind": c.kind} for c in event.credentials
        ]
    return AuditEntry(
        workspace_id=str(fields["workspace_id"]),
        actor=str(actor),
        action=tag.rsplit(".", 1)[0],
        subject=str(fields[subject_key]),
        details=details,
    )
