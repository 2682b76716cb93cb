"""The commands service's subscriptions and workers: the lifecycle consumer and the expiry sweeper."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from libs.events.consumer import Subscription
from libs.events.service import ServiceHost

from .handlers import CONSUMER, GATEWAY, GATEWAY_TYPES, TELEMETRY, TELEMETRY_TYPES, Commands


def subscriptions(host: ServiceHost) -> list[Subscription]:
    """Group ``commands.lifecycle`` on the gateway's and telemetry's streams, one batch handler."""
    commands = Commands(host)
    return [
        Subscription(host.stream(GATEWAY), CONSUMER, batch=commands.handle, batch_types=GATEWAY_TYPES),
        Subscription(host.stream(TELEMETRY), CONSUMER, batch=commands.handle, batch_types=TELEMETRY_TYPES),
    ]


def workers(host: ServiceHost) -> list[Callable[[asyncio.Event], Awaitable[None]]]:
    """The expiry sweeper, run beside the consumers in the worker."""
    return [Commands(host).run_sweeper]
