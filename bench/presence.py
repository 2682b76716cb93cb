"""The presence projection alone: heartbeats/s and CPU per heartbeat (worker and Postgres) by batch size.

Runs the device service's real presence handler (``PresenceService.handle``: one transaction per
batch against this run's own database) on pre-built heartbeat deliveries, without HTTP, so what it
prints is the cost of presence itself. Every device already has a presence row (steady state: each
heartbeat moves its deadlines). Prints a Markdown table; the database and streams are removed after.

    .venv/bin/python bench/presence.py [--devices 2000] [--heartbeats 20000] [--batches 10,50,100,250,500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.events.envelope import new_envelope
from libs.events.projection import Delivery
from libs.events.schemas.telemetry import HeartbeatReceived
from libs.events.service import ServiceHost
from services.device.config import Settings
from services.device.consumers import presence_service
from services.device.main import SPEC


def cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


async def main(args: argparse.Namespace) -> None:
    tag = uuid.uuid4().hex[:8]
    db, prefix = f"bench_presence_{tag}", f"bench-presence-{tag}:"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{db}"')
    base = args.database_url.rsplit("/", 1)[0]
    settings = Settings(
        redis_url=args.redis_url, database_url=f"{base}/{db}", stream_prefix=prefix, signing_key="b" * 40
    )
    host = ServiceHost(SPEC, settings)
    try:
        await host.start()
        assert host.pool is not None and host.redis is not None
        ws, now = "ws-bench", datetime.now(UTC)
        ids = [f"dev-{i:06d}" for i in range(args.devices)]
        await host.pool.executemany(
            "INSERT INTO devices (device_id, workspace_id, name, device_type, created_at, updated_at) "
            "VALUES ($1, $2, $1, 'virtual', $3, $3)",
            [(d, ws, now) for d in ids],
        )
        service = presence_service(host)
        stream = prefix + "telemetry:heartbeats"
        seq = {d: 0 for d in ids}
        entry = [int(time.time() * 1000)]

        def deliveries(n: int) -> list[Delivery]:
            out = []
            for k in range(n):
                d = ids[k % len(ids)]
                seq[d] += 1
                entry[0] += 1
                event = HeartbeatReceived(
                    device_id=d,
                    workspace_id=ws,
                    received_at=datetime.now(UTC) + timedelta(microseconds=k),
                    seq=seq[d],
                    metrics={"cpu": 12.5, "memory": 40.0, "uptime": 1000 + k},
                    dialect="agent",
                )
                env = new_envelope(event, producer="telemetry")
                out.append(Delivery(stream, f"{entry[0]}-0", env, event))
            return out

        first = deliveries(len(ids))  # every device's first heartbeat: rows and `online` transitions
        for i in range(0, len(first), 500):
            await service.handle(first[i : i + 500])
        backends = {
            r["pid"] for r in await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", db)
        }
        pg = [p for p in psutil.process_iter() if p.pid in backends]
        me = psutil.Process(os.getpid())
        rows = []
        for size in args.batches:
            todo = deliveries(args.heartbeats)
            c0, p0, t0 = cpu([me]), cpu(pg), time.perf_counter()
            for i in range(0, len(todo), size):
                await service.handle(todo[i : i + size])
            wall, worker, postgres = time.perf_counter() - t0, cpu([me]) - c0, cpu(pg) - p0
            n = len(todo)
            rows.append((size, n / wall, worker / n * 1e6, postgres / n * 1e6, (worker + postgres) / n * 1e6))
        print(f"`.venv/bin/python bench/presence.py --devices {args.devices} --heartbeats {args.heartbeats}`")
        print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}\n")
        print("| batch | heartbeats/s (one worker) | worker CPU µs/hb | Postgres CPU µs/hb | total µs |")
        print("|---:|---:|---:|---:|---:|")
        for size, rate, w, p, t in rows:
            print(f"| {size} | {rate:,.0f} | {w:.0f} | {p:.0f} | {t:.0f} |")
    finally:
        await host.stop()
        keys = [k async for k in host.redis.scan_iter(match=prefix + "*")] if host.redis else []
        if keys and host.redis is not None:
            await host.redis.delete(*keys)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--heartbeats", type=int, default=20000, help="per batch size")
    p.add_argument("--batches", default="10,50,100,250,500", help="batch sizes, comma-separated")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    a = p.parse_args()
    a.batches = [int(x) for x in a.batches.split(",")]
    asyncio.run(main(a))
