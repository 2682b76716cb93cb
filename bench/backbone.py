"""Benchmark of the event backbone (libs/events): publish, consume-and-project, replay, rebuild.

Not a test: it prints a markdown results table. It uses the machine's Redis and Postgres under a
key prefix and a database of its own (``bench-<random>-*`` and ``bench_<random>``), and removes both
at the end, also on error or Ctrl-C.

    .venv/bin/python bench/backbone.py [--events 100000] [--batch 500] [--profile rebuild]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import platform
import pstats
import random
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from libs.events import migrate
from libs.events.consumer import ConsumerRunner, Subscription
from libs.events.pg import Conn
from libs.events.projection import Delivery, Projection, projection_handler
from libs.events.publisher import Publisher
from libs.events.replay import rebuild, replay
from libs.events.schemas import tag_of
from libs.events.schemas.telemetry import HeartbeatReceived
from libs.events.stats import group_stats

TAG = tag_of(HeartbeatReceived)
SCHEMA = "bench"
GROUP = "bench.heartbeat_log"
TABLE_SQL = """
CREATE TABLE heartbeat_log (
    event_id    uuid PRIMARY KEY,
    device_id   text        NOT NULL,
    seq         bigint,
    received_at timestamptz NOT NULL,
    cpu_percent real,
    mem_used_mb integer
)
"""
COLUMNS = ("event_id", "device_id", "seq", "received_at", "cpu_percent", "mem_used_mb")


@dataclass(frozen=True)
class Result:
    """One measured step."""

    step: str
    events: int
    seconds: tuple[float, ...]
    target: int | None = None

    @property
    def rate(self) -> float:
        """Events per second of the median round."""
        return self.events / statistics.median(self.seconds)

    @property
    def best(self) -> float:
        """Events per second of the fastest round."""
        return self.events / min(self.seconds)

    def merge(self, other: Result) -> Result:
        """This step's rounds plus another's."""
        return replace(self, seconds=self.seconds + other.seconds)


@dataclass(frozen=True)
class Env:
    """The run's connections and names."""

    redis: aioredis.Redis
    pool: asyncpg.Pool
    prefix: str
    args: argparse.Namespace

    @property
    def stream(self) -> str:
        """The stream the pipelined publish fills and every later step reads."""
        return f"{self.prefix}telemetry:heartbeats"

    @property
    def single_stream(self) -> str:
        """The stream of the one-by-one publish."""
        return f"{self.prefix}telemetry:heartbeats-single"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000, help="events per step (default 100000)")
    p.add_argument("--single", type=int, default=10_000, help="events of the one-by-one publish step")
    p.add_argument("--batch", type=int, default=500, help="publish batch and consumer read size")
    p.add_argument("--page", type=int, default=5000, help="XRANGE page of replay and rebuild")
    p.add_argument("--devices", type=int, default=2000, help="distinct simulated devices")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a Postgres server (admin) URL; the bench creates and drops its own database there",
    )
    p.add_argument("--repeat", type=int, default=1, help="rounds; the table shows the median and best")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per step")
    p.add_argument("--profile", choices=("single", "pipelined", "consume", "replay", "rebuild"))
    return p.parse_args(argv)


def heartbeats(n: int, devices: int, seed: int = 7) -> list[HeartbeatReceived]:
    """``n`` realistic heartbeats from ``devices`` devices, 30 s apart per device."""
    rng = random.Random(seed)
    ws = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(8)]
    start = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    out = []
    for i in range(n):
        dev, seq = i % devices, i // devices
        at = start + timedelta(seconds=seq * 30, milliseconds=dev)
        out.append(
            HeartbeatReceived(
                device_id=f"dev-{dev:06d}",
                workspace_id=ws[dev % len(ws)],
                received_at=at,
                seq=seq,
                sent_at=at - timedelta(milliseconds=rng.randint(5, 400)),
                metrics=metrics(rng, seq),
            )
        )
    return out


def metrics(rng: random.Random, seq: int) -> dict[str, float | int | str | bool | None]:
    """A Raspberry-Pi-like metrics dict."""
    return {
        "cpu_percent": round(rng.uniform(1, 95), 1),
        "mem_used_mb": rng.randint(300, 3800),
        "mem_total_mb": 3906,
        "disk_used_percent": round(rng.uniform(10, 90), 1),
        "load_1m": round(rng.uniform(0, 4), 2),
        "temperature_c": round(rng.uniform(38, 80), 1),
        "uptime_s": 3600 + seq * 30,
        "agent_version": "0.3.1",
        "throttled": rng.random() < 0.02,
        "wifi_rssi_dbm": rng.choice([None, rng.randint(-85, -35)]),
    }


