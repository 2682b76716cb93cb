"""The commands service's subscriptions and workers: the lifecycle consumer and the expiry sweeper."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from libs.events.consumer import Subscription
from libs.events.service import ServiceHost

from .handlers import Commands
from .lifecycle_handlers import CONSUMER, TYPES, Lifecycle


def subscriptions(host: ServiceHost) -> list[Subscription]:
    """Group ``commands.lifecycle`` on the gateway's, telemetry's and the registry's streams."""
    lifecycle = Lifecycle(Commands(host))
    return [
        Subscription(host.stream(stream), CONSUMER, batch=lifecycle.handle, batch_types=types)
        for stream, types in TYPES.items()
    ]


def workers(host: ServiceHost) -> list[Callable[[asyncio.Event], Awaitable[None]]]:
    """The expiry sweeper, run beside the consumers in the worker."""
    return [Commands(host).run_sweeper]
