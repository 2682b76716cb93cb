"""The gateway's pure core: outbound command frames of each dialect, inbound frame rules.

No I/O and no clock: callers pass ``now``. An agent heartbeat frame is held to the same value rules
as ``POST /api/v1/agent/heartbeat`` (``libs.events.heartbeat_rules``, shared with telemetry); the
frame types themselves come from ``libs.events.schemas.agent``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from libs.events.heartbeat_rules import (
    BOOT_RE,
    MAX_METRICS,
    NAME_RE,
    agent_heartbeat_problem,
    is_number,
    status_problem,
)
from libs.events.open_commands import OpenCommand
from libs.events.schemas import agent as A

MAX_OUTPUT, MAX_ERROR = 10_000, 5_000
_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def stamp(at: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``."""
    return _aware(at).astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- outbound frames

_encode = msgspec.json.Encoder().encode


def agent_command(cmd: OpenCommand, attempt: int) -> str:
    """The agent protocol's ``command`` frame."""
    frame = A.Command(
        command_id=cmd.command_id,
        command_type=cmd.command_type,
        created_at=cmd.created_at,
        expires_at=cmd.expires_at,
        parameters=cmd.parameters,
        attempt=attempt,
    )
    return _encode(frame).decode()


def s_command(cmd: OpenCommand, attempt: int) -> str:
    """Dialect S: ``{type:"command", id, command, parameters, payload:{id, type, parameters, timestamp}}``."""
    payload = {
        "id": cmd.command_id,
        "type": cmd.command_type,
        "parameters": cmd.parameters,
        "timestamp": stamp(cmd.created_at),
    }
    frame = {
        "type": "command",
        "id": cmd.command_id,
        "command": cmd.command_type,
        "parameters": cmd.parameters,
        "payload": payload,
    }
    return _encode(frame).decode()


def w_command(cmd: OpenCommand, attempt: int) -> str:
    """Dialect W: ``{command_id, command_type, parameters}`` (no ``type`` field)."""
    frame = {"command_id": cmd.command_id, "command_type": cmd.command_type, "parameters": cmd.parameters}
    return _encode(frame).decode()


def frame(obj: Any) -> str:
    """Any frame (a struct or a dict) as JSON text."""
    return _encode(obj).decode()


# ---------------------------------------------------------------- inbound frames


@dataclass(frozen=True)
class Beat:
    """A heartbeat received on a socket."""

    status: str = "online"
    metrics: dict[str, float | int] = field(default_factory=dict)
    seq: int | None = None
    sent_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """A command's result as the device reported it (``status`` in the device's words)."""

    command_id: str
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    output: str | None = None
    executed_at: datetime | None = None
    duration_ms: float | None = None


@dataclass(frozen=True)
class Received:
    """The agent confirmed receipt of a command."""

    command_id: str


@dataclass(frozen=True)
class Goodbye:
    """The agent is shutting down cleanly."""


@dataclass(frozen=True)
class Greeting:
    """The agent's ``hello``."""

    boot: str


@dataclass(frozen=True)
class Ignored:
    """A frame that needs no action (unknown type, the S client's own ``connected``)."""

    why: str


@dataclass(frozen=True)
class Refused:
    """A frame the server refuses; the agent gets an ``error`` frame with this code."""

    code: str
    message: str


Inbound = Beat | Outcome | Received | Goodbye | Greeting | Ignored | Refused

_agent_frames = msgspec.json.Decoder(A.AgentFrame)


def parse_agent(raw: str | bytes, *, now: datetime) -> Inbound:
    """One agent-protocol frame."""
    try:
        f = _agent_frames.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return Refused("bad_frame", str(exc)[:200])
    except (UnicodeDecodeError, RecursionError):
        return Refused("bad_frame", "not valid JSON")
    if isinstance(f, A.Heartbeat):
        return agent_beat(f, now=now)
    if isinstance(f, A.Hello):
        if not BOOT_RE.match(f.boot):
            return Refused("bad_frame", f"boot must match {BOOT_RE.pattern}")
        return Greeting(f.boot)
    if isinstance(f, A.Ack):
        return Received(f.command_id) if _ID_RE.match(f.command_id) else Refused("bad_frame", "command_id")
    if isinstance(f, A.Result):
        return _outcome(
            f.command_id, f.status, f.result, f.error, f.output, f.executed_at, f.duration_ms
        ) or Refused("bad_frame", "a result needs a command_id and a status")
    return Goodbye()


def agent_beat(f: A.Heartbeat, *, now: datetime) -> Beat | Refused:
    """The agent heartbeat rules telemetry applies to ``POST /api/v1/agent/heartbeat`` (shared)."""
    sent_at = _aware(f.sent_at)
    problem = agent_heartbeat_problem(seq=f.seq, sent_at=sent_at, status=f.status, metrics=f.metrics, now=now)
    if problem is not None:
        return Refused("invalid_heartbeat", problem)
    return Beat(f.status, dict(f.metrics), f.seq, sent_at)


