"""Use-cases of telemetry: accept a heartbeat (append it, with others, to the stream) and read the cache."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.events.batching import BatchingPublisher
from libs.events.http import DeviceCaller
from libs.events.open_commands import OpenCommand
from libs.events.open_commands_feed import OpenCommandsFeed
from libs.events.publisher import Publisher
from libs.events.schemas.telemetry import CommandsPiggybacked
from libs.events.service import ServiceHost
from libs.events.tracing import inject_headers

from . import store as db
from .domain import Beat, ChartQuery, DeviceRateLimit, heartbeat_event
from .store import LatestCache

log = logging.getLogger(__name__)

HEARTBEATS = "telemetry:heartbeats"
PIGGYBACKED = "events:telemetry"  # telemetry.commands_piggybacked: commands handed out in S answers


class Ingest:
    """Heartbeats of every dialect into ``telemetry:heartbeats``; returns once Redis acknowledged them."""

    def __init__(self, host: ServiceHost) -> None:
        assert host.redis is not None, "start the host before serving"
        s = host.settings
        self.stream = host.stream(HEARTBEATS)
        self.publisher = Publisher(host.redis, producer="telemetry")
        self.cache = LatestCache(host.redis, s.stream_prefix, int(getattr(s, "latest_ttl_s", 300)))
        self.limiter = DeviceRateLimit(int(getattr(s, "device_rate_per_s", 10)))
        # per client address: requests whose API key is not in the identity index (each re-reads it)
        self.unknown_keys = DeviceRateLimit(int(getattr(s, "unknown_key_rate_per_s", 10)))
        self.batcher = BatchingPublisher(
            self.publisher,
            max_batch=int(getattr(s, "batch_max", 500)),
            max_delay_s=float(getattr(s, "batch_max_delay_s", 0.002)),
            after_flush=self.cache.store,
            timeout_s=float(getattr(s, "batch_send_timeout_s", 5.0)),
            hard_timeout_s=float(getattr(s, "batch_hard_timeout_s", 30.0)),
        )
        self.redis = host.redis
        self.open_commands = OpenCommandsFeed(host.redis, host.stream("events:commands"))
        self.piggyback_stream = host.stream(PIGGYBACKED)
        self.claim_prefix = host.stream("telemetry:piggybacked:")

    def allow(self, caller: DeviceCaller) -> bool:
        """Whether the device is within its heartbeat rate."""
        return self.limiter.allow(caller.device_id, time.time())

    def allow_unknown_key(self, address: str) -> bool:
        """Whether this client address may have another unknown API key looked up in Redis."""
        return self.unknown_keys.allow(address, time.time())

    async def accept(self, caller: DeviceCaller, beat: Beat) -> datetime:
        """Append one heartbeat; returns its receive time (raises if Redis did not take it)."""
        now = datetime.now(UTC)
        event = heartbeat_event(beat, caller.device_id, caller.workspace_id, now=now)
        await self.batcher.publish(self.stream, self.publisher.envelope(event, occurred_at=now))
        return now

    async def accept_many(self, caller: DeviceCaller, beats: list[Beat]) -> int:
        """Append a backfill batch; every entry acknowledged, or an error (the agent retries all)."""
        now = datetime.now(UTC)
        headers = inject_headers()
        envelopes = [
            self.publisher.envelope(
                heartbeat_event(b, caller.device_id, caller.workspace_id, now=now),
                headers=headers,
                occurred_at=now,
            )
            for b in beats
        ]
        await asyncio.gather(*(self.batcher.publish(self.stream, env) for env in envelopes))
        return len(envelopes)

    async def latest(self, device_id: str) -> dict[str, Any] | None:
        """The cached latest heartbeat of a device."""
        return await self.cache.get(device_id)

    async def piggyback(self, caller: DeviceCaller, now: datetime) -> list[dict[str, Any]]:
        """The device's queued commands to hand out in its dialect S heartbeat answer, oldest first.

        Each command goes out in one answer only: a Redis ``SET NX`` claims it (API replicas and
        concurrent heartbeats race for it), then ``telemetry.commands_piggybacked`` tells the
        commands service it was sent. Costs nothing for a device without open commands.
        """
        queued = self.open_commands.commands.for_device(caller.device_id, now, states=("queued",))
        if not queued:
            return []
        claimed = []
        for c in queued:
            ttl = max(1, int((c.expires_at - now).total_seconds()) + 1)
            if await self.redis.set(self.claim_prefix + c.command_id, b"1", nx=True, ex=ttl):
                claimed.append(c)
        if not claimed:
            return []
        event = CommandsPiggybacked(
            device_id=caller.device_id,
            workspace_id=caller.workspace_id,
            command_ids=[c.command_id for c in claimed],
            at=now,
        )
        try:
            await self.publisher.publish(self.piggyback_stream, event)
        except Exception as exc:  # the device still gets them; the commands service marks them on result
            log.warning("commands handed to %s but not announced: %s", caller.device_id, exc)
        return [s_command(c) for c in claimed]

    async def run(self, stop: asyncio.Event) -> None:
        """Background task of the host: flush until stop, then flush what is queued."""
        self.batcher.start()
        feed = asyncio.create_task(self.open_commands.run(stop), name="open-commands")
        await stop.wait()
        await self.batcher.aclose()
        await feed


def s_command(c: OpenCommand) -> dict[str, Any]:
    """A command in dialect S's shape (the WebSocket ``command`` frame, also used in heartbeat answers)."""
    stamp = c.created_at.isoformat().replace("+00:00", "Z")
    payload = {"id": c.command_id, "type": c.command_type, "parameters": c.parameters, "timestamp": stamp}
    return {
        "type": "command",
        "id": c.command_id,
        "command": c.command_type,
        "parameters": c.parameters,
        "payload": payload,
    }


