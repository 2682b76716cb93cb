"""The device service's subscriptions: presence from heartbeats and agent connections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from libs.events.consumer import Subscription
from libs.events.outbox import Outbox
from libs.events.projection import Projection, projection_handler
from libs.events.service import ServiceHost
from libs.events.stats import oldest_unhandled_ms

from . import history
from .config import Settings
from .handlers import STREAM
from .presence import Timing
from .presence_handlers import CONSUMER, GATEWAY, HEARTBEATS, TYPES, PresenceService, horizon_of, projection


def presence_service(host: ServiceHost) -> PresenceService:
    """The host's presence consumer and sweeper (pools are bound lazily: they open at start)."""
    s = host.settings
    assert isinstance(s, Settings)
    outbox: list[Outbox] = []

    def get() -> Outbox:
        if not outbox:
            assert host.pool is not None and host.redis is not None
            outbox.append(Outbox(host.pool, host.redis, producer="device", stream=host.stream(STREAM)))
        return outbox[0]

    async def oldest() -> list[int | None]:
        assert host.redis is not None
        return [
            await oldest_unhandled_ms(host.redis, host.stream(st), CONSUMER) for st in (HEARTBEATS, GATEWAY)
        ]

    defaults = Timing(s.presence_interval_s, s.presence_timeout_s)
    horizon = horizon_of(oldest, s.presence_grace_s)
    return PresenceService(
        get, defaults, horizon, sweep_s=s.presence_sweep_s, gateway_timeout_s=s.presence_gateway_timeout_s
    )


def subscriptions(host: ServiceHost) -> list[Subscription]:
    """Group ``device.presence`` on the heartbeats and gateway streams (one batch handler for both), and
    group ``device.history`` on the service's own stream (the status timeline)."""
    service = presence_service(host)
    timeline = history.projection(host.stream(STREAM))

    async def apply_timeline(batch: list[Any]) -> None:
        assert host.pool is not None  # bound at start
        await projection_handler(host.pool, timeline)(batch)

    return [
        *(
            Subscription(host.stream(st), CONSUMER, batch=service.handle, batch_types=TYPES, batch_size=500)
            for st in (HEARTBEATS, GATEWAY)
        ),
        Subscription(timeline.streams[0], history.CONSUMER, batch=apply_timeline, batch_types=history.TYPES),
    ]


def workers(host: ServiceHost) -> list[Callable[[asyncio.Event], Awaitable[None]]]:
    """The presence sweeper, run beside the consumers in the worker."""
    return [presence_service(host).run_sweeper]


def projections(host: ServiceHost) -> dict[str, Projection]:
    """``presence``: rebuilt by the same fold; transitions before the rebuild are not re-reported."""
    s = host.settings
    assert isinstance(s, Settings)
    streams = (host.stream(HEARTBEATS), host.stream(GATEWAY))
    defaults = Timing(s.presence_interval_s, s.presence_timeout_s)
    return {
        "presence": projection(streams, defaults, quiet_before=datetime.now(UTC)),
        "history": history.projection(host.stream(STREAM)),
    }