def _json(raw: str | bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None


def parse_s(raw: str | bytes) -> Inbound:
    """One dialect S frame: ``heartbeat``, a result (``result``/``command_result``), or ignored."""
    body = _json(raw)
    if not isinstance(body, dict):
        return Ignored("not a JSON object")
    kind = body.get("type")
    inner = body.get("payload")
    payload: dict[str, Any] = inner if isinstance(inner, dict) else {}
    if kind == "heartbeat":
        return _s_beat({**payload, **body})
    if kind in ("result", "command_result", "commandResult"):
        merged = {**payload, **{k: v for k, v in body.items() if k not in ("type", "payload")}}
        return _liberal_outcome(merged) or Ignored("a result without a command id or status")
    return Ignored(f"type {str(kind)[:40]!r}")


def _s_beat(body: dict[str, Any]) -> Beat:
    status = body.get("status")
    given = body.get("metrics")
    metrics: dict[Any, Any] = given if isinstance(given, dict) else {}
    kept: dict[str, float | int] = {}
    for name, value in list(metrics.items())[:MAX_METRICS]:
        if isinstance(name, str) and NAME_RE.match(name) and _number(value):
            kept[name] = value
    if not isinstance(status, str) or status_problem(status) is not None:  # [1] is not hashable
        status = "online"
    return Beat(status, kept)


def parse_w(raw: str | bytes) -> Inbound:
    """One dialect W frame: ``{type:"ping"}`` or ``{command_id, status, result, error}``."""
    body = _json(raw)
    if not isinstance(body, dict):
        return Ignored("not a JSON object")
    if body.get("type") == "ping":
        return Beat()
    if "command_id" in body:
        return _liberal_outcome(body) or Ignored("a result without a command id or status")
    return Ignored(f"type {str(body.get('type'))[:40]!r}")


def _liberal_outcome(b: dict[str, Any]) -> Outcome | None:
    """A result in whichever spelling the client used (``commandId``/``command_id``/``id``...)."""
    cid = b.get("command_id") or b.get("commandId") or b.get("id")
    status = b.get("status")
    if status is None and isinstance(b.get("success"), bool):
        status = "success" if b["success"] else "failure"
    result = b.get("result")
    if result is not None and not isinstance(result, dict):
        result = {"value": result}
    error, output = b.get("error") or b.get("error_message"), b.get("output")
    duration: Any = b.get("duration_ms", b.get("duration"))
    executed = _when(b.get("executed_at") or b.get("executedAt"))
    return _outcome(
        cid,
        status,
        result,
        error if isinstance(error, str) else None if error is None else frame(error),
        output if isinstance(output, str) else None,
        executed,
        float(duration) if _number(duration) and math.isfinite(float(duration)) else None,
    )


def _outcome(
    cid: Any,
    status: Any,
    result: dict[str, Any] | None,
    error: str | None,
    output: str | None,
    executed_at: datetime | None,
    duration_ms: float | None,
) -> Outcome | None:
    if not isinstance(cid, str) or not _ID_RE.match(cid):
        return None
    if not isinstance(status, str) or not 0 < len(status) <= 32:
        return None
    return Outcome(
        cid,
        status,
        result,
        error[:MAX_ERROR] if error is not None else None,
        output[:MAX_OUTPUT] if output is not None else None,
        _aware(executed_at) if executed_at is not None else None,
        duration_ms,
    )


def _number(v: Any) -> bool:
    return is_number(v) and (isinstance(v, int) or math.isfinite(v))


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return _aware(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


# ---------------------------------------------------------------- handshake and limits


@dataclass(frozen=True)
class Offered:
    """What a client offered in ``Sec-WebSocket-Protocol``: a token (if any) and the value to echo."""

    token: str | None
    echo: str | None


def offered(header: str) -> list[str]:
    """The comma-separated subprotocol values of a ``Sec-WebSocket-Protocol`` header."""
    return [v.strip() for v in header.split(",") if v.strip()]


def s_subprotocol(values: list[str]) -> Offered:
    """Dialect S: ``auth.<token>`` (echoed as is), ``auth, <token>`` (``auth`` echoed), or ``<token>``."""
    for i, v in enumerate(values):
        if v.startswith("auth.") and len(v) > 5:
            return Offered(v[5:], v)
        if v == "auth" and i + 1 < len(values):
            return Offered(values[i + 1], "auth")
    rest = [v for v in values if v not in ("auth", A.PROTOCOL)]
    return Offered(rest[0], rest[0]) if rest else Offered(None, None)


def agent_subprotocol(values: list[str]) -> Offered | None:
    """The agent protocol: ``fleet.agent.v1`` (echoed) with an optional ``auth.<token>``.

    None when the client offers protocols but not this version (it speaks something else).
    """
    token = next((v[5:] for v in values if v.startswith("auth.") and len(v) > 5), None)
    others = [v for v in values if not v.startswith("auth.")]
    if A.PROTOCOL in others:
        return Offered(token, A.PROTOCOL)
    return None if others else Offered(token, None)


@dataclass
class FrameRate:
    """Inbound frames per device per fixed one-second window (0: no limit).

    ``check`` says ``ok``, ``drop`` (over the limit) or ``flood`` (over ``flood`` times the limit).
    """

    limit: int
    flood: int = 5
    _window: int = -1
    _counts: dict[str, int] = field(default_factory=dict)

    def check(self, key: str, now: float) -> str:
        """Count one frame of ``key``."""
        if self.limit <= 0:
            return "ok"
        window = int(now)
        if window != self._window:
            self._window, self._counts = window, {}
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        if n <= self.limit:
            return "ok"
        return "flood" if n > self.limit * self.flood else "drop"
