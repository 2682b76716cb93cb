"""Events published by the auth service on ``events:auth``.

``by`` names who acted: an operator id, ``device:<id>``, or ``system`` (bootstrap, seeding).
"""

from __future__ import annotations

from datetime import datetime

from .base import Event


class WorkspaceCreated(Event, frozen=True, tag="auth.workspace_created.v1"):
    """A tenant came into being."""

    workspace_id: str
    name: str
    open_enrolment: bool = False
    by: str = "system"


class WorkspaceUpdated(Event, frozen=True, tag="auth.workspace_updated.v1"):
    """A workspace's settings changed (``name``, ``open_enrolment``)."""

    workspace_id: str
    changes: dict[str, str | bool]
    by: str = "system"


class OperatorAdded(Event, frozen=True, tag="auth.operator_added.v1"):
    """A person joined a workspace with a role (owner, operator, viewer)."""

    operator_id: str
    workspace_id: str
    email: str
    role: str
    by: str = "system"


class OperatorRoleChanged(Event, frozen=True, tag="auth.operator_role_changed.v1"):
    """An operator's role in a workspace changed; sessions issued before ``at`` stop working."""

    operator_id: str
    workspace_id: str
    role: str
    at: datetime
    by: str = "system"


class OperatorRemoved(Event, frozen=True, tag="auth.operator_removed.v1"):
    """An operator left a workspace; sessions issued before ``at`` stop working."""

    operator_id: str
    workspace_id: str
    at: datetime
    by: str = "system"


class OperatorLoggedIn(Event, frozen=True, tag="auth.operator_logged_in.v1"):
    """An operator opened a session (for the audit log; the token itself is never published)."""

    operator_id: str
    workspace_id: str
    session_id: str
    expires_at: datetime
    client: str = ""


class OperatorLoggedOut(Event, frozen=True, tag="auth.operator_logged_out.v1"):
    """An operator closed a session: its id is revoked until it would have expired."""

    operator_id: str
    workspace_id: str
    session_id: str
    expires_at: datetime


class PasswordChanged(Event, frozen=True, tag="auth.password_changed.v1"):
    """An operator's password changed; every session issued before ``at`` stops working."""

    operator_id: str
    workspace_id: str
    at: datetime
    by: str = "system"


class CredentialIssued(Event, frozen=True, tag="auth.credential_issued.v1"):
    """A device credential was minted or rotated; only its SHA-256 travels, never the secret.

    ``kind`` is ``secret`` (dialect S), ``api_key`` (dialect K) or ``token`` (dialect W).
    ``replaces`` names the credential a rotation retired (revoked by the same decision).
    """

    credential_id: str
    device_id: str
    workspace_id: str
    kind: str
    secret_sha256: str
    replaces: str | None = None
    by: str = "system"


class CredentialRevoked(Event, frozen=True, tag="auth.credential_revoked.v1"):
    """A device credential stopped working, with every session it opened."""

    credential_id: str
    device_id: str
    workspace_id: str
    kind: str
    reason: str = "revoked"
    by: str = "system"


EVENTS: tuple[type[Event], ...] = (
    WorkspaceCreated,
    WorkspaceUpdated,
    OperatorAdded,
    OperatorRoleChanged,
    OperatorRemoved,
    OperatorLoggedIn,
    OperatorLoggedOut,
    PasswordChanged,
    CredentialIssued,
    CredentialRevoked,
)
