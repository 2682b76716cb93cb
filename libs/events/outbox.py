"""The transactional outbox and its relay (DESIGN.md §2).

A decision service writes its state and ``enqueue``s envelopes in the same transaction. The relay
XADDs committed rows and deletes them. It wakes on LISTEN/NOTIFY (a trigger fires at commit) and
on a timer, holds a session advisory lock so exactly one replica relays a schema at a time, and
publishes through a deduplicating script, so a crash between XADD and DELETE republishes nothing.
A Redis outage only delays events: rows wait in Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .envelope import Envelope, encode_envelope
from .pg import Conn
from .publisher import DEFAULT_DEDUP_WINDOW_S, Publisher, raw_item
from .schemas import Event

log = logging.getLogger(__name__)


async def enqueue(conn: Conn, items: Sequence[tuple[str, Envelope]]) -> None:
    """Add ``(stream, envelope)`` rows to the outbox inside the caller's transaction."""
    if not items:
        return
    await conn.executemany(
        "INSERT INTO outbox (stream, envelope_id, type, envelope) VALUES ($1, $2::uuid, $3, $4)",
        [(stream, env.id, env.type, encode_envelope(env)) for stream, env in items],
    )


class OutboxRelay:
    """Moves committed outbox rows of one schema to their streams, in id order, at least once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        *,
        schema: str,
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
        dedup_window_s: int = DEFAULT_DEDUP_WINDOW_S,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._pool = pool
        self._publisher = Publisher(redis, producer=schema)
        self.schema = schema
        self.channel = f"outbox_{schema}"
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.dedup_window_s = dedup_window_s
        self.max_backoff_s = max_backoff_s
        self.published = 0
        self.is_leader = False
        self._wake = asyncio.Event()
        self._lock_key = zlib.crc32(f"outbox-relay:{schema}".encode())

    async def publish_pending(self) -> int:
        """One pass over committed rows (up to ``batch_size``); returns how many were handled."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, stream, envelope_id::text, type, envelope FROM outbox ORDER BY id LIMIT $1",
                self.batch_size,
            )
            if not rows:
                return 0
            by_stream: dict[str, list[tuple[str, str, bytes]]] = {}
            for r in rows:
                by_stream.setdefault(r["stream"], []).append(
                    (r["envelope_id"], r["type"], bytes(r["envelope"]))
                )
            for stream, items in by_stream.items():
                await self._publisher.publish_once(stream, items, dedup_window_s=self.dedup_window_s)
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
        self.published += len(rows)
        return len(rows)

    async def drain(self) -> int:
        """Publish until the outbox is empty; returns the total."""
        total = 0
        while n := await self.publish_pending():
            total += n
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; survives Redis and Postgres outages with capped backoff."""
        backoff = 0.2
        while not stop.is_set():
            try:
                await self._lead(stop)
                backoff = 0.2
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox relay for %s paused: %s (retry in %.1fs)", self.schema, exc, backoff)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _lead(self, stop: asyncio.Event) -> None:
        conn: Conn = await self._pool.acquire()
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key):
                self.is_leader = False
                if await _sleep_or_stop(stop, self.poll_interval_s):
                    return
            self.is_leader = True
            await conn.add_listener(self.channel, self._on_notify)
            try:
                while not stop.is_set():
                    self._wake.clear()
                    if await self.publish_pending() >= self.batch_size:
                        continue
                    await _wait_any(stop, self._wake, self.poll_interval_s)
            finally:
                await conn.remove_listener(self.channel, self._on_notify)
                await conn.execute("SELECT pg_advisory_unlock($1)", self._lock_key)
        finally:
            self.is_leader = False
            await self._pool.release(conn)  # type: ignore[arg-type]

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if stop was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


@dataclass
class OutboxTx:
    """An open transaction: its connection, and the events it commits with its state."""

    conn: Conn
    publisher: Publisher
    correlation_id: str | None = None
    envelopes: list[Envelope] = field(default_factory=list)

    def emit(self, events: Sequence[Event], headers: dict[str, str] | None = None) -> list[Envelope]:
        """Queue events; they reach the outbox in this transaction (nothing if it rolls back).

        ``headers``: the trace context of what caused them (a delivery's ``trace``); by default
        the current span's.
        """
        meta: dict[str, Any] = {"headers": headers} if headers else {}
        new = [self.publisher.envelope(e, correlation_id=self.correlation_id, **meta) for e in events]
        self.envelopes += new
        return new


class Outbox:
    """A decision service's writes: state and events in one transaction, then published at once.

    The relay remains the guarantee; publishing straight after the commit (deduplicated by envelope
    id, so the relay's later copy is absorbed) lets other services see a new credential or device
    before the caller does, and a Redis outage only falls back to the relay.
    """

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, *, producer: str, stream: str) -> None:
        self.pool, self.stream = pool, stream
        self.publisher = Publisher(redis, producer=producer)

    @contextlib.asynccontextmanager
    async def transaction(self, correlation_id: str | None = None) -> AsyncIterator[OutboxTx]:
        """Yield a transaction; its emitted events are enqueued at commit and published after it."""
        async with self.pool.acquire() as conn, conn.transaction():
            tx = OutboxTx(conn, self.publisher, correlation_id)
            yield tx
            await enqueue(conn, [(self.stream, env) for env in tx.envelopes])
        await self.publish_now(tx.envelopes)

    async def publish_now(self, envelopes: Sequence[Envelope]) -> None:
        """XADD committed envelopes now; on a Redis error the relay delivers them later."""
        if not envelopes:
            return
        try:
            await self.publisher.publish_once(self.stream, [raw_item(e) for e in envelopes])
        except RedisError as exc:
            log.warning(
                "publishing %d events now failed, the relay will: %s", len(envelopes), type(exc).__name__
            )
