"""Publishing envelopes to Redis Streams: single, pipelined batch, and deduplicated (for the relay)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from opentelemetry import trace

from .envelope import (
    ENVELOPE_FIELD,
    TYPE_FIELD,
    Envelope,
    encode_envelope,
    entry_fields,
    new_envelope,
)
from .schemas import Event
from .tracing import SERVICE_ATTR, inject_headers, tracer, tracing_on

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

# XADD a whole batch to one stream in one call. The entries travel as two arguments, the byte
# lengths and the concatenated ``type``/``envelope`` values, because packing thousands of separate
# arguments is most of what a client spends on a batch; the batch also lands contiguously.
_XADD_MANY = """
local blob, pos, out, lens = ARGV[2], 1, {}, {}
for n in string.gmatch(ARGV[1], '%d+') do lens[#lens + 1] = tonumber(n) end
for i = 1, #lens, 2 do
  local t = string.sub(blob, pos, pos + lens[i] - 1)
  pos = pos + lens[i]
  local e = string.sub(blob, pos, pos + lens[i + 1] - 1)
  pos = pos + lens[i + 1]
  out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'type', t, 'envelope', e)
end
return out
"""

DEFAULT_DEDUP_WINDOW_S = 3600
MAX_SCRIPT_BATCH = 1000


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
        self._xadd_many = redis.register_script(_XADD_MANY)

    def envelope(self, event: Event, **meta: Any) -> Envelope:
        """Wrap an event in an envelope from this producer, carrying the current trace context."""
        headers = meta.pop("headers") if "headers" in meta else inject_headers()
        return new_envelope(event, producer=self.producer, headers=headers, **meta)

    async def publish(self, stream: str, event: Event, **meta: Any) -> tuple[str, Envelope]:
        """Publish one event; returns the entry id and the envelope."""
        envelope = self.envelope(event, **meta)
        with self.span(stream, envelope) if tracing_on() else contextlib.nullcontext():
            entry_id = await self._redis.xadd(stream, entry_fields(envelope))  # type: ignore[arg-type]
        return _text(entry_id), envelope

    def span(self, stream: str, envelope: Envelope) -> Any:
        """A PRODUCER span timing the append of ``envelope`` to ``stream``.

        The envelope keeps the context it was made in (the request's span, say) as its consumers'
        parent, so the append and the consumers are siblings under the cause, all in one trace.
        """
        return tracer().start_as_current_span(
            f"publish {envelope.type}",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "redis",
                "messaging.destination.name": stream,
                "messaging.message.id": envelope.id,
                "messaging.operation.type": "send",
                SERVICE_ATTR: self.producer,
            },
        )

    async def publish_envelopes(self, items: Sequence[tuple[str, Envelope]]) -> list[str]:
        """Append many envelopes in one round trip; returns entry ids in the order given.

        Items are grouped per stream (order within a stream is kept) and each group is appended by
        one script call of up to ``MAX_SCRIPT_BATCH`` entries; the calls are pipelined.
        """
        if not items:
            return []
        groups: dict[str, list[int]] = {}
        for index, (stream, _env) in enumerate(items):
            groups.setdefault(stream, []).append(index)
        pipe = self._redis.pipeline(transaction=False)
        order: list[list[int]] = []
        for stream, indexes in groups.items():
            for start in range(0, len(indexes), MAX_SCRIPT_BATCH):
                chunk = indexes[start : start + MAX_SCRIPT_BATCH]
                await self._xadd_many(keys=[stream], args=_pack(items, chunk), client=pipe)  # queues
                order.append(chunk)
        ids: list[str] = [""] * len(items)
        for chunk, reply in zip(order, await pipe.execute(), strict=True):
            for i, entry_id in zip(chunk, reply, strict=True):
                ids[i] = _text(entry_id)
        return ids

    async def publish_batch(self, stream: str, events: Sequence[Event], **meta: Any) -> list[str]:
        """Publish many events to one stream in one round trip (clock and trace headers read once)."""
        meta.setdefault("headers", inject_headers())
        meta.setdefault("occurred_at", datetime.now(UTC))
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


def _pack(items: Sequence[tuple[str, Envelope]], chunk: list[int]) -> tuple[bytes, bytes]:
    """The two arguments of the batch script: byte lengths, and the values back to back."""
    parts: list[bytes] = []
    for i in chunk:
        env = items[i][1]
        parts += (env.type.encode(), encode_envelope(env))
    return ",".join(str(len(p)) for p in parts).encode(), b"".join(parts)


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