async def apply_heartbeats(conn: Conn, batch: list[Delivery]) -> None:
    """The projection's effect: one COPY per batch into ``heartbeat_log``."""
    records = []
    for d in batch:
        e = d.event
        assert isinstance(e, HeartbeatReceived)
        cpu, mem = e.metrics.get("cpu_percent"), e.metrics.get("mem_used_mb")
        records.append((d.envelope.id, e.device_id, e.seq, e.received_at, cpu, mem))
    await conn.copy_records_to_table("heartbeat_log", records=records, columns=COLUMNS)


def projection(stream: str) -> Projection:
    """The benchmarked read model."""
    return Projection(
        name="heartbeat_log",
        consumer=GROUP,
        streams=(stream,),
        tables=("heartbeat_log",),
        types=frozenset({TAG}),
        apply=apply_heartbeats,
    )


async def publish_single(env: Env, events: list[HeartbeatReceived]) -> None:
    """``Publisher.publish`` awaited one by one."""
    pub = Publisher(env.redis, producer="telemetry")
    for e in events:
        await pub.publish(env.single_stream, e)


async def publish_pipelined(env: Env, events: list[HeartbeatReceived]) -> None:
    """``Publisher.publish_batch`` in batches (one pipelined round trip each)."""
    pub, size = Publisher(env.redis, producer="telemetry"), env.args.batch
    for i in range(0, len(events), size):
        await pub.publish_batch(env.stream, events[i : i + size])


async def consume(env: Env, n: int) -> None:
    """A ConsumerRunner projecting the stream until the group's lag is 0 and all rows are in."""
    handler = projection_handler(env.pool, projection(env.stream))
    sub = Subscription(env.stream, GROUP, batch=handler, batch_types=frozenset({TAG}))
    runner = ConsumerRunner(
        env.redis, sub, consumer=f"bench-{os.getpid()}", batch_size=env.args.batch, block_ms=200
    )
    task = asyncio.create_task(runner.run())
    try:
        await wait_drained(env.redis, env.stream, GROUP)
    finally:
        runner.stop()
        await task
    await expect_rows(env.pool, n)


async def wait_drained(redis: aioredis.Redis, stream: str, group: str) -> None:
    """Poll XINFO GROUPS until the group has read everything and acknowledged it."""
    while True:
        for g in await group_stats(redis, stream):
            if g.group == group and g.lag == 0 and g.pending == 0:
                return
        await asyncio.sleep(0.005)


async def replay_all(env: Env, n: int) -> None:
    """Iterate the whole stream with ``replay``."""
    seen = 0
    async for rec in replay(env.redis, env.stream, page_size=env.args.page):
        seen += rec.envelope is not None
    check(seen == n, f"replay yielded {seen} envelopes, expected {n}")


async def rebuild_all(env: Env, n: int) -> None:
    """``rebuild`` the projection from the stream."""
    applied = await rebuild(env.pool, env.redis, projection(env.stream), page_size=env.args.page)
    check(applied == n, f"rebuild applied {applied} events, expected {n}")
    await expect_rows(env.pool, n)


async def expect_rows(pool: asyncpg.Pool, n: int) -> None:
    """All projected rows are present."""
    rows = await pool.fetchval("SELECT count(*) FROM heartbeat_log")
    check(rows == n, f"heartbeat_log has {rows} rows, expected {n}")


def check(ok: bool, message: str) -> None:
    """Fail the run loudly (asserts may be stripped)."""
    if not ok:
        raise RuntimeError(message)


async def measure(env: Env, key: str, label: str, work: Callable[[], Awaitable[None]]) -> float:
    """Seconds ``work`` takes, under the time bound; profiled when ``--profile`` names ``key``."""
    print(f"... {label}", file=sys.stderr, flush=True)
    prof = cProfile.Profile() if env.args.profile == key else None
    started = time.perf_counter()
    if prof:
        prof.enable()
    try:
        async with asyncio.timeout(env.args.timeout):
            await work()
    finally:
        if prof:
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    return time.perf_counter() - started


