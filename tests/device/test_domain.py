"""The pure registry rules (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.events.schemas.device import DeviceDeleted, DeviceRegistered, DeviceUpdated, InitialCredential
from services.device.domain import (
    Device,
    DevicePatch,
    DomainError,
    NewDevice,
    Site,
    check_site,
    decide_delete,
    decide_register,
    decide_update,
    parse,
    patch_fields,
)

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def device(**over) -> Device:
    base = dict(
        device_id="d1",
        workspace_id="ws",
        name="n",
        device_type="esp32",
        site_id=None,
        groups=[],
        labels={},
        metadata={},
        disabled=False,
        created_at=NOW,
        updated_at=NOW,
    )
    return Device(**{**base, **over})


def test_register_carries_hashes_and_refuses_taken_ids():
    cred = InitialCredential(credential_id="c", kind="api_key", secret_sha256="h")
    [event] = decide_register(device(), taken=False, credentials=[cred], by="enrolment")
    assert isinstance(event, DeviceRegistered) and event.credentials == [cred] and event.by == "enrolment"
    with pytest.raises(DomainError) as exc:
        decide_register(device(), taken=True, credentials=[], by="op")
    assert exc.value.kind == "conflict"


def test_update_emits_only_real_changes():
    later = NOW + timedelta(seconds=1)
    same, events = decide_update(device(), {"name": "n"}, by="op", now=later)
    assert events == [] and same.updated_at == NOW
    changed, [event] = decide_update(device(), {"name": "m", "disabled": True}, by="op", now=later)
    assert isinstance(event, DeviceUpdated) and event.changes == {"name": "m", "disabled": True}
    assert changed.updated_at == later and changed.name == "m"


def test_delete_and_site_rules():
    [event] = decide_delete(device(), by="op")
    assert isinstance(event, DeviceDeleted)
    site = Site("s", "other", "S", None, None, NOW)
    with pytest.raises(DomainError):
        check_site("s", site, "ws")
    with pytest.raises(DomainError):
        check_site("s", None, "ws")
    check_site(None, None, "ws")
    check_site("s", site, "other")


def test_parse_defaults_and_patch_fields():
    cmd = parse(NewDevice, {"name": "n", "device_type": "custom_type_2", "ignored": True})
    assert cmd.credentials == ["secret"] and cmd.metadata == {}
    assert patch_fields(parse(DevicePatch, {"site_id": None})) == {"site_id": None}
    assert patch_fields(parse(DevicePatch, {})) == {}
    for bad in ([], "x", {"name": "n", "device_type": "x", "metadata": {"a": "\x00"}}):
        with pytest.raises(DomainError):
            parse(NewDevice, bad)
