"""A consumer process with a Postgres projection, for the kill test (run as a script).

Every event adds one row to ``applied`` (no unique key, so a duplicate effect would show) and its
``seq`` to ``totals``; processed_events in the same transaction makes the effect exactly-once.
Prints ``ready`` once its group exists.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncpg
import redis.asyncio as aioredis

from libs.events.consumer import ConsumerRunner, Subscription
from libs.events.pg import Conn
from libs.events.projection import Delivery, Projection, projection_handler

TABLES = """
CREATE TABLE IF NOT EXISTS applied (event_id uuid NOT NULL, seq int NOT NULL);
CREATE TABLE IF NOT EXISTS totals (id int PRIMARY KEY, n bigint NOT NULL, s bigint NOT NULL);
INSERT INTO totals VALUES (1, 0, 0) ON CONFLICT DO NOTHING;
"""


async def apply(conn: Conn, batch: list[Delivery]) -> None:
    """The projection's effect: one executemany and one update per batch."""
    rows = [(d.envelope.id, d.event.seq) for d in batch]  # type: ignore[attr-defined]
    await conn.executemany("INSERT INTO applied (event_id, seq) VALUES ($1::uuid, $2)", rows)
    await conn.execute(
        "UPDATE totals SET n = n + $1, s = s + $2 WHERE id = 1", len(rows), sum(r[1] for r in rows)
    )


def projection(stream: str) -> Projection:
    return Projection(
        name="test.kill",
        consumer="test.kill",
        streams=(stream,),
        tables=("applied",),
        types=frozenset({"telemetry.heartbeat.v1"}),
        apply=apply,
    )


async def main() -> None:
    env = os.environ
    stream = env["KILL_STREAM"]
    r = aioredis.Redis.from_url(env["KILL_REDIS_URL"])
    pool = await asyncpg.create_pool(
        env["KILL_DATABASE_URL"], min_size=1, max_size=2, server_settings={"search_path": env["KILL_SCHEMA"]}
    )
    await pool.execute(TABLES)
    proj = projection(stream)
    sub = Subscription(stream, "test.kill", batch=projection_handler(pool, proj), batch_types=proj.types)
    runner = ConsumerRunner(r, sub, consumer="killable", batch_size=10, block_ms=200, max_deliveries=10_000)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, runner.stop)
    task = asyncio.create_task(runner.run())
    await runner.ready.wait()
    print("ready", flush=True)
    await task
    await pool.close()
    await r.aclose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
