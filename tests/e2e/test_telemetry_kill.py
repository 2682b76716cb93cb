"""The time-series writer killed (SIGKILL) and restarted while heartbeats keep arriving, real processes.

Every heartbeat the API acknowledged has exactly one stream entry and, once the restarted worker has
caught up, exactly one time-series row and one count in the rollups: nothing lost, nothing twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
import redis

from libs.events.identity import Claims, Signer

from ..conftest import REDIS_URL, free_port
from .test_presence_processes import KEY, ROOT, wait_ready

DEVICES, SENDERS, KILLS = 12, 4, 4
GROUP = "telemetry.timeseries"


async def per_device(conn: asyncpg.Connection, table: str, devices: list[str]) -> dict[str, int]:
    """Rows per device (time series), or the rollups' count of 'cpu' readings per device."""
    count = "count(*)" if table == "heartbeat_metrics" else "sum(n)"
    where = "" if table == "heartbeat_metrics" else " AND name = 'cpu'"
    rows = await conn.fetch(
        f"SELECT device_id, {count} AS n FROM {table} "
        f"WHERE device_id = ANY($1::text[]){where} GROUP BY device_id",
        devices,
    )
    return {row["device_id"]: int(row["n"]) for row in rows}


@pytest.mark.slow
async def test_worker_killed_mid_stream_loses_and_doubles_nothing(database_url, prefix):
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": database_url,
        "STREAM_PREFIX": prefix,
        "SIGNING_KEY": KEY,
        "PYTHONPATH": str(ROOT),
        "TELEMETRY_PORT": str(port),
        "TELEMETRY_CLAIM_IDLE_MS": "500",  # a killed worker's pending entries are taken over soon
    }

    def start(role: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "services.telemetry", role]
        return subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)

    api, worker = start("api"), start("worker")
    signer, now, ws = Signer(KEY), time.time(), str(uuid.uuid4())
    devices = [f"kill-{uuid.uuid4().hex[:12]}" for _ in range(DEVICES)]
    sessions = {
        d: signer.issue(Claims(typ="device", sub=d, ws=ws, iat=now, exp=int(now) + 600, jti=d, cid="c"))
        for d in devices
    }
    acked = {d: 0 for d in devices}
    lock, stop = threading.Lock(), threading.Event()

    def send(mine: list[str]) -> None:
        seq = dict.fromkeys(mine, 0)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while not stop.is_set():
                for d in mine:
                    seq[d] += 1
                    body = {
                        "seq": seq[d],
                        "sent_at": datetime.now(UTC).isoformat(),
                        "metrics": {"cpu": seq[d] % 100, "memory": 40.0},
                    }
                    r = client.post(
                        "/api/v1/agent/heartbeat", json=body, headers={"X-Device-Session": sessions[d]}
                    )
                    if r.status_code == 200:
                        with lock:
                            acked[d] += 1
                time.sleep(0.01)

    try:
        wait_ready(port, time.monotonic() + 60)
        senders = [
            threading.Thread(target=send, args=(devices[i::SENDERS],), daemon=True) for i in range(SENDERS)
        ]
        for t in senders:
            t.start()
        r = redis.Redis.from_url(REDIS_URL)
        stream = prefix + "telemetry:heartbeats"

        def delivered() -> str:
            groups = r.xinfo_groups(stream) if r.exists(stream) else []
            return next((g["last-delivered-id"].decode() for g in groups if g["name"] == GROUP.encode()), "")

        for _ in range(KILLS):  # kill while entries are read, written and acknowledged
            before, deadline = delivered(), time.monotonic() + 30
            while delivered() == before:  # this life has read entries: the kill interrupts real work
                assert time.monotonic() < deadline, "the restarted worker reads nothing"
                time.sleep(0.05)
            time.sleep(0.2)
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            time.sleep(0.3)
            worker = start("worker")
        time.sleep(1.0)
        stop.set()
        for t in senders:
            t.join(15)
        total = sum(acked.values())
        assert total > 100, "the senders got too few heartbeats through"

        try:
            # one entry per 2xx, no more (counted as added: retention trims what was consumed)
            assert r.xinfo_stream(prefix + "telemetry:heartbeats")["entries-added"] == total
        finally:
            r.close()

        conn = await asyncpg.connect(database_url, server_settings={"search_path": "telemetry"})
        try:
            counts: dict[str, int] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                counts = await per_device(conn, "heartbeat_metrics", devices)
                if sum(counts.values()) >= total:
                    break
                time.sleep(0.2)
            time.sleep(1.0)  # anything applied twice would show up now
            assert await per_device(conn, "heartbeat_metrics", devices) == acked
            assert await per_device(conn, "metric_rollup_1m", devices) == acked  # sum(n) of 'cpu'
            assert await per_device(conn, "metric_rollup_1h", devices) == acked
        finally:
            await conn.close()
    finally:
        stop.set()
        for p in (api, worker):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (api, worker):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
