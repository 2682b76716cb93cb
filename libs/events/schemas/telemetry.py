"""Facts published by the telemetry service on ``telemetry:*`` streams."""

from __future__ import annotations

from datetime import datetime

from .base import Event

MetricValue = float | int | str | bool | None


class HeartbeatReceived(Event, frozen=True, tag="telemetry.heartbeat.v1"):
    """A device said it is alive, with its latest metrics."""

    device_id: str
    workspace_id: str
    received_at: datetime
    status: str = "online"
    seq: int | None = None
    sent_at: datetime | None = None
    # the agent's run (a fresh id each time it starts): its ``seq`` restarts with a new boot
    boot: str | None = None
    metrics: dict[str, MetricValue] = {}
    backfill: bool = False
    # which wire dialect sent it: "s" (session), "k" (API key metrics) or "agent"
    dialect: str = "s"
    # metric names whose values were stored as sent but are not plausible readings (dialect S)
    flags: list[str] = []


class CommandsPiggybacked(Event, frozen=True, tag="telemetry.commands_piggybacked.v1"):
    """Pending commands went out in a dialect S heartbeat's answer (``commands``), oldest first."""

    device_id: str
    workspace_id: str
    command_ids: list[str]
    at: datetime


EVENTS: tuple[type[Event], ...] = (HeartbeatReceived, CommandsPiggybacked)
