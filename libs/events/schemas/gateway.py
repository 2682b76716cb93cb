"""Events published by the gateway on ``events:gateway``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .base import Event


class AgentConnected(Event, frozen=True, tag="gateway.agent_connected.v1"):
    """A device opened a socket on a gateway instance."""

    device_id: str
    workspace_id: str
    gateway_id: str
    dialect: str
    at: datetime
    # one socket's id: a close only counts for the socket it closes (a newer one may be open)
    connection_id: str = ""


class AgentDisconnected(Event, frozen=True, tag="gateway.agent_disconnected.v1"):
    """A device's socket closed; ``reason`` says whether cleanly (agent_shutdown) or not."""

    device_id: str
    workspace_id: str
    gateway_id: str
    dialect: str
    at: datetime
    reason: str = "socket_closed"
    connection_id: str = ""


class CommandPushed(Event, frozen=True, tag="gateway.command_pushed.v1"):
    """A gateway wrote a command to a device's socket (``dialect``: agent, s or w)."""

    command_id: str
    device_id: str
    workspace_id: str
    gateway_id: str
    dialect: str
    at: datetime
    connection_id: str = ""


class CommandAcked(Event, frozen=True, tag="gateway.command_acked.v1"):
    """The device confirmed receipt of a command on its socket (the agent protocol's ``ack``)."""

    command_id: str
    device_id: str
    workspace_id: str
    at: datetime


class CommandResultReceived(Event, frozen=True, tag="gateway.command_result.v1"):
    """A device reported a command's result on its socket, in its dialect's words (``status`` as
    sent: agent ``succeeded``/``failed``, W ``completed``/``failed``, S ``success``/``failure``...)."""

    command_id: str
    device_id: str
    workspace_id: str
    dialect: str
    status: str
    at: datetime
    result: dict[str, Any] | None = None
    error: str | None = None
    output: str | None = None
    executed_at: datetime | None = None
    duration_ms: float | None = None


class GatewayAlive(Event, frozen=True, tag="gateway.alive.v1"):
    """A gateway instance is running (every few seconds): presence counts the sockets it reported as
    connected only while these keep coming, so a gateway that dies without closing them (killed,
    host lost) does not leave its devices online."""

    gateway_id: str
    at: datetime
    connections: int = 0  # sockets open on it now
    interval_s: float = 5.0  # the next one is due this long after ``at``


EVENTS: tuple[type[Event], ...] = (
    AgentConnected,
    AgentDisconnected,
    CommandPushed,
    CommandAcked,
    CommandResultReceived,
    GatewayAlive,
)
