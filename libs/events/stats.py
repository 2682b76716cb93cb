"""Stream and consumer-group statistics: length, lag, pending (for metrics and ``fleet streams``)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from opentelemetry import metrics
from redis.exceptions import ResponseError

from .envelope import entry_key


@dataclass(frozen=True)
class GroupStats:
    """One consumer group's position on a stream."""

    stream: str
    group: str
    consumers: int
    pending: int
    lag: int | None
    last_delivered_id: str


@dataclass(frozen=True)
class StreamStats:
    """A stream's length and its groups."""

    stream: str
    length: int
    first_id: str | None
    last_id: str | None
    groups: list[GroupStats]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def group_stats(redis: aioredis.Redis, stream: str) -> list[GroupStats]:
    """XINFO GROUPS as typed records; empty when the stream does not exist."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return []
    out = []
    for g in groups:
        lag = g.get("lag")
        out.append(
            GroupStats(
                stream=stream,
                group=_s(g["name"]),
                consumers=int(g["consumers"]),
                pending=int(g["pending"]),
                lag=None if lag is None else int(lag),
                last_delivered_id=_s(g["last-delivered-id"]),
            )
        )
    return out


async def stream_stats(redis: aioredis.Redis, stream: str) -> StreamStats:
    """Length, first/last ids and groups of one stream."""
    length = int(await redis.xlen(stream))
    first = await redis.xrange(stream, count=1)
    last = await redis.xrevrange(stream, count=1)
    return StreamStats(
        stream=stream,
        length=length,
        first_id=_s(first[0][0]) if first else None,
        last_id=_s(last[0][0]) if last else None,
        groups=await group_stats(redis, stream),
    )


async def oldest_unhandled_ms(redis: aioredis.Redis, stream: str, group: str) -> int | None:
    """The time (ms, from its entry id) of the oldest entry ``group`` has not acknowledged yet.

    That is the oldest pending entry or the first one never delivered; None when the group has
    acknowledged every entry (or neither stream nor entries exist). Everything the stream holds
    from before this time has been handled: a reader of the projection may trust it up to there.
    """
    group_info = next((g for g in await group_stats(redis, stream) if g.group == group), None)
    if group_info is None:  # no group yet: it will start from the first entry
        first = await redis.xrange(stream, count=1)
        return entry_key(_s(first[0][0]))[0] if first else None
    candidates = []
    if group_info.pending:
        summary = await redis.xpending(stream, group)
        if summary.get("min"):
            candidates.append(entry_key(_s(summary["min"]))[0])
    after = await redis.xrange(stream, min=f"({group_info.last_delivered_id}", count=1)
    if after:
        candidates.append(entry_key(_s(after[0][0]))[0])
    return min(candidates) if candidates else None


async def list_streams(redis: aioredis.Redis, prefix: str = "") -> list[str]:
    """Every stream key under a prefix (SCAN with TYPE, so it never blocks Redis)."""
    names = [_s(k) async for k in redis.scan_iter(match=f"{prefix}*", _type="stream", count=500)]
    return sorted(names)


@dataclass(eq=False)
class RunnerStats:
    """A consumer runner's counters and its group's lag, refreshed while it runs."""

    stream: str
    group: str
    consumer: str
    handled: int = 0
    failed: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    lag: int | None = None
    pending: int = 0


_live: weakref.WeakSet[RunnerStats] = weakref.WeakSet()
_instruments: list[Any] = []


def track(stats: RunnerStats) -> None:
    """Export a runner's lag and pending count as OpenTelemetry gauges while it lives."""
    _live.add(stats)
    if _instruments:
        return
    meter = metrics.get_meter("fleet.events")
    _instruments.append(
        meter.create_observable_gauge(
            "fleet.consumer.lag", callbacks=[_observe("lag")], description="entries not yet read by the group"
        )
    )
    _instruments.append(
        meter.create_observable_gauge(
            "fleet.consumer.pending", callbacks=[_observe("pending")], description="read but not acknowledged"
        )
    )


def live_runners() -> list[RunnerStats]:
    """Stats of every runner alive in this process."""
    return list(_live)


def _observe(attr: str) -> Any:
    def callback(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        seen: set[tuple[str, str]] = set()
        for st in list(_live):
            value = getattr(st, attr)
            if value is None or (st.stream, st.group) in seen:
                continue  # several runners of one group report the same group figures
            seen.add((st.stream, st.group))
            attrs = {"messaging.destination.name": st.stream, "messaging.consumer.group.name": st.group}
            yield metrics.Observation(value, attrs)

    return callback


@dataclass(frozen=True)
class GroupFigures:
    """A group's lag (None when Redis cannot tell) and pending count, as last seen."""

    lag: int | None
    pending: int


# What scrapes read from Redis last (a process serving only the API has no runners to ask).
_scraped: dict[tuple[str, str], GroupFigures] = {}
_dlq_lengths: dict[str, int] = {}


def group_figures() -> dict[tuple[str, str], GroupFigures]:
    """Per ``(stream, group)``, the freshest figures: this process's runners, then the last refresh."""
    out = {(st.stream, st.group): GroupFigures(st.lag, st.pending) for st in list(_live)}
    out.update(_scraped)
    return out


def dlq_lengths() -> dict[str, int]:
    """Per dead-letter stream, its length at the last refresh."""
    return dict(_dlq_lengths)


async def refresh(redis: aioredis.Redis, groups: Iterable[tuple[str, str]], dlqs: Iterable[str]) -> None:
    """Read the lag and pending count of ``groups`` and the length of ``dlqs`` from Redis."""
    wanted = set(groups)
    for stream in sorted({s for s, _g in wanted}):
        for g in await group_stats(redis, stream):
            if (stream, g.group) in wanted:
                _scraped[(stream, g.group)] = GroupFigures(g.lag, g.pending)
    for dlq in set(dlqs):
        _dlq_lengths[dlq] = int(await redis.xlen(dlq))
