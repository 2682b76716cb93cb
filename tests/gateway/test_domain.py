"""The gateway's pure core: subprotocol tokens, inbound and outbound frames, rate limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from libs.events.open_commands import OpenCommands
from libs.events.schemas.commands import CommandQueued
from services.gateway import domain as d

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def queued(cid: str, device: str = "dev", *, at: datetime = NOW, ttl: float = 600) -> CommandQueued:
    return CommandQueued(
        command_id=cid,
        device_id=device,
        workspace_id="ws",
        command_type="reboot",
        created_at=at,
        expires_at=at + timedelta(seconds=ttl),
    )


def test_s_subprotocol_forms():
    assert d.s_subprotocol(d.offered("tok")) == d.Offered("tok", "tok")
    assert d.s_subprotocol(d.offered("auth.tok")) == d.Offered("tok", "auth.tok")
    assert d.s_subprotocol(d.offered("auth, tok")) == d.Offered("tok", "auth")
    assert d.s_subprotocol(d.offered("")) == d.Offered(None, None)


def test_agent_subprotocol_needs_the_version_when_protocols_are_offered():
    assert d.agent_subprotocol(["fleet.agent.v1", "auth.t"]) == d.Offered("t", "fleet.agent.v1")
    assert d.agent_subprotocol([]) == d.Offered(None, None)
    assert d.agent_subprotocol(["auth.t"]) == d.Offered("t", None)
    assert d.agent_subprotocol(["fleet.agent.v2", "auth.t"]) is None


def test_agent_frames():
    beat = d.parse_agent(
        json.dumps({"type": "heartbeat", "seq": 3, "sent_at": "2026-06-01T11:59:00"}), now=NOW
    )
    assert isinstance(beat, d.Beat) and beat.seq == 3 and beat.sent_at is not None and beat.sent_at.tzinfo
    ahead = (NOW + timedelta(days=2)).isoformat()
    for bad in (
        {"type": "heartbeat", "seq": 1, "sent_at": ahead},
        {"type": "heartbeat", "seq": 1, "sent_at": NOW.isoformat(), "status": "weird"},
        {"type": "heartbeat", "seq": 1, "sent_at": NOW.isoformat(), "metrics": {"memory": -1}},
        {"type": "heartbeat", "seq": 1, "sent_at": NOW.isoformat(), "metrics": {"bad name": 1}},
    ):
        assert isinstance(d.parse_agent(json.dumps(bad), now=NOW), d.Refused), bad
    assert isinstance(d.parse_agent(b"{not json", now=NOW), d.Refused)
    assert d.parse_agent('{"type": "hello", "boot": "b-1"}', now=NOW) == d.Greeting("b-1")
    assert d.parse_agent('{"type": "ack", "command_id": "c1"}', now=NOW) == d.Received("c1")
    assert d.parse_agent('{"type": "bye"}', now=NOW) == d.Goodbye()
    res = d.parse_agent('{"type": "result", "command_id": "c1", "status": "succeeded", "x": 1}', now=NOW)
    assert res == d.Outcome("c1", "succeeded")


def test_s_frames_are_read_liberally():
    assert isinstance(d.parse_s('{"type": "connected", "payload": {}}'), d.Ignored)
    assert isinstance(d.parse_s("[1, 2]"), d.Ignored)
    assert d.parse_s('{"type": "heartbeat"}') == d.Beat()
    assert d.parse_s('{"type": "heartbeat", "status": [1]}') == d.Beat()  # unhashable: no crash
    assert d.parse_s('{"type": "heartbeat", "status": "degraded"}') == d.Beat("degraded")
    out = d.parse_s('{"type": "command_result", "payload": {"commandId": "c9", "success": true}}')
    assert out == d.Outcome("c9", "success")
    out = d.parse_s('{"type": "result", "id": "c9", "status": "timeout", "result": "text", "duration": "x"}')
    assert out == d.Outcome("c9", "timeout", {"value": "text"})
    assert isinstance(d.parse_s('{"type": "result", "status": "success"}'), d.Ignored)


def test_w_frames():
    assert d.parse_w('{"type": "ping"}') == d.Beat()
    out = d.parse_w('{"command_id": "c1", "status": "failed", "result": null, "error": "no"}')
    assert out == d.Outcome("c1", "failed", None, "no")
    assert isinstance(d.parse_w('{"hello": 1}'), d.Ignored)


def test_outbound_shapes():
    cmd = OpenCommands().apply(queued("c1"))
    assert cmd is not None
    assert json.loads(d.w_command(cmd, 1)) == {"command_id": "c1", "command_type": "reboot", "parameters": {}}
    s = json.loads(d.s_command(cmd, 1))
    assert (s["type"], s["id"], s["command"], s["payload"]["id"], s["payload"]["type"]) == (
        "command",
        "c1",
        "reboot",
        "c1",
        "reboot",
    )
    a = json.loads(d.agent_command(cmd, 2))
    assert (a["type"], a["command_id"], a["attempt"]) == ("command", "c1", 2)


@pytest.mark.parametrize("limit", [0, 3])
def test_frame_rate(limit: int):
    rate = d.FrameRate(limit, flood=2)
    verdicts = [rate.check("dev", 100.5) for _ in range(8)]
    if limit == 0:
        assert set(verdicts) == {"ok"}
    else:
        assert verdicts == ["ok"] * 3 + ["drop"] * 3 + ["flood"] * 2
        assert rate.check("dev", 101.0) == "ok"
