"""Every acknowledged heartbeat has exactly one stream entry, under concurrency."""

from __future__ import annotations

import asyncio
from collections import Counter

from .conftest import World


async def test_concurrent_heartbeats_each_have_one_entry(world: World) -> None:
    devices = [await world.device() for _ in range(10)]
    from services.telemetry.handlers import ingest_of

    batcher = ingest_of(world.host).batcher
    flushes_before = batcher.flushes

    async def beat(i: int) -> int:
        dev = devices[i % len(devices)]
        if i % 3 == 0:
            body = {"seq": i, "sent_at": "2026-01-02T03:04:05Z", "metrics": {"cpu": 1}}
            return (await world.post("/api/v1/agent/heartbeat", body, headers=dev.s)).status_code
        if i % 3 == 1:
            body = {"status": "online", "seq": i, "metrics": {"cpu": 1, "seq": i}}
            return (await world.post("/api/v1/device/heartbeat", body, headers=dev.s)).status_code
        body = {"cpu_percent": 1, "extra_metrics": {"seq": i}}
        return (await world.post("/api/v1/analytics/device-metrics", body, headers=dev.k)).status_code

    statuses = await asyncio.gather(*(beat(i) for i in range(300)))
    assert all(s in (200, 201) for s in statuses), Counter(statuses)
    beats = await world.heartbeats()
    assert len(beats) == 300
    seqs = Counter(
        b.seq if b.dialect == "agent" else b.metrics.get("seq", b.metrics.get("extra.seq")) for b in beats
    )
    assert sorted(seqs) == list(range(300)) and set(seqs.values()) == {1}
    assert batcher.flushes - flushes_before < 300  # requests shared round trips
