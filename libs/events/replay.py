"""Replay the log (paged XRANGE with filters) and rebuild a projection from it."""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from .envelope import Envelope, UndecodableEntry, UnknownEventType, decode_entry, decode_event
from .pg import Conn
from .projection import Delivery, Projection, claim_events
from .schemas import REGISTRY, Registry


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """One entry of a replay; ``envelope`` is None (and ``error`` set) for an undecodable entry."""

    stream: str
    entry_id: str
    envelope: Envelope | None
    error: str | None = None


@dataclass(frozen=True)
class ReplayFilter:
    """Which entries a replay yields; time bounds use the stream id's timestamp (arrival time)."""

    types: Collection[str] | None = None
    device_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def bounds(self, start: str, end: str) -> tuple[str, str]:
        """Narrow XRANGE bounds with the time filter."""
        if self.since is not None:
            since_id = f"{int(self.since.timestamp() * 1000)}-0"
            start = since_id if start in ("-", "0", "0-0") else max(start, since_id, key=_id_key)
        if self.until is not None:
            until_id = f"{int(self.until.timestamp() * 1000)}-{2**64 - 1}"
            end = until_id if end == "+" else min(end, until_id, key=_id_key)
        return start, end

    def matches(self, fields: dict[bytes, bytes], envelope: Envelope) -> bool:
        """Type and device filters (the type is checked on the raw field before decoding)."""
        if self.types is not None and envelope.type not in self.types:
            return False
        return self.device_id is None or envelope.device_id == self.device_id


async def replay(
    redis: aioredis.Redis,
    stream: str,
    *,
    start: str = "-",
    end: str = "+",
    flt: ReplayFilter | None = None,
    page_size: int = 1000,
    follow: bool = False,
    block_ms: int = 1000,
) -> AsyncIterator[ReplayRecord]:
    """Yield entries from ``start`` to ``end`` in order; with ``follow``, keep waiting for new ones."""
    flt = flt or ReplayFilter()
    lo, hi = flt.bounds(start, end)
    wanted = {t.encode() for t in flt.types} if flt.types is not None else None
    last: str | None = None
    while True:
        page: Any = await redis.xrange(stream, min=lo, max=hi, count=page_size)
        for entry_id, fields in page:
            last = _s(entry_id)
            if wanted is not None and fields.get(b"type") not in wanted:
                continue
            try:
                envelope = decode_entry(fields)
            except UndecodableEntry as exc:
                yield ReplayRecord(stream, last, None, str(exc))
                continue
            if flt.matches(fields, envelope):
                yield ReplayRecord(stream, last, envelope)
        if len(page) < page_size:
            break
        lo = f"({last}"
    if not follow:
        return
    cursor = last or (start if start not in ("-", "0") else "0-0")
    while True:
        reply: Any = await redis.xread({stream: cursor}, count=page_size, block=block_ms)
        for _name, entries in reply or []:
            for entry_id, fields in entries:
                cursor = _s(entry_id)
                try:
                    envelope = decode_entry(fields)
                except UndecodableEntry as exc:
                    yield ReplayRecord(stream, cursor, None, str(exc))
                    continue
                if flt.matches(fields, envelope):
                    yield ReplayRecord(stream, cursor, envelope)


Progress = Callable[[int, int], None]


async def rebuild(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    projection: Projection,
    *,
    registry: Registry = REGISTRY,
    page_size: int = 5000,
    progress: Progress | None = None,
) -> int:
    """Truncate the projection's tables and its processed_events rows, then replay the log into it.

    Runs in one transaction: the live consumer of the projection waits on the truncated tables'
    lock, then skips what the rebuild applied (processed_events), so nothing is applied twice and
    readers never see a half-built model. Returns the number of events applied.
    """
    total = sum([int(await redis.xlen(s)) for s in projection.streams])
    seen = applied = 0
    async with pool.acquire() as conn, conn.transaction():
        tables = ", ".join(_ident(t) for t in projection.tables)
        await conn.execute(f"TRUNCATE {tables}")
        await conn.execute("DELETE FROM processed_events WHERE consumer = $1", projection.consumer)
        batch: list[Delivery] = []
        async for stream, entry_id, fields in _merged(redis, projection.streams, page_size):
            seen += 1
            if fields.get(b"type", b"").decode() not in projection.types:
                continue
            try:
                envelope = decode_entry(fields)
                event = decode_event(envelope, registry)
            except (UndecodableEntry, UnknownEventType):
                continue
            batch.append(Delivery(stream, entry_id, envelope, event))
            if len(batch) >= page_size:
                applied += await _apply(conn, projection, batch)
                batch = []
                if progress:
                    progress(seen, total)
        applied += await _apply(conn, projection, batch)
        if progress:
            progress(seen, max(total, seen))
    return applied


async def _apply(conn: Conn, projection: Projection, batch: list[Delivery]) -> int:
    if not batch:
        return 0
    fresh = await claim_events(conn, projection.consumer, [d.envelope.id for d in batch])
    todo = [d for d in batch if d.envelope.id in fresh]
    if todo:
        await projection.apply(conn, todo)
    return len(todo)


async def _merged(
    redis: aioredis.Redis, streams: tuple[str, ...], page_size: int
) -> AsyncIterator[tuple[str, str, dict[bytes, bytes]]]:
    """Entries of several streams merged in stream-id (arrival time) order."""
    iterators = [_pages(redis, s, page_size) for s in streams]
    heads: list[tuple[tuple[int, int], int, str, dict[bytes, bytes]]] = []
    for i, it in enumerate(iterators):
        first = await anext(it, None)
        if first is not None:
            heapq.heappush(heads, (_id_key(first[0]), i, first[0], first[1]))
    while heads:
        _key, i, entry_id, fields = heapq.heappop(heads)
        yield streams[i], entry_id, fields
        nxt = await anext(iterators[i], None)
        if nxt is not None:
            heapq.heappush(heads, (_id_key(nxt[0]), i, nxt[0], nxt[1]))


async def _pages(
    redis: aioredis.Redis, stream: str, page_size: int
) -> AsyncIterator[tuple[str, dict[bytes, bytes]]]:
    lo = "-"
    while True:
        page: Any = await redis.xrange(stream, min=lo, max="+", count=page_size)
        for entry_id, fields in page:
            yield _s(entry_id), fields
        if len(page) < page_size:
            return
        lo = f"({_s(page[-1][0])}"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _ident(name: str) -> str:
    return ".".join(f'"{part}"' for part in name.split("."))


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
