"""Retention: trim streams only below what every consumer group has acknowledged (DESIGN.md §2).

``telemetry:*`` streams are trimmed by ``MINID`` at the slowest group's safe point. ``events:*``
streams are the replayable log: they are trimmed only when an age limit is configured, and even
then never past any group's safe point. A stream without groups is never trimmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .envelope import entry_key
from .stats import group_stats, list_streams

log = logging.getLogger(__name__)


async def safe_trim_id(redis: aioredis.Redis, stream: str) -> str | None:
    """The lowest id some group still needs: its oldest pending entry, else just past its cursor.

    Entries strictly below the returned id are acknowledged by every group. None: no groups.
    """
    groups = await group_stats(redis, stream)
    if not groups:
        return None
    candidates = []
    for g in groups:
        if g.pending:
            summary = await redis.xpending(stream, g.group)
            oldest = summary.get("min")
            candidates.append(oldest.decode() if isinstance(oldest, bytes) else str(oldest))
        else:
            ms, seq = entry_key(g.last_delivered_id)
            candidates.append(f"{ms}-{seq + 1}")
    return min(candidates, key=entry_key)


async def trim_acknowledged(
    redis: aioredis.Redis, stream: str, *, max_age_s: float | None = None, approximate: bool = True
) -> int:
    """Trim entries every group has acknowledged (and, with ``max_age_s``, older than that).

    Approximate trimming removes whole radix-tree nodes only, so it may keep a few more entries; it
    never removes more. Returns the number of entries removed.
    """
    threshold = await safe_trim_id(redis, stream)
    if threshold is None:
        return 0
    if max_age_s is not None:
        age_id = f"{int((time.time() - max_age_s) * 1000)}-0"
        threshold = min(threshold, age_id, key=entry_key)
    removed: int = await redis.xtrim(stream, minid=threshold, approximate=approximate)
    return removed


@dataclass(frozen=True)
class RetentionPolicy:
    """Which streams to trim: ``telemetry_prefix`` always by acknowledgement; events by age if set."""

    prefix: str = ""
    events_max_age_s: float | None = None
    interval_s: float = 10.0


async def trim_all(redis: aioredis.Redis, policy: RetentionPolicy) -> dict[str, int]:
    """One retention pass over every telemetry stream (and events streams when aged)."""
    removed: dict[str, int] = {}
    names = await list_streams(redis, policy.prefix)
    for name in names:
        kind = name[len(policy.prefix) :]
        if kind.startswith("telemetry:"):
            removed[name] = await trim_acknowledged(redis, name)
        elif kind.startswith("events:") and policy.events_max_age_s is not None:
            removed[name] = await trim_acknowledged(redis, name, max_age_s=policy.events_max_age_s)
    return removed


async def run_retention(
    redis: aioredis.Redis, policy: RetentionPolicy, stop: asyncio.Event, streams: Sequence[str] = ()
) -> None:
    """Trim on a timer until stopped; Redis errors are logged and retried next round."""
    while not stop.is_set():
        try:
            if streams:
                for s in streams:
                    await trim_acknowledged(redis, s)
            else:
                await trim_all(redis, policy)
        except RedisError as exc:
            log.warning("retention pass failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=policy.interval_s)
