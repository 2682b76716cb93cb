"""Shared fixtures: isolated Redis key prefixes and Postgres databases on the machine's servers,
and private servers for tests that stop or reconfigure them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

from libs.events import migrate

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def run_id() -> str:
    """A tag unique to this test run (keys, databases)."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session", autouse=True)
def no_keys_left(run_id: str) -> Iterator[None]:
    """At the end of the run, delete every key of this run's prefixes.

    A relay started by a later test publishes the outbox rows that earlier tests left in a shared
    service schema, to those tests' (already cleaned) prefixes; this sweeps them up.
    """
    yield
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"t{run_id}-*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def database_url(run_id: str) -> Iterator[str]:
    """A database of this run's own on the machine's Postgres, dropped at the end."""
    import asyncio

    name = f"fleet_test_{run_id}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def prefix(run_id: str) -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    p = f"t{run_id}-{uuid.uuid4().hex[:6]}:"
    yield p
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{p}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def r() -> AsyncIterator[aioredis.Redis]:
    """An async client of the machine's Redis."""
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def schema() -> str:
    """A Postgres schema name of this test's own."""
    return f"s_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pool(database_url: str, schema: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this run's database with the test's schema migrated (outbox, processed_events)."""
    conn = await asyncpg.connect(database_url)
    await migrate.migrate(conn, schema, None)
    await conn.close()
    p = await asyncpg.create_pool(
        database_url, min_size=1, max_size=5, server_settings={"search_path": schema}
    )
    yield p
    await p.close()


class RedisServer:
    """A private redis-server on a free port (for tests that stop, kill or reconfigure Redis)."""

    def __init__(self, workdir: Path, *, appendonly: bool = True) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not on PATH"
        args = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started private Redis with AOF (``appendfsync always``); stopped afterwards."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
