"""The consumer runner: one consumer of one group on one stream (DESIGN.md §3).

- creates its group (``MKSTREAM``, BUSYGROUP ignored) and re-reads its own pending entries first;
- ``XREADGROUP ... BLOCK`` for new entries; XACK only after the handler returned (its effect is
  committed by then);
- a handler that raises leaves the entry pending; ``XAUTOCLAIM`` after ``claim_idle_ms`` retries it
  (and takes over a dead consumer's entries); after ``max_deliveries`` it goes to ``dlq:<stream>``
  with the error; an undecodable entry goes there at once; an unknown type is acknowledged and skipped;
- batch handlers get the whole read; if a batch fails its entries are retried one by one so one bad
  entry cannot hold back the others;
- ``stop()`` lets the current batch finish; a blocked read is abandoned (what it may have taken stays
  in this consumer's pending list and is re-read first next time).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from opentelemetry import trace
from redis.exceptions import RedisError, ResponseError

from .envelope import UndecodableEntry, UnknownEventType, decode_entry, decode_event
from .projection import BatchHandler, Delivery, Handler
from .publisher import dlq_stream
from .schemas import REGISTRY, Registry
from .stats import RunnerStats, group_stats, track
from .tracing import SERVICE_ATTR, extract_context, headers_of, tracer, tracing_on

log = logging.getLogger(__name__)

Entry = tuple[str, dict[bytes, bytes] | None]


@dataclass(frozen=True)
class Subscription:
    """What a runner consumes: a stream, a group, and either per-type handlers or a batch handler.

    ``batch_types`` lists the tags the batch handler wants; other known tags are acknowledged.
    """

    stream: str
    group: str
    handlers: Mapping[str, Handler] = field(default_factory=dict)
    batch: BatchHandler | None = None
    batch_types: frozenset[str] = frozenset()
    # Entries per read (None: the runner's default). Larger for a handler whose cost is mostly per
    # batch: a backlog is then read in fewer, larger transactions.
    batch_size: int | None = None

    def wants(self, event_type: str) -> bool:
        """Whether this subscription handles events of this tag."""
        if self.batch is not None:
            return event_type in self.batch_types
        return event_type in self.handlers


class ConsumerRunner:
    """Runs one subscription until stopped."""

    def __init__(
        self,
        redis: aioredis.Redis,
        subscription: Subscription,
        *,
        consumer: str,
        registry: Registry = REGISTRY,
        prefix: str = "",
        batch_size: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        claim_interval_s: float | None = None,
        max_deliveries: int = 5,
        stats_interval_s: float = 5.0,
    ) -> None:
        self._redis = redis
        self.sub = subscription
        self.consumer = consumer
        self.registry = registry
        self.dlq = dlq_stream(subscription.stream, prefix)
        self.batch_size = subscription.batch_size or batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.claim_interval_s = (
            claim_interval_s if claim_interval_s is not None else max(claim_idle_ms / 2000, 0.05)
        )
        self.max_deliveries = max_deliveries
        self.stats_interval_s = stats_interval_s
        self.stats = RunnerStats(subscription.stream, subscription.group, consumer)
        track(self.stats)
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._errors: dict[str, str] = {}
        self._last_error = ""
        self._tracer = tracer()
        self._unknown_types: set[str] = set()

    def stop(self) -> None:
        """Ask the runner to finish its current batch and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until ``stop()``; Redis errors are retried with backoff, never fatal."""
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                await self._run_once()
                return
            except (RedisError, OSError) as exc:
                log.warning(
                    "consumer %s on %s: %s (retry in %.1fs)",
                    self.consumer,
                    self.sub.stream,
                    exc,
                    backoff,
                )
                await self._pause(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _run_once(self) -> None:
        await self.ensure_group()
        self.ready.set()
        # Lag is refreshed beside the work, so a stuck handler still shows a growing lag.
        stats = asyncio.create_task(self._stats_loop())
        try:
            await self._drain_own_pending()
            next_claim = 0.0
            while not self._stopping.is_set():
                if time.monotonic() >= next_claim:
                    await self.claim_stale()
                    next_claim = time.monotonic() + self.claim_interval_s
                entries = await self._read(">")
                if entries:
                    await self._process(entries, dict.fromkeys((e[0] for e in entries), 1))
        finally:
            stats.cancel()

    async def ensure_group(self) -> None:
        """Create the group at the stream's start (``0``) so no entry is missed; idempotent."""
        try:
            await self._redis.xgroup_create(self.sub.stream, self.sub.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self, start: str) -> list[Entry]:
        """XREADGROUP from ``start`` (``>`` blocks for new entries; an id re-reads own pending)."""
        call = self._redis.xreadgroup(
            self.sub.group,
            self.consumer,
            {self.sub.stream: start},
            count=self.batch_size,
            block=self.block_ms if start == ">" else None,
        )
        if start != ">":
            return _entries(await call)
        read = asyncio.ensure_future(call)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not read.done():
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await read
            return []
        return _entries(read.result())

    async def _drain_own_pending(self) -> None:
        """Handle entries delivered to this consumer name before a crash, before anything new."""
        start = "0"
        while not self._stopping.is_set():
            entries = await self._read(start)
            if not entries:
                return
            counts = await self._delivery_counts([e[0] for e in entries], self.consumer)
            await self._process(entries, counts)
            start = entries[-1][0]

    async def claim_stale(self) -> int:
        """Take over entries idle past ``claim_idle_ms`` (failed or of a dead consumer); DLQ the worn."""
        start, claimed_total = "0-0", 0
        while not self._stopping.is_set():
            reply = await self._redis.xautoclaim(
                self.sub.stream,
                self.sub.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=start,
                count=self.batch_size,
            )
            start = _s(reply[0])
            entries = _entries([[self.sub.stream, reply[1]]])
            deleted = [_s(i) for i in (reply[2] if len(reply) > 2 else [])]
            if deleted:
                await self._redis.xack(self.sub.stream, self.sub.group, *deleted)
            if entries:
                claimed_total += len(entries)
                counts = await self._delivery_counts([e[0] for e in entries], None)
                worn = [e for e in entries if counts.get(e[0], 1) > self.max_deliveries]
                for entry_id, fields in worn:
                    reason = self._errors.pop(entry_id, "consumer died or timed out while handling it")
                    await self._dead_letter(entry_id, fields, reason, counts[entry_id])
                fresh = [e for e in entries if counts.get(e[0], 1) <= self.max_deliveries]
                if fresh:
                    await self._process(fresh, counts)
            if start == "0-0":
                break
        return claimed_total

    async def _delivery_counts(self, ids: list[str], consumer: str | None) -> dict[str, int]:
        if not ids:
            return {}
        rows = await self._redis.xpending_range(
            self.sub.stream,
            self.sub.group,
            min=ids[0],
            max=ids[-1],
            count=max(len(ids) * 4, 100),
            consumername=consumer,
        )
        wanted = set(ids)
        counts = {_s(r["message_id"]): int(r["times_delivered"]) for r in rows}
        return {i: counts.get(i, 1) for i in wanted}

    async def _process(self, entries: list[Entry], counts: dict[str, int]) -> None:
        deliveries: list[Delivery] = []
        skip: list[str] = []
        for entry_id, fields in entries:
            if not fields:  # deleted (trimmed) while pending
                skip.append(entry_id)
                continue
            try:
                envelope = decode_entry(fields)
                event = decode_event(envelope, self.registry)
            except UnknownEventType as exc:
                self._note_unknown(str(exc))
                skip.append(entry_id)
                continue
            except UndecodableEntry as exc:
                await self._dead_letter(entry_id, fields, f"undecodable: {exc}", counts.get(entry_id, 1))
                continue
            if not self.sub.wants(envelope.type):
                skip.append(entry_id)
                continue
            deliveries.append(Delivery(self.sub.stream, entry_id, envelope, event, counts.get(entry_id, 1)))
        if skip:
            self.stats.skipped += len(skip)
            await self._redis.xack(self.sub.stream, self.sub.group, *skip)
        if not deliveries:
            return
        if self.sub.batch is not None:
            if await self._attempt(self.sub.batch, deliveries):
                return
            if len(deliveries) == 1:
                await self._failed(deliveries[0], entries)
                return
            for d in deliveries:  # isolate the entry that breaks the batch
                if not await self._attempt(self.sub.batch, [d]):
                    await self._failed(d, entries)
            return
        for d in deliveries:
            if not await self._attempt(_single(self.sub.handlers[d.envelope.type]), [d]):
                await self._failed(d, entries)

    def _note_unknown(self, event_type: str) -> None:
        """Say once per type that entries are skipped: a newer producer may need a newer consumer."""
        if event_type not in self._unknown_types:
            self._unknown_types.add(event_type)
            log.warning(
                "%s on %s: skipping unknown event type %r", self.sub.group, self.sub.stream, event_type
            )

    async def _attempt(self, handler: BatchHandler, batch: list[Delivery]) -> bool:
        """Run a handler under one span per entry; ack all on success."""
        spans = [self._span(d) for d in batch]
        if tracing_on():
            batch = [dataclasses.replace(d, trace=headers_of(s)) for d, s in zip(batch, spans, strict=True)]
        try:
            if len(spans) == 1:  # one entry: its span is the handler's current span too
                with trace.use_span(
                    spans[0], end_on_exit=False, record_exception=False, set_status_on_exception=False
                ):
                    await handler(batch)
            else:
                await handler(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            for s in spans:
                s.record_exception(exc)
                s.set_status(trace.StatusCode.ERROR)
                s.end()
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.debug("handler failed on %s: %s", self.sub.stream, exc, exc_info=True)
            return False
        for s in spans:
            s.end()
        await self._redis.xack(self.sub.stream, self.sub.group, *(d.entry_id for d in batch))
        self.stats.handled += len(batch)
        return True

    def _span(self, d: Delivery) -> trace.Span:
        parent = extract_context(d.envelope.headers) if d.envelope.headers else None
        return self._tracer.start_span(
            f"process {d.envelope.type}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "redis",
                "messaging.destination.name": self.sub.stream,
                "messaging.consumer.group.name": self.sub.group,
                "messaging.message.id": d.envelope.id,
                "messaging.operation.type": "process",
                SERVICE_ATTR: self.sub.group.partition(".")[0],  # groups are <service>.<purpose>
            },
        )

    async def _failed(self, d: Delivery, entries: list[Entry]) -> None:
        """A handler raised: DLQ if worn out, else leave pending for a later claim."""
        self.stats.failed += 1
        error = self._last_error or "handler failed"
        log.warning(
            "handler failed on %s %s (delivery %d/%d): %s",
            self.sub.stream,
            d.entry_id,
            d.deliveries,
            self.max_deliveries,
            error,
        )
        if d.deliveries >= self.max_deliveries:
            fields = dict(entries).get(d.entry_id)
            await self._dead_letter(d.entry_id, fields, error, d.deliveries)
        else:
            self._errors[d.entry_id] = error

    async def _dead_letter(
        self, entry_id: str, fields: dict[bytes, bytes] | None, error: str, deliveries: int
    ) -> None:
        """Copy the entry to the DLQ with why, and acknowledge it, atomically."""
        record: dict[Any, Any] = dict(fields or {})
        record.update(
            {
                b"dlq.source_stream": self.sub.stream,
                b"dlq.source_id": entry_id,
                b"dlq.group": self.sub.group,
                b"dlq.error": error[:2000],
                b"dlq.deliveries": str(deliveries),
                b"dlq.at": datetime.now(UTC).isoformat(),
            }
        )
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(self.dlq, record)
        pipe.xack(self.sub.stream, self.sub.group, entry_id)
        await pipe.execute()
        self.stats.dead_lettered += 1
        self._errors.pop(entry_id, None)
        log.error("dead-lettered %s %s to %s: %s", self.sub.stream, entry_id, self.dlq, error)

    async def _stats_loop(self) -> None:
        while True:
            try:
                for g in await group_stats(self._redis, self.sub.stream):
                    if g.group == self.sub.group:
                        self.stats.lag, self.stats.pending = g.lag, g.pending
            except RedisError as exc:
                log.debug("lag refresh failed: %s", exc)
            await asyncio.sleep(self.stats_interval_s)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


def _single(handler: Handler) -> BatchHandler:
    async def run(batch: list[Delivery]) -> None:
        await handler(batch[0])

    return run


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(reply: Any) -> list[Entry]:
    """Flatten an XREADGROUP/XAUTOCLAIM reply of one stream into ``(id, fields)`` pairs."""
    if not reply:
        return []
    items = reply[0][1]
    return [(_s(entry_id), fields or None) for entry_id, fields in items]
