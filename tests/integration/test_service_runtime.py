"""The service runtime: migrations per schema, /healthz and /readyz (200 ready, 503 otherwise)."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import httpx

from libs.events import migrate
from libs.events.service import ServiceHost, ServiceSpec
from libs.events.settings import ServiceSettings

from ..conftest import REDIS_URL, free_port


def spec(name: str, migrations: Path | None = None) -> ServiceSpec:
    return ServiceSpec(name=name, settings_cls=ServiceSettings, migrations_dir=migrations)


async def get(host: ServiceHost, path: str) -> httpx.Response:
    app = host.build_app(manage_lifespan=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return await c.get(path)


async def test_ready_when_redis_postgres_and_migrations_are(database_url, tmp_path):
    name = f"svc_{uuid.uuid4().hex[:8]}"
    (tmp_path / "0001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    host = ServiceHost(spec(name, tmp_path), ServiceSettings(redis_url=REDIS_URL, database_url=database_url))
    await host.start()
    try:
        assert (await get(host, "/healthz")).json() == {"status": "ok", "service": name}
        resp = await get(host, "/readyz")
        assert resp.status_code == 200
        assert resp.json()["checks"] == {"redis": "ok", "postgres": "ok", "migrations": "ok"}
        assert host.pool is not None
        # the service's tables live in its own schema and its connections find them unqualified
        assert await host.pool.fetchval("SELECT count(*) FROM things") == 0
        assert await host.pool.fetchval("SELECT current_schema()") == name
        # a new migration file makes it not ready until applied
        (tmp_path / "0002_more.sql").write_text("ALTER TABLE things ADD COLUMN x int;")
        resp = await get(host, "/readyz")
        assert resp.status_code == 503
        assert resp.json()["checks"]["migrations"] == "pending: service/0002_more"
    finally:
        await host.stop()


async def test_not_ready_without_redis(database_url):
    name = f"svc_{uuid.uuid4().hex[:8]}"
    dead = f"redis://127.0.0.1:{free_port()}/0"
    host = ServiceHost(spec(name), ServiceSettings(redis_url=dead, database_url=database_url))
    await host.start()
    try:
        resp = await get(host, "/readyz")
        assert resp.status_code == 503
        body = resp.json()
        assert body["status"] == "not_ready"
        assert body["checks"]["redis"].startswith("unreachable")
        assert body["checks"]["postgres"] == "ok"
        assert (await get(host, "/healthz")).status_code == 200
    finally:
        await host.stop()


async def test_migrations_apply_once_even_concurrently(database_url, tmp_path):
    import asyncio

    name = f"svc_{uuid.uuid4().hex[:8]}"
    (tmp_path / "0001_counter.sql").write_text("CREATE TABLE runs (n int); INSERT INTO runs VALUES (1);")
    conns = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate.migrate(c, name, tmp_path) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, len(migrate.discover(tmp_path))]
        assert await conns[0].fetchval(f'SELECT count(*) FROM "{name}".runs') == 1
        assert await migrate.pending(conns[0], name, tmp_path) == []
    finally:
        for c in conns:
            await c.close()


async def test_background_and_worker_tasks_run_until_stop(database_url):
    import asyncio

    ran: list[str] = []

    def task(label: str):
        async def run(stop: asyncio.Event) -> None:
            ran.append(f"{label} started")
            await stop.wait()
            ran.append(f"{label} stopped")

        return run

    name = f"svc_{uuid.uuid4().hex[:8]}"
    spec = ServiceSpec(
        name=name,
        settings_cls=ServiceSettings,
        background=lambda h: [task("bg")],
        workers=lambda h: [task("worker")],
    )
    host = ServiceHost(spec, ServiceSettings(redis_url=REDIS_URL, database_url=database_url))
    await host.start()
    stop = asyncio.Event()
    worker = asyncio.create_task(host.run_worker(stop))
    await asyncio.sleep(0.05)
    assert sorted(ran) == ["bg started", "worker started"]
    stop.set()
    await worker
    await host.stop()
    assert sorted(ran) == ["bg started", "bg stopped", "worker started", "worker stopped"]
