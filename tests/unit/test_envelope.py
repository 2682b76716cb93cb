"""Envelope encoding: round trips, undecodable input, unknown types."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from libs.events.envelope import (
    UndecodableEntry,
    UnknownEventType,
    decode_entry,
    decode_event,
    entry_fields,
    new_envelope,
    to_jsonable,
)
from libs.events.publisher import dlq_stream
from libs.events.schemas import REGISTRY, build_registry
from libs.events.schemas.device import DeviceRegistered
from libs.events.schemas.telemetry import HeartbeatReceived


def test_round_trip_through_stream_fields() -> None:
    ev = HeartbeatReceived(
        device_id="d1",
        workspace_id="w",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        seq=7,
        metrics={"cpu": 1.5, "label": "x"},
    )
    env = new_envelope(ev, producer="telemetry", correlation_id="c")
    fields = entry_fields(env)
    assert fields[b"type"] == b"telemetry.heartbeat.v1"
    back = decode_entry(fields)
    assert back == env
    assert back.device_id == "d1"  # lifted from the event for filtering
    assert decode_event(back, REGISTRY) == ev
    assert to_jsonable(back)["data"]["seq"] == 7


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"id": 1}', b"\xff\xfe"])
def test_malformed_envelopes_are_undecodable(raw: bytes) -> None:
    with pytest.raises(UndecodableEntry):
        decode_entry({b"type": b"x", b"envelope": raw})
    with pytest.raises(UndecodableEntry):
        decode_entry({b"type": b"x"})


def test_unknown_type_and_bad_data() -> None:
    env = new_envelope(
        DeviceRegistered(device_id="d", workspace_id="w", name="n", device_type="t"), producer="p"
    )
    with pytest.raises(UnknownEventType):
        decode_event(msgspec.structs.replace(env, type="device.nope.v1"), REGISTRY)
    bad = msgspec.structs.replace(env, data=msgspec.Raw(b'{"type":"device.registered.v1","name":1}'))
    with pytest.raises(UndecodableEntry):
        decode_event(bad, REGISTRY)


def test_registry_rejects_duplicate_tags() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        build_registry((DeviceRegistered,), (DeviceRegistered,))


def test_dlq_names_keep_the_prefix() -> None:
    assert dlq_stream("events:device") == "dlq:events:device"
    assert dlq_stream("t1:events:device", "t1:") == "t1:dlq:events:device"


def test_ids_are_uuid7_and_time_ordered() -> None:
    import time
    import uuid

    from libs.events.envelope import new_id

    first = new_id()
    time.sleep(0.002)
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert all(first < i for i in ids)  # a later millisecond sorts after
    assert abs(int(ids[0][:8] + ids[0][9:13], 16) - time.time() * 1000) < 5000
