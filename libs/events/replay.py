"""Replay the log (paged XRANGE with filters) and rebuild a projection from it."""

from __future__ import annotations

import asyncio
import gc
import heapq
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .envelope import Envelope, UndecodableEntry, UnknownEventType, decode_entry, decode_event, entry_key
from .projection import Delivery, Projection, quote_ident
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
            start = since_id if start in ("-", "0", "0-0") else max(start, since_id, key=entry_key)
        if self.until is not None:
            until_id = f"{int(self.until.timestamp() * 1000)}-{2**64 - 1}"
            end = until_id if end == "+" else min(end, until_id, key=entry_key)
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
    last: str | None = None
    while True:
        page: Any = await redis.xrange(stream, min=lo, max=hi, count=page_size)
        for entry_id, fields in page:
            last = _s(entry_id)
            if (record := _record(stream, last, fields, flt)) is not None:
                yield record
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
                if (record := _record(stream, cursor, fields, flt)) is not None:
                    yield record


def _record(stream: str, entry_id: str, fields: dict[bytes, bytes], flt: ReplayFilter) -> ReplayRecord | None:
    """The record of an entry if the filter keeps it (undecodable entries are kept, with the error)."""
    if flt.types is not None and fields.get(b"type", b"").decode(errors="replace") not in flt.types:
        return None
    try:
        envelope = decode_entry(fields)
    except UndecodableEntry as exc:
        return ReplayRecord(stream, entry_id, None, str(exc))
    return ReplayRecord(stream, entry_id, envelope) if flt.matches(fields, envelope) else None


Progress = Callable[[int, int], None]


class TrimmedStreams(Exception):
    """A rebuild would start from streams that lost entries (retention): it would forget them."""


async def trimmed(redis: aioredis.Redis, streams: Collection[str]) -> dict[str, tuple[int, int]]:
    """Per stream that lost entries (trimmed or deleted): (entries kept, entries ever added).

    Uses ``entries-added`` (Redis 7); a server without it cannot tell, and nothing is reported.
    """
    out = {}
    for stream in streams:
        try:
            info = await redis.xinfo_stream(stream)
        except ResponseError:  # no such stream: nothing lost
            continue
        added, length = info.get("entries-added"), int(info["length"])
        if added is not None and int(added) > length:
            out[stream] = (length, int(added))
    return out


async def rebuild(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    projection: Projection,
    *,
    registry: Registry = REGISTRY,
    page_size: int = 5000,
    progress: Progress | None = None,
    allow_trimmed: bool = False,
) -> int:
    """Truncate the projection's tables, then replay its streams into it; returns events applied.

    One transaction: readers never see a half-built model, and the live consumer (which locks the
    same tables first) waits, then skips every entry at or below the checkpoint recorded here per
    stream, so nothing is applied twice. Checkpoints replace per-event processed_events rows, and
    the next page is read and decoded while the previous one is written.

    Refuses (TrimmedStreams, nothing touched) when a source stream has lost entries to retention,
    since the rebuilt model would forget what they said, unless ``allow_trimmed``.
    """
    lost = await trimmed(redis, projection.streams)
    if lost and not allow_trimmed:
        what = "; ".join(
            f"{s} keeps {kept:,} of the {added:,} entries it had" for s, (kept, added) in lost.items()
        )
        raise TrimmedStreams(
            f"refusing to rebuild {projection.name!r}: {what}. The rebuilt model would forget what the "
            "trimmed entries said (older history, devices last seen before them). Rebuild anyway with "
            "--allow-trimmed."
        )
    total = sum([int(await redis.xlen(s)) for s in projection.streams])
    wanted = frozenset(t.encode() for t in projection.types)
    seen = applied = 0
    last: dict[str, str] = {}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a rebuild allocates millions of short-lived objects and makes no cycles
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"TRUNCATE {', '.join(quote_ident(t) for t in projection.tables)}")
            await conn.execute("DELETE FROM processed_events WHERE consumer = $1", projection.consumer)
            await conn.execute("DELETE FROM projection_checkpoints WHERE consumer = $1", projection.consumer)
            writing: asyncio.Future[None] | None = None
            batch: list[Delivery] = []
            async for stream, entry_id, fields in _merged(redis, projection.streams, page_size):
                seen += 1
                last[stream] = entry_id
                delivery = _decode(stream, entry_id, fields, wanted, registry)
                if delivery is not None:
                    batch.append(delivery)
                if len(batch) >= page_size:
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(projection.apply(conn, batch))
                    applied, batch = applied + len(batch), []
                    if progress:
                        progress(seen, total)
            if writing is not None:
                await writing
            if batch:
                await projection.apply(conn, batch)
                applied += len(batch)
            await conn.executemany(
                "INSERT INTO projection_checkpoints (consumer, stream, entry_id) VALUES ($1, $2, $3)",
                [(projection.consumer, s, e) for s, e in last.items()],
            )
    finally:
        if gc_was_enabled:
            gc.enable()
    if progress:
        progress(seen, max(total, seen))
    return applied


def _decode(
    stream: str, entry_id: str, fields: dict[bytes, bytes], wanted: frozenset[bytes], registry: Registry
) -> Delivery | None:
    """The delivery of an entry the projection wants; None for other types or undecodable ones."""
    if fields.get(b"type") not in wanted:
        return None
    try:
        envelope = decode_entry(fields)
        return Delivery(stream, entry_id, envelope, decode_event(envelope, registry))
    except (UndecodableEntry, UnknownEventType):
        return None


async def _merged(
    redis: aioredis.Redis, streams: tuple[str, ...], page_size: int
) -> AsyncIterator[tuple[str, str, dict[bytes, bytes]]]:
    """Entries of several streams merged in stream-id (arrival time) order."""
    if len(streams) == 1:
        async for entry_id, fields in _pages(redis, streams[0], page_size):
            yield streams[0], entry_id, fields
        return
    iterators = [_pages(redis, s, page_size) for s in streams]
    heads: list[tuple[tuple[int, int], int, str, dict[bytes, bytes]]] = []
    for i, it in enumerate(iterators):
        first = await anext(it, None)
        if first is not None:
            heapq.heappush(heads, (entry_key(first[0]), i, first[0], first[1]))
    while heads:
        _key, i, entry_id, fields = heapq.heappop(heads)
        yield streams[i], entry_id, fields
        nxt = await anext(iterators[i], None)
        if nxt is not None:
            heapq.heappush(heads, (entry_key(nxt[0]), i, nxt[0], nxt[1]))


async def _pages(
    redis: aioredis.Redis, stream: str, page_size: int
) -> AsyncIterator[tuple[str, dict[bytes, bytes]]]:
    """Every entry of a stream, reading the next page while the caller works on this one."""
    nxt: asyncio.Future[Any] | None = asyncio.ensure_future(
        redis.xrange(stream, min="-", max="+", count=page_size)
    )
    while nxt is not None:
        page = await nxt
        nxt = None
        if len(page) == page_size:
            lo = f"({_s(page[-1][0])}"
            nxt = asyncio.ensure_future(redis.xrange(stream, min=lo, max="+", count=page_size))
        for entry_id, fields in page:
            yield _s(entry_id), fields


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
