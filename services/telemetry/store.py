"""Storage of the telemetry service: the latest-metrics cache (Redis) and the time series (SQL)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from libs.events.envelope import Envelope
from libs.events.pg import Conn
from libs.events.schemas.telemetry import HeartbeatReceived

from .domain import PointRow, reading_time

_decode = msgspec.json.Decoder(HeartbeatReceived).decode
_encode = msgspec.json.Encoder().encode


# Replace each device's cached heartbeat only with one taken at the same time or later. One script
# for the whole batch (one command to pack and parse, not one per device), and atomic, so two writers
# (API replicas, or a late retry) cannot interleave between a read and a write. KEYS are the cache
# keys; ARGV[1] is the TTL, then (time in microseconds, value) per key. A value starts with its time
# (``{"t":<n>,``); a value without it is replaced.
_SET_IF_NEWER = """
local ttl = ARGV[1]
local written = 0
for i, key in ipairs(KEYS) do
  local t, value = tonumber(ARGV[2 * i]), ARGV[2 * i + 1]
  local cached = redis.call('GET', key)
  local old = cached and tonumber(string.match(cached, '^{"t":(%d+)'))
  if not (old and old > t) then
    redis.call('SET', key, value, 'EX', ttl)
    written = written + 1
  end
end
return written
"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LatestCache:
    """``<prefix>telemetry:latest:<device_id>`` holds the device's newest live heartbeat, with a TTL."""

    def __init__(self, redis: aioredis.Redis, prefix: str, ttl_s: int) -> None:
        self.redis, self.prefix, self.ttl_s = redis, prefix, ttl_s
        self._sha = hashlib.sha1(_SET_IF_NEWER.encode()).hexdigest()  # noqa: S324 - Redis names scripts so

    def key(self, device_id: str) -> str:
        """The cache key of one device."""
        return f"{self.prefix}telemetry:latest:{device_id}"

    async def store(
        self,
        items: Sequence[tuple[str, Envelope]],
        _ids: Sequence[str] = (),
        *,
        not_before: datetime | None = None,
    ) -> None:
        """Cache the newest live heartbeat of each device of a written batch, unless the cache holds a
        newer one (one round trip); heartbeats received before ``not_before`` are skipped (by the
        server's clock: a device clock behind must not keep its readings out)."""
        newest: dict[str, tuple[int, HeartbeatReceived]] = {}
        for _stream, env in items:
            event = _decode(env.data)
            if event.backfill:  # an old heartbeat replayed by the agent is not the latest
                continue
            if not_before is not None and event.received_at < not_before:
                continue
            t = (reading_time(event) - _EPOCH) // timedelta(microseconds=1)
            if event.device_id not in newest or newest[event.device_id][0] <= t:
                newest[event.device_id] = (t, event)
        if newest:
            await self._set_if_newer([(self.key(d), t, _cached(t, e)) for d, (t, e) in newest.items()])

    async def _set_if_newer(self, writes: list[tuple[str, int, bytes]]) -> None:
        # EVALSHA; the script is loaded only when Redis says it does not know it (redis-py's
        # registered scripts would ask SCRIPT EXISTS first in a pipeline: a round trip per batch).
        args: list[Any] = [self.ttl_s]
        for _key, t, value in writes:
            args += (t, value)
        keys = [key for key, _t, _v in writes]
        try:
            await self.redis.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.redis.eval(_SET_IF_NEWER, len(keys), *keys, *args)

    async def get(self, device_id: str) -> dict[str, Any] | None:
        """The cached latest heartbeat of a device, or None after the TTL."""
        raw = await self.redis.get(self.key(device_id))
        if raw is None:
            return None
        cached: dict[str, Any] = msgspec.json.decode(raw)
        cached.pop("t", None)
        return cached


def _cached(t: int, event: HeartbeatReceived) -> bytes:
    # "t" first: the script reads it from the start of the value
    return _encode(
        {
            "t": t,
            "metrics": event.metrics,
            "received_at": event.received_at,
            "status": event.status,
            "seq": event.seq,
            "flags": event.flags,
            "dialect": event.dialect,
        }
    )


