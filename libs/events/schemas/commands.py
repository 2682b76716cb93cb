"""Events published by the commands service on ``events:commands``: one per lifecycle step.

The lifecycle: ``queued`` -> ``sent`` (handed to a transport) -> ``delivered`` (the device confirmed
receipt; transports without a receipt skip it) -> ``succeeded`` | ``failed``; or ``expired`` (TTL
passed before a result) or ``cancelled`` (by an operator, before a result). Dialects show this
vocabulary in their own words (docs/commands.md). Every event carries the device and workspace, so
a gateway or a portal can route it without a lookup.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .base import Event


class CommandQueued(Event, frozen=True, tag="command.queued.v1"):
    """An operator (or the system) queued a command for a device; it waits in the device's FIFO."""

    command_id: str
    device_id: str
    workspace_id: str
    command_type: str
    created_at: datetime
    expires_at: datetime
    parameters: dict[str, Any] = {}
    idempotency_key: str | None = None
    by: str = "system"


class CommandSent(Event, frozen=True, tag="command.sent.v1"):
    """The command was handed to a transport: ``via`` says which (e.g. ``agent``, ``s_ws``, ``w_ws``,
    ``s_heartbeat``, ``k_poll``). A command may be sent again (a reconnect); ``attempt`` counts."""

    command_id: str
    device_id: str
    workspace_id: str
    at: datetime
    via: str
    attempt: int = 1


class CommandDelivered(Event, frozen=True, tag="command.delivered.v1"):
    """The device confirmed it received the command (the agent protocol's ``ack``)."""

    command_id: str
    device_id: str
    workspace_id: str
    at: datetime


class CommandFinished(Event, frozen=True, tag="command.finished.v1"):
    """The device's result: ``status`` is ``succeeded`` or ``failed``; the first result is final."""

    command_id: str
    device_id: str
    workspace_id: str
    status: str
    at: datetime
    result: dict[str, Any] | None = None
    error: str | None = None
    output: str | None = None
    executed_at: datetime | None = None
    duration_ms: float | None = None
    # the device's own word for it (S ``timeout``, K ``completed``...), kept for the record
    reported_status: str | None = None
    via: str | None = None


class CommandExpired(Event, frozen=True, tag="command.expired.v1"):
    """The command's TTL passed before a result: it will never be delivered (again)."""

    command_id: str
    device_id: str
    workspace_id: str
    at: datetime


class CommandCancelled(Event, frozen=True, tag="command.cancelled.v1"):
    """An operator cancelled the command before a result: it will never be delivered (again)."""

    command_id: str
    device_id: str
    workspace_id: str
    at: datetime
    by: str = "system"


EVENTS: tuple[type[Event], ...] = (
    CommandQueued,
    CommandSent,
    CommandDelivered,
    CommandFinished,
    CommandExpired,
    CommandCancelled,
)