async def run_steps(
    env: Env, events: list[HeartbeatReceived], single: list[HeartbeatReceived]
) -> list[Result]:
    """Every measured step, in order (the later steps read what the pipelined publish wrote)."""
    a, n = env.args, len(events)
    steps: list[tuple[str, str, int, Callable[[], Awaitable[None]], int | None]] = [
        ("single", "publish single (`publish`, awaited one by one)", len(single),
         partial(publish_single, env, single), None),
        ("pipelined", f"publish pipelined (`publish_batch`, {a.batch}/batch)", n,
         partial(publish_pipelined, env, events), 50_000),
        ("consume", f"consume + project to Postgres (runner, {a.batch}/read, COPY)", n,
         partial(consume, env, n), None),
        ("replay", f"replay (whole stream, {a.page}/page)", n, partial(replay_all, env, n), None),
        ("rebuild", f"rebuild projection ({a.page}/page, COPY)", n, partial(rebuild_all, env, n), 50_000),
    ]  # fmt: skip
    results = []
    for key, label, count, work, target in steps:
        results.append(Result(label, count, (await measure(env, key, label, work),), target))
    return results


async def rounds(base: Env) -> list[Result]:
    """``--repeat`` rounds on fresh streams and empty tables, merged per step."""
    a = base.args
    events, single = heartbeats(a.events, a.devices), heartbeats(min(a.single, a.events), a.devices, 8)
    merged: list[Result] = []
    for i in range(a.repeat):
        env = Env(base.redis, base.pool, f"{base.prefix}{i}:", a)
        results = await run_steps(env, events, single)
        await env.redis.delete(env.stream, env.single_stream)
        await env.pool.execute("TRUNCATE heartbeat_log, processed_events")
        merged = results if not merged else [m.merge(r) for m, r in zip(merged, results, strict=True)]
    return merged


def table(results: list[Result]) -> str:
    """The results as a markdown table."""
    lines = [
        "| step | events | seconds (median) | events/s (median) | events/s (best) | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        verdict = "" if r.target is None else f"≥ {r.target:,} {'✅' if r.rate >= r.target else '❌'}"
        seconds = statistics.median(r.seconds)
        lines.append(
            f"| {r.step} | {r.events:,} | {seconds:.2f} | {r.rate:,.0f} | {r.best:,.0f} | {verdict} |"
        )
    return "\n".join(lines)


async def machine(env: Env) -> str:
    """One line describing the machine and the servers."""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    info = await env.redis.info("server")
    pg = await env.pool.fetchval("SHOW server_version")
    return (
        f"nproc {os.cpu_count()}, CPU {cpu}, Python {platform.python_version()}, "
        f"Redis {info['redis_version']}, PostgreSQL {pg}"
    )


async def admin(url: str, sql: str) -> None:
    """Run one statement on the server's admin database."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def database(admin_url: str, name: str) -> AsyncIterator[asyncpg.Pool]:
    """A fresh database with the bench schema migrated; dropped afterwards."""
    await admin(admin_url, f'CREATE DATABASE "{name}"')
    try:
        url = f"{admin_url.rpartition('/')[0]}/{name}"
        conn = await asyncpg.connect(url)
        await migrate.migrate(conn, SCHEMA, None)
        await conn.execute(f'SET search_path TO "{SCHEMA}"; {TABLE_SQL}')
        await conn.close()
        pool = await asyncpg.create_pool(url, min_size=2, max_size=4, server_settings={"search_path": SCHEMA})
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        await admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def redis_prefix(url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client; every key under ``prefix`` is deleted afterwards."""
    client = aioredis.Redis.from_url(url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def main(args: argparse.Namespace) -> None:
    """Set up, measure, print, clean up."""
    run = uuid.uuid4().hex[:10]
    prefix = f"bench-{run}-"
    async with redis_prefix(args.redis_url, prefix) as r, database(args.database_url, f"bench_{run}") as pool:
        env = Env(r, pool, prefix, args)
        results = await rounds(env)
        print(f"{await machine(env)}\n")
        print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `{' '.join(['bench/backbone.py', *sys.argv[1:]])}`\n")
        print(table(results))


if __name__ == "__main__":
    try:
        asyncio.run(main(parse_args()))
    except KeyboardInterrupt:
        sys.exit(130)
