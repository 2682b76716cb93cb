"""Pure pieces of the fleet commands: URL masking, argument types, the streams table."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fleet.cli import build_parser
from fleet.config import mask_url
from fleet.replay import entry_id, iso_datetime, record_line
from fleet.streams import as_json, format_table, rows
from fleet.up import display_url
from libs.events.envelope import new_envelope
from libs.events.replay import ReplayRecord
from libs.events.schemas.device import DeviceRegistered
from libs.events.stats import GroupStats, StreamStats


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://fleet:s3cret@db:5432/fleet", "postgresql://fleet:***@db:5432/fleet"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("postgresql://postgres:@/postgres?host=/tmp/x", "postgresql://postgres:@/postgres?host=/tmp/x"),
        ("postgresql://u:p@ss@h/d", "postgresql://u:***@h/d"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_display_url() -> None:
    assert display_url("127.0.0.1", 8080) == "http://127.0.0.1:8080/"
    assert display_url("0.0.0.0", 80) == "http://127.0.0.1:80/"
    assert display_url("::", 80) == "http://[::1]:80/"
    assert display_url("fleet.local", 8080) == "http://fleet.local:8080/"


def test_entry_ids_and_times() -> None:
    assert entry_id("1700000000000-3") == "1700000000000-3"
    assert entry_id("1700000000000") == "1700000000000"
    assert entry_id("-") == "-"
    with pytest.raises(argparse.ArgumentTypeError):
        entry_id("(1700000000000-0")
    assert iso_datetime("2024-05-01T10:00:00") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    plus2 = timezone(timedelta(hours=2))
    assert iso_datetime("2024-05-01T10:00:00+02:00") == datetime(2024, 5, 1, 10, tzinfo=plus2)
    with pytest.raises(argparse.ArgumentTypeError):
        iso_datetime("yesterday")


def test_replay_arguments() -> None:
    args = build_parser().parse_args(
        ["replay", "events:device", "--type", "a.v1", "--type", "b.v1", "--device", "d1", "--from", "5-0"]
    )
    assert (args.stream, args.types, args.device, args.start, args.end) == (
        "events:device",
        ["a.v1", "b.v1"],
        "d1",
        "5-0",
        "+",
    )
    assert not args.follow and args.prefix is None


def test_record_lines() -> None:
    event = DeviceRegistered(device_id="d1", workspace_id="w1", name="one", device_type="pi")
    envelope = new_envelope(event, producer="device")
    line = record_line("events:device", ReplayRecord("p:events:device", "1-0", envelope))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert b'"stream":"events:device"' in line and b'"device_id":"d1"' in line
    broken = record_line("events:device", ReplayRecord("p:events:device", "2-0", None, "bad json"))
    assert broken == b'{"stream":"events:device","entry_id":"2-0","error":"bad json"}\n'


def stats() -> list[StreamStats]:
    groups = [
        GroupStats("p:events:device", "device.presence", 2, 1, 3, "9-0"),
        GroupStats("p:events:device", "gateway.fanout", 1, 0, None, "12-0"),
    ]
    return [
        StreamStats("p:events:device", 12, "1-0", "12-0", groups),
        StreamStats("p:telemetry:heartbeats", 0, None, None, []),
    ]


def test_streams_table() -> None:
    table = format_table(rows(stats(), "p:")).splitlines()
    assert [line.split() for line in table] == [
        ["stream", "length", "group", "consumers", "lag", "pending"],
        ["events:device", "12", "device.presence", "2", "3", "1"],
        ["events:device", "12", "gateway.fanout", "1", "?", "0"],
        ["telemetry:heartbeats", "0", "-", "-", "-", "-"],
    ]
    assert len({len(line) for line in table[:3]}) == 1  # aligned


def test_streams_json() -> None:
    report = as_json(stats(), "p:")
    assert report["prefix"] == "p:"
    first = report["streams"][0]
    assert (first["stream"], first["key"], first["length"]) == ("events:device", "p:events:device", 12)
    assert first["groups"][1] == {
        "group": "gateway.fanout",
        "consumers": 1,
        "lag": None,
        "pending": 0,
        "last_delivered_id": "12-0",
    }


def test_fleet_up_serves_with_the_gateways_websocket_limits() -> None:
    """One uvicorn carries every service in `fleet up`: it must apply the gateway's frame limit."""
    from types import SimpleNamespace

    from fleet.config import CommandError
    from fleet.server import server_options
    from services.auth.main import SPEC as AUTH
    from services.gateway.main import SPEC as GATEWAY

    env = {
        "SIGNING_KEY": "k" * 32,
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
        "GATEWAY_MAX_FRAME_BYTES": "1234",
        "GATEWAY_WS_COMPRESSION": "true",
    }
    hosts = {spec.name: SimpleNamespace(spec=spec, settings=spec.load(env)) for spec in (AUTH, GATEWAY)}
    options = server_options(hosts)  # type: ignore[arg-type]
    assert options["ws_max_size"] == 1234 and options["ws_per_message_deflate"] is True
    assert options["ws_ping_interval"] == 20.0

    other = SimpleNamespace(spec=SimpleNamespace(server=lambda _s: {"ws_max_size": 99}), settings=None)
    with pytest.raises(CommandError, match="ws_max_size"):
        server_options({**hosts, "other": other})  # type: ignore[arg-type]


def test_fleet_up_connections_have_nagle_off() -> None:
    """With Nagle on, a response written in two parts waited ~40 ms for the client's delayed ACK."""
    import socket

    from fleet.up import listen

    server = listen("127.0.0.1", 0)
    try:
        server.listen()
        client = socket.create_connection(server.getsockname()[:2], timeout=5)
        accepted, _ = server.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert accepted.proto == socket.IPPROTO_TCP  # so asyncio sets it too
    finally:
        server.close()
