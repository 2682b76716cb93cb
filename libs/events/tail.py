"""Fan-out tail: plain ``XREAD BLOCK`` with its own cursors, no group, so every reader sees everything.

The gateway uses it to push changes to portals; it never tails raw heartbeats.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from .envelope import Envelope, UndecodableEntry, decode_entry


@dataclass(frozen=True, slots=True)
class TailRecord:
    """One entry seen by a tail."""

    stream: str
    entry_id: str
    envelope: Envelope


async def tail(
    redis: aioredis.Redis,
    streams: Sequence[str],
    *,
    start: str = "$",
    block_ms: int = 1000,
    count: int = 500,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[TailRecord]:
    """Yield entries appended to ``streams`` after ``start`` (``$`` = from now) until ``stop`` is set.

    Stopping is checked between reads (at most ``block_ms`` apart) rather than by cancelling a
    blocked read, which redis-py on Python 3.11 may swallow.

    Cursors advance past ``$`` only once an entry arrives, so entries added while the caller is
    busy are not missed. Undecodable entries are skipped (the consumer groups dead-letter them).
    """
    cursors: dict[str, str] = {}
    for s in streams:
        cursors[s] = start
        if start == "$":
            # Resolve "$" now: a later XREAD with "$" would skip what arrives between two calls.
            last = await redis.xrevrange(s, count=1)
            cursors[s] = _s(last[0][0] or b"0-0") if last else "0-0"
    while stop is None or not stop.is_set():
        reply: Any = await redis.xread(cursors, count=count, block=block_ms)  # type: ignore[arg-type]
        for stream_name, entries in reply or []:
            name = _s(stream_name)
            for entry_id, fields in entries:
                eid = _s(entry_id)
                cursors[name] = eid
                try:
                    envelope = decode_entry(fields)
                except UndecodableEntry:
                    continue
                yield TailRecord(name, eid, envelope)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
