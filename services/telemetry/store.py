"""Redis keys of the telemetry service: the per-device latest-metrics cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis

from libs.events.envelope import Envelope
from libs.events.schemas.telemetry import HeartbeatReceived

_decode = msgspec.json.Decoder(HeartbeatReceived).decode
_encode = msgspec.json.Encoder().encode


class LatestCache:
    """``<prefix>telemetry:latest:<device_id>`` holds the device's last live heartbeat, with a TTL."""

    def __init__(self, redis: aioredis.Redis, prefix: str, ttl_s: int) -> None:
        self.redis, self.prefix, self.ttl_s = redis, prefix, ttl_s

    def key(self, device_id: str) -> str:
        """The cache key of one device."""
        return f"{self.prefix}telemetry:latest:{device_id}"

    async def store(self, items: Sequence[tuple[str, Envelope]], _ids: Sequence[str] = ()) -> None:
        """Cache the last live heartbeat of each device of a written batch, in one round trip."""
        latest: dict[str, bytes] = {}
        for _stream, env in items:
            event = _decode(env.data)
            if event.backfill:  # an old heartbeat replayed by the agent is not the latest
                continue
            latest[event.device_id] = _encode(
                {
                    "metrics": event.metrics,
                    "received_at": event.received_at,
                    "status": event.status,
                    "seq": event.seq,
                    "flags": event.flags,
                    "dialect": event.dialect,
                }
            )
        if not latest:
            return
        pipe = self.redis.pipeline(transaction=False)
        for device_id, value in latest.items():
            pipe.set(self.key(device_id), value, ex=self.ttl_s)
        await pipe.execute()

    async def get(self, device_id: str) -> dict[str, Any] | None:
        """The cached latest heartbeat of a device, or None after the TTL."""
        raw = await self.redis.get(self.key(device_id))
        return None if raw is None else msgspec.json.decode(raw)
