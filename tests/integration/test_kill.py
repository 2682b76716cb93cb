"""Kill test: a projecting consumer SIGKILLed 100 times at random points applies every event once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from libs.events.publisher import Publisher
from libs.events.schemas.telemetry import HeartbeatReceived

from ..conftest import REDIS_URL
from .helpers import eventually

EVENTS = 20_000
KILLS = 100
SCRIPT = Path(__file__).with_name("killable_consumer.py")
ROOT = Path(__file__).resolve().parents[2]


def start(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT)], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"consumer did not start: {line!r}"
    return proc


@pytest.mark.slow
async def test_sigkill_100_times_loses_and_duplicates_nothing(r, prefix, pool, database_url, schema):
    stream = f"{prefix}telemetry:heartbeats"
    pub = Publisher(r, producer="telemetry")
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    for start_at in range(0, EVENTS, 1000):
        await pub.publish_batch(
            stream,
            [
                HeartbeatReceived(
                    device_id=f"d{i % 50}",
                    workspace_id="w",
                    received_at=now,
                    seq=i,
                    metrics={"cpu": 12.5, "memory": 40.0},
                )
                for i in range(start_at, start_at + 1000)
            ],
        )
    env = {
        **os.environ,
        "KILL_STREAM": stream,
        "KILL_REDIS_URL": REDIS_URL,
        "KILL_DATABASE_URL": database_url,
        "KILL_SCHEMA": schema,
        "PYTHONPATH": str(ROOT),
    }
    rng = random.Random(20261125)
    progress = [0]
    for _ in range(KILLS):
        proc = start(env)
        # Kill only a consumer that is working: once this life has committed something, at a
        # random point of what follows (mid-batch, between commit and ack, in a read...).
        await eventually(lambda before=progress[-1]: progressed(pool, before), timeout=30)
        time.sleep(rng.uniform(0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        progress.append(int(await applied_count(pool)))
    assert progress[-1] < EVENTS, "the kills must land while the consumer still has work"

    proc = start(env)  # the survivor finishes the stream
    try:
        await eventually(lambda: applied_count(pool, EVENTS), timeout=120)
        await eventually(lambda: nothing_pending(r, stream), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    rows = await pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT event_id) AS distinct_ids, sum(seq) AS s FROM applied"
    )
    totals = await pool.fetchrow("SELECT n, s FROM totals WHERE id = 1")
    expected_sum = EVENTS * (EVENTS - 1) // 2
    assert rows["n"] == EVENTS, "lost or duplicated effects"
    assert rows["distinct_ids"] == EVENTS
    assert rows["s"] == expected_sum
    assert (totals["n"], totals["s"]) == (EVENTS, expected_sum)
    assert await pool.fetchval("SELECT count(*) FROM processed_events WHERE consumer='test.kill'") == EVENTS


async def applied_count(pool: asyncpg.Pool, equals: int | None = None) -> int | bool:
    n = await pool.fetchval("SELECT coalesce((SELECT n FROM totals WHERE id = 1), 0)")
    return n if equals is None else n == equals


async def progressed(pool: asyncpg.Pool, before: int) -> bool:
    return int(await applied_count(pool)) > before


async def nothing_pending(r: aioredis.Redis, stream: str) -> bool:
    info = await r.xpending(stream, "test.kill")
    return int(info["pending"]) == 0
