"""Signed tokens, secrets and the identity index (pure)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from libs.events.identity import Claims, IdentityIndex, Signer, TokenError, new_secret, secret_hash
from libs.events.schemas import auth as A
from libs.events.schemas import device as D

KEY = "k" * 40


def claims(**kw: object) -> Claims:
    base: dict[str, object] = dict(
        typ="device", sub="d1", ws="w1", iat=time.time(), exp=int(time.time()) + 60, jti="s1", cid="c1"
    )
    base.update(kw)
    return Claims(**base)  # type: ignore[arg-type]


def test_round_trip_and_tampering() -> None:
    signer = Signer(KEY)
    token = signer.issue(claims())
    assert signer.verify(token, now=time.time()).sub == "d1"
    head, kid, _body, sig = token.split(".")
    forged_body = Signer(KEY).issue(claims(sub="d2")).split(".")[2]
    for bad in (
        f"{head}.{kid}.{forged_body}.{sig}",
        token[:-2] + "xx",
        "",
        "a.b.c",
        "x" * 5000,
        Signer("z" * 40).issue(claims()),
        token.replace("fs1", "fs2", 1),
    ):
        with pytest.raises(TokenError):
            signer.verify(bad, now=time.time())


def test_expiry() -> None:
    signer = Signer(KEY)
    token = signer.issue(claims(exp=100))
    with pytest.raises(TokenError):
        signer.verify(token, now=100)
    assert signer.verify(token, now=99.9).exp == 100


def test_remembered_tokens_still_expire_and_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import libs.events.identity as identity

    monkeypatch.setattr(identity, "VERIFIED_CACHE", 3)
    signer = Signer(KEY)
    token = signer.issue(claims(exp=100))
    assert signer.verify(token, now=50).exp == 100  # checked, then remembered
    with pytest.raises(TokenError, match="expired"):
        signer.verify(token, now=100)  # remembered, but expiry is checked on every use
    tokens = [signer.issue(claims(sub=f"d{i}")) for i in range(5)]
    for t in tokens:
        signer.verify(t, now=time.time())
    assert len(signer._verified) == 3 and tokens[-1] in signer._verified and token not in signer._verified
    bad = tokens[0][:-2] + "xx"
    for _ in range(2):  # a forged token is never remembered
        with pytest.raises(TokenError):
            signer.verify(bad, now=time.time())
    assert bad not in signer._verified


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        Signer("short")


def test_secrets_are_256_bit_hex_and_hashed() -> None:
    s = new_secret()
    assert len(s) == 64 and int(s, 16) >= 0
    assert secret_hash(s) != s and len(secret_hash(s)) == 64
    assert new_secret() != s


def registered(secret: str, kind: str = "api_key", device: str = "d1") -> D.DeviceRegistered:
    return D.DeviceRegistered(
        device_id=device,
        workspace_id="w1",
        name="n",
        device_type="virtual",
        credentials=[
            D.InitialCredential(
                credential_id=f"c-{device}-{kind}", kind=kind, secret_sha256=secret_hash(secret)
            )
        ],
    )


def test_index_credentials_rotation_and_revocation() -> None:
    ix = IdentityIndex()
    old, new = new_secret(), new_secret()
    ix.apply(registered(old))
    assert ix.devices == {"d1": "w1"}
    cred = ix.credential(old, "api_key", "d1")
    assert cred is not None and cred.credential_id == "c-d1-api_key"
    assert ix.credential(old, "secret") is None  # wrong kind
    assert ix.credential(old, "api_key", "d2") is None  # another device's header
    ix.apply(
        A.CredentialIssued(
            credential_id="c2",
            device_id="d1",
            workspace_id="w1",
            kind="api_key",
            secret_sha256=secret_hash(new),
            replaces="c-d1-api_key",
        )
    )
    assert ix.credential(old, "api_key") is None
    assert ix.credential(new, "api_key") is not None
    ix.apply(A.CredentialRevoked(credential_id="c2", device_id="d1", workspace_id="w1", kind="api_key"))
    assert ix.credential(new, "api_key") is None


def test_sessions_die_with_their_credential_device_or_logout() -> None:
    ix = IdentityIndex()
    ix.apply(registered("s", kind="secret"))
    session = claims(cid="c-d1-secret")
    ix.check(session)
    ix.apply(D.DeviceUpdated(device_id="d1", workspace_id="w1", changes={"disabled": True}))
    with pytest.raises(TokenError):
        ix.check(session)
    ix.apply(D.DeviceUpdated(device_id="d1", workspace_id="w1", changes={"disabled": False}))
    ix.check(session)
    ix.apply(
        A.CredentialRevoked(credential_id="c-d1-secret", device_id="d1", workspace_id="w1", kind="secret")
    )
    with pytest.raises(TokenError):
        ix.check(session)
    op = claims(typ="operator", sub="op1", cid=None, jti="j1", roles={"w1": "owner"})
    ix.check(op)
    ix.apply(
        A.OperatorLoggedOut(
            operator_id="op1",
            workspace_id="w1",
            session_id="j1",
            expires_at=datetime.fromtimestamp(time.time() + 60, UTC),
        )
    )
    with pytest.raises(TokenError):
        ix.check(op)
    ix.prune(time.time() + 120)
    assert ix.revoked_sessions == {}


def test_password_change_revokes_older_sessions_only() -> None:
    ix = IdentityIndex()
    before = claims(typ="operator", sub="op1", iat=1000.0, cid=None)
    ix.apply(A.PasswordChanged(operator_id="op1", workspace_id="w1", at=datetime.fromtimestamp(1000.5, UTC)))
    with pytest.raises(TokenError):
        ix.check(before)
    ix.check(claims(typ="operator", sub="op1", iat=1000.6, cid=None))  # logged in again right after


def test_deleted_devices_and_open_enrolment() -> None:
    ix = IdentityIndex()
    ix.apply(A.WorkspaceCreated(workspace_id="w1", name="a", open_enrolment=True))
    ix.apply(A.WorkspaceUpdated(workspace_id="w2", changes={"open_enrolment": False}))
    assert ix.open_enrolment == {"w1": True, "w2": False}
    ix.apply(registered("s"))
    ix.apply(D.DeviceDeleted(device_id="d1", workspace_id="w1"))
    assert ix.credential("s", "api_key") is None and "d1" not in ix.devices
    with pytest.raises(TokenError):
        ix.check(claims())


def test_flags_follow_occurrence_not_stream_order() -> None:
    ix = IdentityIndex()
    ix.apply(D.DeviceUpdated(device_id="d1", workspace_id="w1", changes={"disabled": True}), at=20.0)
    ix.apply(D.DeviceUpdated(device_id="d1", workspace_id="w1", changes={"disabled": False}), at=10.0)
    assert "d1" in ix.disabled_devices  # the older "enable" arrived late and changes nothing
    ix.apply(A.WorkspaceUpdated(workspace_id="w1", changes={"open_enrolment": False}), at=30.0)
    ix.apply(A.WorkspaceCreated(workspace_id="w1", name="a", open_enrolment=True), at=5.0)
    assert ix.open_enrolment == {"w1": False}


def test_a_registration_seen_after_its_deletion_revives_nothing() -> None:
    ix = IdentityIndex()
    ix.apply(D.DeviceDeleted(device_id="d1", workspace_id="w1"))
    ix.apply(registered("s"))
    assert ix.credential("s", "api_key") is None and "d1" not in ix.devices


def test_a_rotation_by_the_registry_replaces_the_old_secret() -> None:
    ix = IdentityIndex()
    old, new = new_secret(), new_secret()
    ix.apply(registered(old, kind="secret"))

    def rotated(device_id: str = "d1") -> D.CredentialRotated:
        return D.CredentialRotated(
            device_id=device_id,
            workspace_id="w1",
            credential_id="c2",
            kind="secret",
            secret_sha256=secret_hash(new),
            replaces=["c-d1-secret"],
        )

    ix.apply(rotated())
    assert ix.credential(old, "secret", "d1") is None
    cred = ix.credential(new, "secret", "d1")
    assert cred is not None and cred.credential_id == "c2"
    with pytest.raises(TokenError):  # sessions opened with the old secret die with it
        ix.check(claims(cid="c-d1-secret"))
    # a rotation seen after the device's deletion revives nothing
    gone = IdentityIndex()
    gone.apply(D.DeviceDeleted(device_id="d1", workspace_id="w1"))
    gone.apply(rotated())
    assert gone.credential(new, "secret") is None
