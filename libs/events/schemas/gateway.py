"""Events published by the gateway on ``events:gateway``."""

from __future__ import annotations

from datetime import datetime

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


EVENTS: tuple[type[Event], ...] = (AgentConnected, AgentDisconnected)