# The rows of a batch, and the 1-minute and 1-hour rollups of the rows that were new (a retried
# heartbeat is skipped by the primary key or the agent's (seq, sent_at)), in one statement.
_INSERT_POINTS = """
WITH input AS (
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[],
                       $6::timestamptz[], $7::text[], $8::jsonb[], $9::boolean[])
    AS t(event_id, device_id, workspace_id, ts, seq, sent_at, status, metrics, backfill)
), ins AS (
  INSERT INTO heartbeat_metrics (event_id, device_id, workspace_id, ts, seq, sent_at, status, metrics,
                                 backfill)
  SELECT * FROM input ON CONFLICT DO NOTHING
  RETURNING device_id, workspace_id, ts, metrics
), pts AS (
  SELECT i.device_id, i.workspace_id, i.ts, m.key AS name, (m.value::text)::float8 AS v
  FROM ins i, jsonb_each(i.metrics) m
), m1 AS (
  INSERT INTO metric_rollup_1m AS r (device_id, name, bucket, workspace_id, n, total, lo, hi)
  SELECT device_id, name, date_trunc('minute', ts, 'UTC'), min(workspace_id), count(*), sum(v), min(v), max(v)
  FROM pts GROUP BY 1, 2, 3
  ON CONFLICT (device_id, name, bucket) DO UPDATE SET n = r.n + EXCLUDED.n,
    total = r.total + EXCLUDED.total, lo = LEAST(r.lo, EXCLUDED.lo), hi = GREATEST(r.hi, EXCLUDED.hi)
)
INSERT INTO metric_rollup_1h AS r (device_id, name, bucket, workspace_id, n, total, lo, hi)
SELECT device_id, name, date_trunc('hour', ts, 'UTC'), min(workspace_id), count(*), sum(v), min(v), max(v)
FROM pts GROUP BY 1, 2, 3
ON CONFLICT (device_id, name, bucket) DO UPDATE SET n = r.n + EXCLUDED.n,
  total = r.total + EXCLUDED.total, lo = LEAST(r.lo, EXCLUDED.lo), hi = GREATEST(r.hi, EXCLUDED.hi)
"""


async def insert_points(conn: Conn, rows: Sequence[PointRow]) -> None:
    """Write a batch of time-series rows and their rollups (one round trip)."""
    columns = list(zip(*rows, strict=True))
    await conn.execute(_INSERT_POINTS, *(list(c) for c in columns))


_ROLLUPS = {"1m": "metric_rollup_1m", "1h": "metric_rollup_1h"}
_AGG = {"avg": "total / n", "min": "lo", "max": "hi"}
# The first ``limit`` points of each metric in the window: a limit over all metrics together let the
# alphabetically first (or the chattiest) metric take every point and starve the others.
_PER_METRIC = "SELECT name, at, v, bf FROM ({points}) p WHERE p.nth <= $6 ORDER BY name, at"
_RAW_POINTS = (
    "SELECT m.key AS name, h.ts AS at, (m.value::text)::float8 AS v, h.backfill AS bf, "
    "row_number() OVER (PARTITION BY m.key ORDER BY h.ts) AS nth "
    "FROM heartbeat_metrics h, jsonb_each(h.metrics) m "
    "WHERE h.device_id = $1 AND h.workspace_id = $2 AND h.ts >= $3 AND h.ts < $4 "
    "AND ($5::text IS NULL OR m.key = $5)"
)
_ROLLUP_POINTS = (
    "SELECT name, bucket AS at, {agg} AS v, false AS bf, "
    "row_number() OVER (PARTITION BY name ORDER BY bucket) AS nth "
    "FROM {table} WHERE device_id = $1 AND workspace_id = $2 AND bucket >= $3 AND bucket < $4 "
    "AND ($5::text IS NULL OR name = $5)"
)


async def series(
    conn: Conn,
    device_id: str,
    workspace_id: str,
    window: tuple[datetime, datetime],
    *,
    step: str,
    agg: str,
    name: str | None,
    limit: int,
) -> list[tuple[str, datetime, float, bool]]:
    """``(name, time, value, backfilled)`` points of one device, at most ``limit`` per metric, by name
    then time (a rollup bucket mixes live and backfilled readings: never flagged)."""
    start, end = window
    rollup = step != "raw"
    points = _ROLLUP_POINTS.format(agg=_AGG[agg], table=_ROLLUPS[step]) if rollup else _RAW_POINTS
    rows = await conn.fetch(
        _PER_METRIC.format(points=points), device_id, workspace_id, start, end, name, limit
    )
    return [(r[0], r[1], float(r[2]), bool(r[3])) for r in rows]


async def expire(conn: Conn, cutoffs: dict[str, datetime]) -> int:
    """Delete time-series rows older than each table's cutoff; returns rows deleted."""
    deleted = 0
    for table, cutoff in cutoffs.items():
        column = "ts" if table == "heartbeat_metrics" else "bucket"
        status = await conn.execute(f"DELETE FROM {table} WHERE {column} < $1", cutoff)
        deleted += int(status.split()[-1])
    return deleted
