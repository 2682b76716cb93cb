"""Identity every service checks locally (DESIGN.md §5): signed tokens, secrets, and the index of
credentials and revocations built from ``events:auth`` and ``events:device``.

Pure: standard library and msgspec only; the feed that keeps an index current is ``identity_feed``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from .schemas import Event
from .schemas import auth as A
from .schemas import device as D

TOKEN_VERSION = "fs1"  # noqa: S105 - a format tag, not a secret
MAX_TOKEN_LENGTH = 8192  # an operator token lists its workspaces: ~120 fit
SECRET_KINDS = ("secret", "api_key", "token")


class TokenError(Exception):
    """A token is malformed, forged, expired or revoked (answer 401; never say which)."""


class Claims(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a session token asserts: a device (``cid`` = its credential) or an operator (``roles``)."""

    typ: Literal["device", "operator"]
    sub: str
    ws: str
    iat: float  # seconds, with fractions: a session opened just after a revocation must survive it
    exp: int
    jti: str
    cid: str | None = None
    roles: dict[str, str] = {}


_claims_encoder = msgspec.json.Encoder()
_claims_decoder = msgspec.json.Decoder(Claims)


# Well-signed tokens a Signer remembers (about 1 KB each at most): one per device session in use.
VERIFIED_CACHE = 20_000


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Issues and verifies ``fs1.<kid>.<claims>.<hmac>`` tokens with the platform's signing key."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 32:
            raise ValueError("the signing key must be at least 32 characters")
        self._key = hashlib.sha256(b"fleet-token-v1\x00" + secret.encode()).digest()
        self.kid = hashlib.sha256(self._key).hexdigest()[:8]
        self._verified: dict[str, Claims] = {}

    def _mac(self, head: str) -> bytes:
        return hmac.new(self._key, head.encode(), hashlib.sha256).digest()

    def issue(self, claims: Claims) -> str:
        """A signed token carrying ``claims``."""
        head = f"{TOKEN_VERSION}.{self.kid}.{_b64e(_claims_encoder.encode(claims))}"
        return f"{head}.{_b64e(self._mac(head))}"

    def verify(self, token: str, *, now: float) -> Claims:
        """The claims of a well-signed, unexpired token; TokenError otherwise.

        Tokens whose signature checked out are remembered (up to ``VERIFIED_CACHE``, oldest first
        out), so a device heartbeating with the same session skips the HMAC and the decoding; expiry
        is checked on every use, and revocation is the index's business (checked by the caller).
        """
        claims = self._verified.get(token)
        if claims is None:
            claims = self._check(token)
            if len(self._verified) >= VERIFIED_CACHE:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = claims
        if claims.exp <= now:
            raise TokenError("expired")
        return claims

    def _check(self, token: str) -> Claims:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("malformed")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != TOKEN_VERSION or parts[1] != self.kid:
            raise TokenError("malformed")
        try:
            signature = _b64d(parts[3])
        except (ValueError, TypeError):
            raise TokenError("malformed") from None
        if not hmac.compare_digest(self._mac(".".join(parts[:3])), signature):
            raise TokenError("bad signature")
        try:
            claims = _claims_decoder.decode(_b64d(parts[2]))
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            raise TokenError("malformed") from None
        return claims


def new_secret() -> str:
    """A server-minted secret: 256 random bits as 64 hex characters."""
    return secrets.token_hex(32)


def secret_hash(secret: str) -> str:
    """The SHA-256 (hex) under which a secret is stored and announced."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    """Constant-time comparison of two hashes."""
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True, slots=True)
class Credential:
    """A device credential as every verifier knows it (no secret, only where it belongs)."""

    credential_id: str
    device_id: str
    workspace_id: str
    kind: str
    secret_sha256: str


@dataclass
class IdentityIndex:
    """Credentials, revocations, device ownership and enrolment settings, folded from events.

    ``devices`` maps each registered device to its workspace; ``open_enrolment`` each workspace to
    whether unauthenticated devices may register themselves.
    """

    by_hash: dict[str, Credential] = field(default_factory=dict)
    by_id: dict[str, Credential] = field(default_factory=dict)
    revoked_credentials: set[str] = field(default_factory=set)
    revoked_sessions: dict[str, float] = field(default_factory=dict)
    revoked_before: dict[str, float] = field(default_factory=dict)
    disabled_devices: set[str] = field(default_factory=set)
    deleted_devices: set[str] = field(default_factory=set)
    devices: dict[str, str] = field(default_factory=dict)
    open_enrolment: dict[str, bool] = field(default_factory=dict)
    applied: int = 0
    # when each last-writer-wins flag was last set (stream order may differ from commit order)
    flag_times: dict[str, float] = field(default_factory=dict)

    def apply(self, event: Event, at: float | None = None) -> None:
        """Fold one event in; ``at`` (its occurred_at) orders flags that a later event may reset."""
        handler = _APPLY.get(type(event))
        if handler is not None:
            handler(self, event, float("inf") if at is None else at)
            self.applied += 1

    def newer(self, key: str, at: float) -> bool:
        """Whether a flag change at ``at`` is newer than the last one applied to ``key``."""
        if at < self.flag_times.get(key, float("-inf")):
            return False
        self.flag_times[key] = at
        return True

    def match(self, secret: str, kind: str, device_id: str | None = None) -> Credential | None:
        """The unrevoked credential of this kind (and device) matching ``secret``, disabled or not.

        Lets a caller tell a wrong secret (401) from a disabled device (403).
        """
        digest = secret_hash(secret)
        cred = self.by_hash.get(digest)
        if cred is None or not same_hash(cred.secret_sha256, digest) or cred.kind != kind:
            return None
        if device_id is not None and cred.device_id != device_id:
            return None
        if cred.credential_id in self.revoked_credentials or cred.device_id in self.deleted_devices:
            return None
        return cred

    def credential(self, secret: str, kind: str, device_id: str | None = None) -> Credential | None:
        """The usable credential of this kind (and device) matching ``secret``, else None."""
        cred = self.match(secret, kind, device_id)
        return cred if cred is not None and self.credential_usable(cred) else None

    def live(self, device_id: str, kind: str) -> list[Credential]:
        """A device's unrevoked credentials of one kind."""
        return [
            c
            for c in self.by_id.values()
            if c.device_id == device_id and c.kind == kind and c.credential_id not in self.revoked_credentials
        ]

    def credential_usable(self, cred: Credential) -> bool:
        """Not revoked, and its device neither deleted nor disabled."""
        return (
            cred.credential_id not in self.revoked_credentials
            and cred.device_id not in self.deleted_devices
            and cred.device_id not in self.disabled_devices
        )

    def check(self, claims: Claims) -> None:
        """Raise TokenError if the session was revoked (logout, credential, device, membership)."""
        if claims.jti in self.revoked_sessions:
            raise TokenError("revoked")
        if claims.iat < self.revoked_before.get(claims.sub, float("-inf")):
            raise TokenError("revoked")
        if claims.typ == "device":
            if claims.cid is not None and claims.cid in self.revoked_credentials:
                raise TokenError("revoked")
            if claims.sub in self.deleted_devices or claims.sub in self.disabled_devices:
                raise TokenError("revoked")

    def prune(self, now: float) -> None:
        """Forget revoked sessions that have expired anyway."""
        self.revoked_sessions = {k: v for k, v in self.revoked_sessions.items() if v > now}


