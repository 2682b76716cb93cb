"""Deliveries, handler types, idempotency records and projections (shared by live and rebuild)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from .envelope import Envelope, entry_key
from .pg import Conn
from .schemas import Event


@dataclass(frozen=True, slots=True)
class Delivery:
    """One decoded stream entry handed to a handler."""

    stream: str
    entry_id: str
    envelope: Envelope
    event: Event
    deliveries: int = 1
    # W3C headers of the consumer span handling it: what the handler emits because of this entry
    # carries them, so the trace goes on (empty when tracing is off).
    trace: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Delivery], Awaitable[None]]
BatchHandler = Callable[[list[Delivery]], Awaitable[None]]
ApplyBatch = Callable[[Conn, list[Delivery]], Awaitable[None]]


async def claim_event(conn: Conn, consumer: str, event_id: str) -> bool:
    """Record that ``consumer`` handled ``event_id``; False if it already had (skip the effect).

    Call inside the transaction that applies the effect, so both commit or neither does.
    """
    row = await conn.fetchval(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2::uuid) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        consumer,
        event_id,
    )
    return row is not None


async def claim_events(conn: Conn, consumer: str, event_ids: Sequence[str]) -> set[str]:
    """Batch form of :func:`claim_event`: the subset of ids not processed before."""
    if not event_ids:
        return set()
    rows = await conn.fetch(
        "INSERT INTO processed_events (consumer, event_id) "
        "SELECT $1, id FROM unnest($2::uuid[]) AS t(id) "
        "ON CONFLICT DO NOTHING RETURNING event_id::text",
        consumer,
        list(event_ids),
    )
    return {r[0] for r in rows}


@dataclass(frozen=True)
class Projection:
    """A read model fed from streams; the same ``apply`` serves the live consumer and rebuilds."""

    name: str
    consumer: str
    streams: tuple[str, ...]
    tables: tuple[str, ...]
    types: frozenset[str]
    apply: ApplyBatch


def quote_ident(name: str) -> str:
    """Quote a (possibly schema-qualified) table name we control."""
    return ".".join(f'"{part}"' for part in name.split("."))


async def checkpoints(conn: Conn, consumer: str) -> dict[str, tuple[int, int]]:
    """Per stream, the last entry a rebuild of this consumer's projection applied."""
    rows = await conn.fetch(
        "SELECT stream, entry_id FROM projection_checkpoints WHERE consumer = $1", consumer
    )
    return {r["stream"]: entry_key(r["entry_id"]) for r in rows}


async def unapplied(
    conn: Conn, tables: tuple[str, ...], consumer: str, batch: list[Delivery], *, claim: bool = True
) -> list[Delivery]:
    """The deliveries a projection's transaction must still apply, claimed for ``consumer``.

    Takes the projection's tables first, as a rebuild does: a rebuild in progress then makes this
    wait before it touches processed_events, instead of deadlocking with it. Then skips entries at
    or below the rebuild checkpoints and those already processed. ``claim=False`` is for a
    projection that is idempotent by itself (it keeps its own per-key stream positions): no
    processed_events rows are written for it.
    """
    await conn.execute(f"LOCK TABLE {', '.join(quote_ident(t) for t in tables)} IN ROW EXCLUSIVE MODE")
    done = await checkpoints(conn, consumer)
    batch = [d for d in batch if d.stream not in done or entry_key(d.entry_id) > done[d.stream]]
    if not claim:
        return batch
    fresh = await claim_events(conn, consumer, [d.envelope.id for d in batch])
    return [d for d in batch if d.envelope.id in fresh]


def projection_handler(pool: asyncpg.Pool, projection: Projection) -> BatchHandler:
    """A batch handler applying each new event once: effect and processed_events in one tx."""

    async def handle(batch: list[Delivery]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            todo = await unapplied(conn, projection.tables, projection.consumer, batch)
            if todo:
                await projection.apply(conn, todo)

    return handle