# One Ingest per running host, shared by its routes and its background task (made on first use,
# because the app is built before the host opens Redis).
_ingests: dict[int, tuple[ServiceHost, Ingest]] = {}


def ingest_of(host: ServiceHost) -> Ingest:
    """The host's Ingest."""
    found = _ingests.get(id(host))
    if found is None or found[0] is not host:
        found = _ingests[id(host)] = (host, Ingest(host))
    return found[1]


async def run_ingest(host: ServiceHost, stop: asyncio.Event) -> None:
    """The host's background task: its batcher runs until the host stops."""
    try:
        await ingest_of(host).run(stop)
    finally:
        _ingests.pop(id(host), None)


class Charts:
    """Time-series reads and retention."""

    def __init__(self, host: ServiceHost) -> None:
        self.host = host

    async def series(self, device_id: str, workspace_id: str, q: ChartQuery) -> dict[str, Any]:
        """Points per metric name: ``{name: [[iso time, value], ...]}``."""
        return (await self.chart(device_id, workspace_id, q))[0]

    async def chart(
        self, device_id: str, workspace_id: str, q: ChartQuery
    ) -> tuple[dict[str, Any], dict[str, list[str]]]:
        """The series, and ``{name: [iso time, ...]}`` of its points that were backfilled."""
        assert self.host.pool is not None
        async with self.host.pool.acquire() as conn:
            rows = await db.series(
                conn,
                device_id,
                workspace_id,
                (q.start, q.end),
                step=q.step,
                agg=q.agg,
                name=q.name,
                limit=q.limit,
            )
        out: dict[str, list[list[Any]]] = {}
        backfilled: dict[str, list[str]] = {}
        for name, at, value, bf in rows:
            iso = at.astimezone(UTC).isoformat()
            out.setdefault(name, []).append([iso, value])
            if bf:
                backfilled.setdefault(name, []).append(iso)
        return out, backfilled

    async def expire_once(self, now: datetime) -> int:
        """Delete rows past each table's retention."""
        s = self.host.settings
        hours = {
            "heartbeat_metrics": float(getattr(s, "raw_retention_h", 168)),
            "metric_rollup_1m": float(getattr(s, "rollup_1m_retention_h", 720)),
            "metric_rollup_1h": float(getattr(s, "rollup_1h_retention_h", 8760)),
        }
        assert self.host.pool is not None
        async with self.host.pool.acquire() as conn:
            return await db.expire(conn, {t: now - timedelta(hours=h) for t, h in hours.items()})

    async def run_expiry(self, stop: asyncio.Event) -> None:
        """Worker task: apply retention every ``timeseries_expiry_interval_s`` until stopped."""
        interval = float(getattr(self.host.settings, "timeseries_expiry_interval_s", 60))
        while not stop.is_set():
            try:
                await self.expire_once(datetime.now(UTC))
            except Exception:
                log.exception("time-series retention failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
