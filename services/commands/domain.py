"""The command lifecycle's rules (pure): states, vocabulary, queueing, decisions and their events.

``queued`` -> ``sent`` -> ``delivered`` -> ``succeeded`` | ``failed``; ``expired`` and ``cancelled``
end a command that has no result yet. Terminal states never change: the first result is final, a
later one is a duplicate (no event). A sent or delivered command may be sent again (a reconnect):
``attempts`` counts. No I/O and no clock here: every decision takes ``now``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec

from libs.events.schemas import Event
from libs.events.schemas.commands import (
    CommandCancelled,
    CommandDelivered,
    CommandExpired,
    CommandFinished,
    CommandQueued,
    CommandSent,
)

from .dialects import MAX_PARAMETERS, DomainError, Report, size, too_large

QUEUED, SENT, DELIVERED = "queued", "sent", "delivered"
SUCCEEDED, FAILED, EXPIRED, CANCELLED = "succeeded", "failed", "expired", "cancelled"
OPEN = frozenset({QUEUED, SENT, DELIVERED})
TERMINAL = frozenset({SUCCEEDED, FAILED, EXPIRED, CANCELLED})
STATES = OPEN | TERMINAL

TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z"
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

# The platform's vocabulary (PROTOCOLS.md "Command lifecycle, one vocabulary"), shown by W, S and the
# operator API; K shows every open state as "pending".
VOCABULARY = {
    QUEUED: "pending",
    SENT: "sent",
    DELIVERED: "sent",
    SUCCEEDED: "completed",
    FAILED: "failed",
    EXPIRED: "expired",
    CANCELLED: "cancelled",
}
K_VOCABULARY = {**VOCABULARY, SENT: "pending", DELIVERED: "pending"}


@dataclass(frozen=True)
class Command:
    """One command as the queue keeps it."""

    command_id: str
    workspace_id: str
    device_id: str
    command_type: str
    parameters: dict[str, Any]
    state: str
    created_at: datetime
    expires_at: datetime
    created_by: str = "system"
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    via: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    output: str | None = None
    reported_status: str | None = None
    executed_at: datetime | None = None
    duration_ms: float | None = None
    finished_by: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None

    @property
    def status(self) -> str:
        """The state in the platform's vocabulary (W, S, operators)."""
        return VOCABULARY[self.state]

    @property
    def k_status(self) -> str:
        """The state as dialect K shows it (open states are all "pending")."""
        return K_VOCABULARY[self.state]

    @property
    def terminal(self) -> bool:
        """Whether the command can no longer change."""
        return self.state in TERMINAL


CommandType = Annotated[str, msgspec.Meta(pattern=TYPE_PATTERN)]
IdemKey = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class NewCommand(msgspec.Struct, kw_only=True):
    """An operator's command (K: ``payload``; W: ``parameters``; either is accepted)."""

    command_type: CommandType
    payload: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    ttl_s: Annotated[int, msgspec.Meta(ge=1)] | None = None
    idempotency_key: IdemKey | None = None


def states_for(word: str) -> list[str]:
    """The internal states a listing filter names: a state, or a vocabulary word (``pending``)."""
    if word in STATES:
        return [word]
    found = sorted(state for state, shown in VOCABULARY.items() if shown == word)
    if not found:
        raise DomainError("invalid", "VALIDATION_ERROR", f"status: unknown {word[:32]!r}")
    return found


def is_command_id(value: str) -> bool:
    """Whether ``value`` can name a command (a lowercase UUID)."""
    return bool(_UUID_RE.match(value))


# ---- queueing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ttl:
    """TTL bounds of the service (seconds)."""

    default_s: int = 3600
    max_s: int = 7 * 86400


def command_parameters(cmd: NewCommand) -> dict[str, Any]:
    """``payload`` or ``parameters`` (both only if equal); bounded in size."""
    if cmd.payload is not None and cmd.parameters is not None and cmd.payload != cmd.parameters:
        raise DomainError("invalid", "VALIDATION_ERROR", "payload and parameters differ: send one")
    params = cmd.payload if cmd.payload is not None else (cmd.parameters or {})
    if size(params) > MAX_PARAMETERS:
        raise too_large("payload", MAX_PARAMETERS)
    return params


def ttl_of(cmd: NewCommand, ttl: Ttl) -> int:
    """The command's TTL: its own within bounds, else the default."""
    if cmd.ttl_s is None:
        return ttl.default_s
    if cmd.ttl_s > ttl.max_s:
        raise DomainError("invalid", "VALIDATION_ERROR", f"ttl_s: at most {ttl.max_s}")
    return cmd.ttl_s


_encoder = msgspec.json.Encoder(order="sorted")


def fingerprint(shape: str, device_id: str, cmd: NewCommand, ttl_s: int) -> str:
    """What an idempotent retry must repeat exactly (the key itself aside)."""
    params = command_parameters(cmd)
    what = {"shape": shape, "device_id": device_id, "type": cmd.command_type, "p": params, "ttl": ttl_s}
    return hashlib.sha256(_encoder.encode(what)).hexdigest()


