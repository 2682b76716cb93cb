"""The platform's own agent protocol: JSON frames on the agent WebSocket (``GET /api/v1/agent/ws``).

Versioned by the WebSocket subprotocol ``fleet.agent.v1`` and by each frame's ``type`` tag; a change
that old agents cannot read is a new subprotocol (``fleet.agent.v2``), and servers keep speaking v1.
Unknown fields are ignored both ways (add a field only with a default).

Agent -> server: ``hello`` (first frame), ``heartbeat``, ``ack`` (a command arrived), ``result``,
``bye`` (clean shutdown). Server -> agent: ``welcome`` (answer to hello), ``command``,
``heartbeat_ack``, ``result_ack``, ``error``. A command may arrive more than once (a reconnect
before its result); the agent recognises it by ``command_id``, acknowledges it again and does not run
it twice; the server records only the first result (``result_ack.duplicate`` says it had one).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

PROTOCOL = "fleet.agent.v1"


class Frame(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every agent-protocol frame."""


class Hello(Frame, frozen=True, tag="hello"):
    """The agent's first frame: which run of the agent this is (``boot``) and what it can do."""

    boot: str
    agent_version: str = ""
    capabilities: list[str] = []


class Heartbeat(Frame, frozen=True, tag="heartbeat"):
    """A heartbeat over the socket (same fields and rules as ``POST /api/v1/agent/heartbeat``)."""

    seq: int
    sent_at: datetime
    status: str = "online"
    metrics: dict[str, float | int] = {}


class Ack(Frame, frozen=True, tag="ack"):
    """The agent received a command (it may not have run it yet)."""

    command_id: str


class Result(Frame, frozen=True, tag="result"):
    """A command's outcome: ``status`` is ``succeeded`` or ``failed``."""

    command_id: str
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    output: str | None = None
    executed_at: datetime | None = None
    duration_ms: float | None = None


class Bye(Frame, frozen=True, tag="bye"):
    """The agent is shutting down cleanly (presence: offline with reason ``agent_shutdown``)."""

    reason: str = "agent_shutdown"


class Welcome(Frame, frozen=True, tag="welcome"):
    """The server's answer to ``hello``."""

    device_id: str
    connection_id: str
    heartbeat_interval_ms: int
    server_time: datetime
    protocol: str = PROTOCOL


class Command(Frame, frozen=True, tag="command"):
    """A command to run; ``attempt`` > 1 means it was sent before (recognise it by ``command_id``)."""

    command_id: str
    command_type: str
    created_at: datetime
    expires_at: datetime
    parameters: dict[str, Any] = {}
    attempt: int = 1


class HeartbeatAck(Frame, frozen=True, tag="heartbeat_ack"):
    """The heartbeat with this ``seq`` is stored (its stream entry acknowledged by Redis)."""

    seq: int


class ResultAck(Frame, frozen=True, tag="result_ack"):
    """The result is recorded; ``duplicate`` when an earlier result already was (this one is ignored)."""

    command_id: str
    duplicate: bool = False


class Error(Frame, frozen=True, tag="error"):
    """A frame the server refused (the socket stays open unless the error says otherwise)."""

    code: str
    message: str


AgentFrame = Hello | Heartbeat | Ack | Result | Bye
ServerFrame = Welcome | Command | HeartbeatAck | ResultAck | Error

__all__ = [
    "PROTOCOL",
    "Ack",
    "AgentFrame",
    "Bye",
    "Command",
    "Error",
    "Frame",
    "Heartbeat",
    "HeartbeatAck",
    "Hello",
    "Result",
    "ResultAck",
    "ServerFrame",
    "Welcome",
]
