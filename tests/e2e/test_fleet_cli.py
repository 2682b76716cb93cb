"""``fleet replay``, ``fleet streams`` and ``fleet rebuild`` against the machine's Redis."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from libs.events.publisher import Publisher
from libs.events.schemas.device import DeviceRegistered, DeviceStatusChanged

from .conftest import FLEET, REDIS_URL, as_from_a_terminal, clean_env

STREAM = "events:device"


def fleet_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a fleet command to completion against the test Redis."""
    environ = clean_env(REDIS_URL=REDIS_URL, **env)
    return subprocess.run([*FLEET, *args], env=environ, capture_output=True, text=True, timeout=60)


def json_lines(out: str) -> list[dict[str, Any]]:
    """Each stdout line as JSON."""
    return [json.loads(line) for line in out.splitlines()]


def registered(device: str) -> DeviceRegistered:
    return DeviceRegistered(device_id=device, workspace_id="w1", name=device, device_type="pi")


@pytest.fixture
async def published(r: aioredis.Redis, prefix: str) -> list[str]:
    """Three envelopes and one undecodable entry on ``<prefix>events:device``; their entry ids."""
    pub = Publisher(r, producer="e2e")
    key = prefix + STREAM
    changed = DeviceStatusChanged(
        device_id="d1",
        workspace_id="w1",
        status="online",
        previous="offline",
        reason="first_heartbeat",
        at=datetime.now(UTC),
    )
    ids = [(await pub.publish(key, e))[0] for e in (registered("d1"), registered("d2"), changed)]
    bad = await r.xadd(key, {"type": "device.registered.v1", "envelope": "{not json"})
    return [*ids, bad.decode()]


async def test_replay_prints_every_entry(published: list[str], prefix: str) -> None:
    done = fleet_cli("replay", STREAM, "--prefix", prefix)
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)
    assert [line["entry_id"] for line in lines] == published
    assert {line["stream"] for line in lines} == {STREAM}
    types = [line["envelope"]["type"] for line in lines[:3]]
    assert types == ["device.registered.v1", "device.registered.v1", "device.status_changed.v1"]
    assert lines[0]["envelope"]["data"]["device_id"] == "d1"
    assert lines[0]["envelope"]["producer"] == "e2e"
    assert "envelope" not in lines[3] and lines[3]["error"]


async def test_replay_filters(published: list[str], prefix: str) -> None:
    by_type = json_lines(
        fleet_cli("replay", STREAM, "--prefix", prefix, "--type", "device.status_changed.v1").stdout
    )
    assert [line["entry_id"] for line in by_type] == [published[2]]
    both = fleet_cli(
        "replay",
        STREAM,
        "--prefix",
        prefix,
        "--type",
        "device.status_changed.v1",
        "--type",
        "device.registered.v1",
    )
    assert len(json_lines(both.stdout)) == 4
    by_device = json_lines(fleet_cli("replay", STREAM, "--prefix", prefix, "--device", "d1").stdout)
    decoded = [line for line in by_device if "envelope" in line]
    assert [line["entry_id"] for line in decoded] == [published[0], published[2]]
    # An undecodable entry has no device to filter on: it is always shown.
    assert [line["entry_id"] for line in by_device if "error" in line] == [published[3]]
    since = json_lines(fleet_cli("replay", STREAM, "--prefix", prefix, "--from", published[1]).stdout)
    assert [line["entry_id"] for line in since] == published[1:]
    upto = json_lines(fleet_cli("replay", STREAM, "--prefix", prefix, "--to", published[1]).stdout)
    assert [line["entry_id"] for line in upto] == published[:2]


async def test_replay_prefix_from_env_and_missing_stream(published: list[str], prefix: str) -> None:
    done = fleet_cli("replay", STREAM, STREAM_PREFIX=prefix)
    assert len(json_lines(done.stdout)) == 4
    missing = fleet_cli("replay", "events:nothing", "--prefix", prefix)
    assert missing.returncode == 0 and missing.stdout == ""
    assert "no stream" in missing.stderr
    bad = fleet_cli("replay", STREAM, "--from", "yesterday")
    assert bad.returncode == 2 and "not a stream entry id" in bad.stderr