def decide_queue(
    command_id: str,
    workspace_id: str,
    device_id: str,
    cmd: NewCommand,
    *,
    ttl: Ttl,
    by: str,
    shape: str,
    now: datetime,
) -> tuple[Command, list[Event]]:
    """A new command at the end of the device's FIFO, expiring after its TTL."""
    ttl_s = ttl_of(cmd, ttl)
    command = Command(
        command_id=command_id,
        workspace_id=workspace_id,
        device_id=device_id,
        command_type=cmd.command_type,
        parameters=command_parameters(cmd),
        state=QUEUED,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
        created_by=by,
        idempotency_key=cmd.idempotency_key,
        request_hash=fingerprint(shape, device_id, cmd, ttl_s) if cmd.idempotency_key else None,
    )
    event = CommandQueued(
        command_id=command_id,
        device_id=device_id,
        workspace_id=workspace_id,
        command_type=command.command_type,
        created_at=now,
        expires_at=command.expires_at,
        parameters=command.parameters,
        idempotency_key=command.idempotency_key,
        by=by,
    )
    return command, [event]


def check_retry(existing: Command, request_hash: str | None) -> None:
    """An idempotent retry must be the same request; another one under the same key is a conflict."""
    if existing.request_hash != request_hash:
        raise DomainError(
            "conflict", "IDEMPOTENCY_KEY_REUSED", "this idempotency key was used for a different request"
        )


# ---- lifecycle -----------------------------------------------------------------------------------

Decision = tuple[Command, list[Event]]


def _ids(c: Command) -> dict[str, str]:
    return {"command_id": c.command_id, "device_id": c.device_id, "workspace_id": c.workspace_id}


def decide_send(c: Command, *, via: str, now: datetime) -> Decision:
    """Handed to a transport: queued -> sent; sent/delivered again is a new attempt (a reconnect).

    A command past its TTL is expired instead; a terminal one is never sent.
    """
    if c.terminal:
        return c, []
    if now >= c.expires_at:
        return decide_expire(c, now=now)
    attempt = c.attempts + 1
    state = SENT if c.state == QUEUED else c.state
    new = dataclasses.replace(c, state=state, sent_at=now, attempts=attempt, via=via)
    return new, [CommandSent(**_ids(c), at=now, via=via, attempt=attempt)]


def decide_deliver(c: Command, *, now: datetime) -> Decision:
    """The device confirmed receipt: queued/sent -> delivered (once)."""
    if c.state not in (QUEUED, SENT):
        return c, []
    new = dataclasses.replace(c, state=DELIVERED, delivered_at=now, attempts=max(c.attempts, 1))
    return new, [CommandDelivered(**_ids(c), at=now)]


def decide_result(c: Command, report: Report, *, via: str, now: datetime) -> tuple[Command, list[Event], str]:
    """The device's result. Returns the verdict too: ``accepted``, ``duplicate`` (a result was
    already recorded: the first is final) or ``ignored`` (the command expired or was cancelled)."""
    if c.state in (SUCCEEDED, FAILED):
        return c, [], "duplicate"
    if c.terminal:
        return c, [], "ignored"
    if report.outcome == CANCELLED:
        new, events = _cancel(c, by=f"device:{c.device_id}", now=now)
        return dataclasses.replace(new, reported_status=report.reported_status), events, "accepted"
    new = dataclasses.replace(
        c,
        state=report.outcome,
        finished_at=now,
        result=report.result,
        error=report.error,
        output=report.output,
        reported_status=report.reported_status,
        executed_at=report.executed_at,
        duration_ms=report.duration_ms,
        finished_by=f"device:{c.device_id}",
    )
    event = CommandFinished(
        **_ids(c),
        status=report.outcome,
        at=now,
        result=report.result,
        error=report.error,
        output=report.output,
        executed_at=report.executed_at,
        duration_ms=report.duration_ms,
        reported_status=report.reported_status,
        via=via,
    )
    return new, [event], "accepted"


def decide_expire(c: Command, *, now: datetime) -> Decision:
    """The TTL passed before a result: open -> expired."""
    if c.terminal or now < c.expires_at:
        return c, []
    new = dataclasses.replace(c, state=EXPIRED, finished_at=now)
    return new, [CommandExpired(**_ids(c), at=now)]


def decide_cancel(c: Command, *, by: str, now: datetime) -> Decision:
    """An operator cancels before a result; cancelling a cancelled command changes nothing."""
    if c.state == CANCELLED:
        return c, []
    if c.terminal:
        raise DomainError("conflict", "COMMAND_FINISHED", f"command {c.command_id} is already {c.status}")
    return _cancel(c, by=by, now=now)


def _cancel(c: Command, *, by: str, now: datetime) -> Decision:
    new = dataclasses.replace(c, state=CANCELLED, finished_at=now, finished_by=by)
    return new, [CommandCancelled(**_ids(c), at=now, by=by)]