def _issued(ix: IdentityIndex, cred: Credential) -> None:
    ix.by_hash[cred.secret_sha256] = cred
    ix.by_id[cred.credential_id] = cred


def _on_credential_issued(ix: IdentityIndex, e: A.CredentialIssued, _at: float) -> None:
    _issued(ix, Credential(e.credential_id, e.device_id, e.workspace_id, e.kind, e.secret_sha256))
    if e.replaces:
        ix.revoked_credentials.add(e.replaces)


def _on_credential_revoked(ix: IdentityIndex, e: A.CredentialRevoked, _at: float) -> None:
    ix.revoked_credentials.add(e.credential_id)


def _on_registered(ix: IdentityIndex, e: D.DeviceRegistered, _at: float) -> None:
    if e.device_id in ix.deleted_devices:
        return  # ids are never reused: a registration seen after its deletion changes nothing
    ix.devices[e.device_id] = e.workspace_id
    for c in e.credentials:
        _issued(ix, Credential(c.credential_id, e.device_id, e.workspace_id, c.kind, c.secret_sha256))


def _on_rotated(ix: IdentityIndex, e: D.CredentialRotated, _at: float) -> None:
    if e.device_id in ix.deleted_devices:
        return  # a deleted device's credentials never come back
    _issued(ix, Credential(e.credential_id, e.device_id, e.workspace_id, e.kind, e.secret_sha256))
    ix.revoked_credentials.update(e.replaces)


def _on_updated(ix: IdentityIndex, e: D.DeviceUpdated, at: float) -> None:
    if "disabled" in e.changes and ix.newer(f"disabled:{e.device_id}", at):
        (ix.disabled_devices.add if e.changes["disabled"] else ix.disabled_devices.discard)(e.device_id)


def _on_deleted(ix: IdentityIndex, e: D.DeviceDeleted, _at: float) -> None:
    ix.deleted_devices.add(e.device_id)
    # its credentials die with it, so a later device of the same id can never revive them
    ix.revoked_credentials.update(c.credential_id for c in ix.by_id.values() if c.device_id == e.device_id)
    ix.devices.pop(e.device_id, None)


def _on_workspace(ix: IdentityIndex, e: A.WorkspaceCreated | A.WorkspaceUpdated, at: float) -> None:
    flag = e.open_enrolment if isinstance(e, A.WorkspaceCreated) else e.changes.get("open_enrolment")
    if isinstance(flag, bool) and ix.newer(f"enrolment:{e.workspace_id}", at):
        ix.open_enrolment[e.workspace_id] = flag


def _on_logged_out(ix: IdentityIndex, e: A.OperatorLoggedOut, _at: float) -> None:
    ix.revoked_sessions[e.session_id] = e.expires_at.timestamp()


def _revoke_before(ix: IdentityIndex, subject: str, at: float) -> None:
    ix.revoked_before[subject] = max(at, ix.revoked_before.get(subject, float("-inf")))


_APPLY: dict[type[Event], Callable[[IdentityIndex, Any, float], None]] = {
    A.CredentialIssued: _on_credential_issued,
    A.CredentialRevoked: _on_credential_revoked,
    A.OperatorLoggedOut: _on_logged_out,
    A.PasswordChanged: lambda ix, e, _at: _revoke_before(ix, e.operator_id, e.at.timestamp()),
    A.OperatorRemoved: lambda ix, e, _at: _revoke_before(ix, e.operator_id, e.at.timestamp()),
    A.OperatorRoleChanged: lambda ix, e, _at: _revoke_before(ix, e.operator_id, e.at.timestamp()),
    A.WorkspaceCreated: _on_workspace,
    A.WorkspaceUpdated: _on_workspace,
    D.DeviceRegistered: _on_registered,
    D.CredentialRotated: _on_rotated,
    D.DeviceUpdated: _on_updated,
    D.DeviceDeleted: _on_deleted,
}
