"""What goes into the agent's sans-I/O core and what comes out: events (inputs) and actions (outputs).

Pure data, no I/O and no clock: ``agent.protocol`` decides, the caller (``agent.runner``, or the fleet
simulator) performs the actions and feeds their outcomes back as events. Every name here is also
importable from ``agent.protocol``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from libs.events.schemas.agent import AgentFrame, Command, Heartbeat, Result, ServerFrame

# --- events (inputs) --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Event:
    """Something that happened; ``now`` is monotonic seconds."""

    now: float


@dataclass(frozen=True, kw_only=True)
class Started(Event):
    """The agent starts; what the spool kept from earlier runs."""

    executed: Mapping[str, Result] = field(default_factory=dict)
    pending_results: Sequence[Result] = ()
    spooled: int = 0


@dataclass(frozen=True, kw_only=True)
class AuthSucceeded(Event):
    """``POST /api/v1/device/auth`` answered 200 (the runner keeps the token, not the protocol)."""

    expires_in_s: float


@dataclass(frozen=True, kw_only=True)
class AuthFailed(Event):
    """Auth answered non-200 (``status``) or not at all (``status=None``)."""

    status: int | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class SocketOpened(Event):
    """The WebSocket handshake succeeded."""


@dataclass(frozen=True, kw_only=True)
class SocketClosed(Event):
    """The socket ended or never opened (``handshake_status``: the HTTP answer that refused it)."""

    code: int | None = None
    handshake_status: int | None = None


@dataclass(frozen=True, kw_only=True)
class FrameReceived(Event):
    """A server frame arrived on the socket (``wall``: the local time then, to check the clock)."""

    frame: ServerFrame
    wall: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class HeartbeatAnswered(Event):
    """An HTTP heartbeat was stored."""

    seq: int
    next_heartbeat_ms: int | None = None


@dataclass(frozen=True, kw_only=True)
class HeartbeatFailed(Event):
    """An HTTP heartbeat was refused (``status``) or got no answer (``None``)."""

    seq: int
    status: int | None = None


@dataclass(frozen=True, kw_only=True)
class BatchAnswered(Event):
    """A backfill batch was stored and removed from the spool; ``remaining`` are still spooled."""

    sent: int
    remaining: int


@dataclass(frozen=True, kw_only=True)
class BatchFailed(Event):
    """A backfill batch was refused (``status``) or got no answer (``None``)."""

    status: int | None = None


@dataclass(frozen=True, kw_only=True)
class CommandFinished(Event):
    """A command ran; its result frame."""

    result: Result


@dataclass(frozen=True, kw_only=True)
class Tick(Event):
    """A wake-up; ``metrics`` matter only when ``heartbeat_due(now)``."""

    wall: datetime
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ShutdownRequested(Event):
    """SIGTERM/SIGINT or a restart: leave cleanly."""

    wall: datetime
    metrics: Mapping[str, float] = field(default_factory=dict)


# --- actions (outputs) ------------------------------------------------------------------------


@dataclass(frozen=True)
class Authenticate:
    """Call ``POST /api/v1/device/auth`` and answer with AuthSucceeded/AuthFailed."""


@dataclass(frozen=True)
class OpenSocket:
    """Open the agent WebSocket with the current token; answer SocketOpened/SocketClosed."""


@dataclass(frozen=True)
class CloseSocket:
    """Close the socket."""

    code: int = 1000


@dataclass(frozen=True)
class SendFrame:
    """Write a frame on the open socket."""

    frame: AgentFrame


@dataclass(frozen=True)
class PostHeartbeat:
    """``POST /api/v1/agent/heartbeat``; ``final`` ones are awaited before the process exits."""

    heartbeat: Heartbeat
    boot: str
    final: bool = False


@dataclass(frozen=True)
class PostBatch:
    """Post the oldest ``limit`` spooled heartbeats to ``POST /api/v1/agent/heartbeats``."""

    limit: int


@dataclass(frozen=True)
class DropBatch:
    """Delete the batch the server refused as invalid from the spool (it would fail forever)."""


@dataclass(frozen=True)
class SpoolHeartbeat:
    """Keep this heartbeat in the spool for backfill."""

    heartbeat: Heartbeat
    boot: str


@dataclass(frozen=True)
class RecordResult:
    """Persist a command's result (the command counts as executed, its result as pending).

    Also issued before a command runs, with ``interrupted_result``: the result a later run reports
    if this one ends before the command does; the real result replaces it.
    """

    result: Result


@dataclass(frozen=True)
class ResultDelivered:
    """The server recorded this result: the spool need not resend it."""

    command_id: str


@dataclass(frozen=True)
class RunCommand:
    """Run a command; answer with CommandFinished."""

    command: Command


@dataclass(frozen=True)
class Log:
    """A line for the operator (never contains secrets)."""

    level: str
    message: str


@dataclass(frozen=True)
class Exit:
    """Stop the agent with this process exit code."""

    code: int
    message: str


Action = (
    Authenticate
    | OpenSocket
    | CloseSocket
    | SendFrame
    | PostHeartbeat
    | PostBatch
    | DropBatch
    | SpoolHeartbeat
    | RecordResult
    | ResultDelivered
    | RunCommand
    | Log
    | Exit
)
