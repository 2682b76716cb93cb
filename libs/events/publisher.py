"""Publishing envelopes to Redis Streams: single, pipelined batch, and deduplicated (for the relay)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from .envelope import (
    ENVELOPE_FIELD,
    TYPE_FIELD,
    Envelope,
    encode_envelope,
    entry_fields,
    new_envelope,
)
from .schemas import Event
from .tracing import inject_headers

# XADD each envelope whose id this stream has not seen within the dedup window; one call per batch.
# The window's ids live in one sorted set per stream, pruned on every call, so a relay that crashed
# between XADD and deleting its outbox rows republishes nothing.
_XADD_ONCE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[1]))
local out = {}
for i = 2, #ARGV, 3 do
  if redis.call('ZADD', KEYS[2], 'NX', now, ARGV[i]) == 1 then
    out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'type', ARGV[i + 1], 'envelope', ARGV[i + 2])
  else
    out[#out + 1] = false
  end
end
return out
"""

DEFAULT_DEDUP_WINDOW_S = 3600


def dlq_stream(stream: str, prefix: str = "") -> str:
    """The dead-letter stream of a stream: ``dlq:<stream>``, inside the same key prefix."""
    if prefix and stream.startswith(prefix):
        return f"{prefix}dlq:{stream[len(prefix) :]}"
    return f"dlq:{stream}"


def dedup_key(stream: str) -> str:
    """The sorted set that remembers recently relayed envelope ids of a stream."""
    return f"{stream}:relayed"


class Publisher:
    """Appends envelopes to streams; the stream entry's acknowledgement is the commit point."""

    def __init__(self, redis: aioredis.Redis, *, producer: str) -> None:
        self._redis = redis
        self.producer = producer
        self._xadd_once = redis.register_script(_XADD_ONCE)

    def envelope(self, event: Event, **meta: Any) -> Envelope:
        """Wrap an event in an envelope from this producer, carrying the current trace context."""
        headers = meta.pop("headers", None) or inject_headers()
        return new_envelope(event, producer=self.producer, headers=headers, **meta)

    async def publish(self, stream: str, event: Event, **meta: Any) -> tuple[str, Envelope]:
        """Publish one event; returns the entry id and the envelope."""
        envelope = self.envelope(event, **meta)
        entry_id = await self._redis.xadd(stream, entry_fields(envelope))  # type: ignore[arg-type]
        return _text(entry_id), envelope

    async def publish_envelopes(self, items: Sequence[tuple[str, Envelope]]) -> list[str]:
        """XADD many envelopes in one pipelined round trip (not a transaction); returns entry ids."""
        if not items:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for stream, envelope in items:
            pipe.xadd(stream, entry_fields(envelope))  # type: ignore[arg-type]
        return [_text(entry_id) for entry_id in await pipe.execute()]

    async def publish_batch(self, stream: str, events: Sequence[Event], **meta: Any) -> list[str]:
        """Publish many events to one stream in one pipelined round trip."""
        return await self.publish_envelopes([(stream, self.envelope(e, **meta)) for e in events])

    async def publish_once(
        self,
        stream: str,
        items: Sequence[tuple[str, str, bytes]],
        *,
        dedup_window_s: int = DEFAULT_DEDUP_WINDOW_S,
    ) -> list[str | None]:
        """XADD ``(envelope_id, type, envelope_json)`` items unless already relayed.

        Returns the new entry id per item, or None for an envelope id seen within the window.
        """
        if not items:
            return []
        args: list[Any] = [dedup_window_s]
        for envelope_id, type_, raw in items:
            args.extend((envelope_id, type_, raw))
        result = await self._xadd_once(keys=[stream, dedup_key(stream)], args=args)
        return [None if r is None else _text(r) for r in result]


def raw_item(envelope: Envelope) -> tuple[str, str, bytes]:
    """The ``publish_once`` item of an envelope."""
    return envelope.id, envelope.type, encode_envelope(envelope)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


__all__ = [
    "DEFAULT_DEDUP_WINDOW_S",
    "ENVELOPE_FIELD",
    "TYPE_FIELD",
    "Publisher",
    "dedup_key",
    "dlq_stream",
    "raw_item",
]