async def test_replay_follow_until_ctrl_c(published: list[str], prefix: str, r: aioredis.Redis) -> None:
    environ = clean_env(REDIS_URL=REDIS_URL)
    args = [*FLEET, "replay", STREAM, "--prefix", prefix, "--follow"]
    proc = subprocess.Popen(
        args,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_from_a_terminal,
    )
    try:
        assert proc.stdout is not None
        seen = [json.loads(proc.stdout.readline())["entry_id"] for _ in published]
        assert seen == published
        entry_id, _ = await Publisher(r, producer="e2e").publish(prefix + STREAM, registered("d3"))
        assert json.loads(proc.stdout.readline())["entry_id"] == entry_id
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err


async def test_replay_into_a_closed_pipe(r: aioredis.Redis, prefix: str) -> None:
    # Far more output than a pipe buffers, so the writer meets the closed pipe.
    events = [registered(f"d{i}") for i in range(2000)]
    await Publisher(r, producer="e2e").publish_batch(prefix + STREAM, events)
    args = [*FLEET, "replay", STREAM, "--prefix", prefix]
    proc = subprocess.Popen(
        args, env=clean_env(REDIS_URL=REDIS_URL), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["envelope"]["data"]["device_id"] == "d0"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 0
    assert err == ""


async def test_streams_shows_groups(published: list[str], prefix: str, r: aioredis.Redis) -> None:
    key = prefix + STREAM
    await r.xgroup_create(key, "e2e.probe", id="0")
    await r.xreadgroup("e2e.probe", "c1", {key: ">"}, count=1)  # one delivered, not acknowledged
    await r.xadd(prefix + "events:quiet", {"type": "x", "envelope": "{}"})
    done = fleet_cli("streams", "--prefix", prefix, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    streams = {s["stream"]: s for s in report["streams"]}
    assert set(streams) == {STREAM, "events:quiet"}
    assert streams[STREAM]["key"] == key and streams[STREAM]["length"] == 4
    (group,) = streams[STREAM]["groups"]
    assert group["group"] == "e2e.probe" and group["consumers"] == 1 and group["pending"] == 1
    assert group["lag"] in (3, None)  # Redis < 7 reports no lag
    assert streams["events:quiet"]["groups"] == []
    table = fleet_cli("streams", STREAM_PREFIX=prefix).stdout.splitlines()
    assert table[0].split() == ["stream", "length", "group", "consumers", "lag", "pending"]
    assert table[1].split()[:4] == ["events:device", "4", "e2e.probe", "1"]
    assert table[2].split() == ["events:quiet", "1", "-", "-", "-", "-"]


def test_rebuild_rejects_unknown_names() -> None:
    unknown = fleet_cli("rebuild", "nosuch", "x")
    assert unknown.returncode == 2
    assert "unknown service 'nosuch'" in unknown.stderr
    assert "auth, device, telemetry, commands, gateway" in unknown.stderr
    no_projection = fleet_cli("rebuild", "device", "x", DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert no_projection.returncode == 2
    assert "device has no projection 'x' (known: history, presence)" in no_projection.stderr
    unconfigured = fleet_cli("rebuild", "device", "x")
    assert unconfigured.returncode == 2
    assert "DEVICE_DATABASE_URL (or DATABASE_URL)" in unconfigured.stderr


def test_rebuild_a_real_projection(database_url, prefix) -> None:
    done = fleet_cli(
        "rebuild",
        "device",
        "presence",
        DATABASE_URL=database_url,
        STREAM_PREFIX=prefix,
        SIGNING_KEY="k" * 40,
    )
    assert done.returncode == 0, done.stderr
    assert "rebuilt presence: 0 events applied" in done.stdout
