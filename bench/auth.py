"""Benchmark of identity: device auth (secret -> session) per second, session verification cost,
operator logins per second. Not a test: prints a markdown table.

The auth service runs as a real process (``python -m services.auth api``) on a free loopback port
against the machine's Redis and Postgres, under a key prefix and a database of its own (removed at
the end). Devices are announced by publishing ``device.registered.v1`` with their secrets' hashes,
as the device service does. Rate limits are raised for the run (they would cap a benchmark, by
design). Load comes from this process over keep-alive connections to 127.0.0.1, bounded in count
and time.

    .venv/bin/python bench/auth.py [--devices 2000] [--requests 20000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from libs.events.identity import Claims, IdentityIndex, Signer, new_secret, secret_hash
from libs.events.publisher import Publisher
from libs.events.schemas import auth as A
from libs.events.schemas.device import DeviceRegistered, InitialCredential

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-signing-key-" + "x" * 32


class Conn:
    """A minimal HTTP/1.1 keep-alive client for one loopback connection (the load generator)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, str]) -> tuple[int, bytes]:
        """POST JSON, return (status, body)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        assert self.reader is not None
        self.writer.write(head + payload)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)


async def load(port: int, path: str, bodies: list[dict[str, str]], concurrency: int, deadline: float):
    """Send every body (round-robin over connections) until done or the deadline; latencies in s."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(bodies)

    async def worker() -> None:
        conn = Conn(port)
        for body in queue:
            if time.monotonic() > deadline:
                return
            t = time.perf_counter()
            status, _ = await conn.post(path, body)
            latencies.append(time.perf_counter() - t)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, statuses


def pct(values: list[float], p: float) -> float:
    """The p-th percentile in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def verification_cost(n: int = 100_000) -> float:
    """Microseconds to verify one device session: signature, expiry, revocation checks."""
    signer, ix = Signer(KEY), IdentityIndex()
    for i in range(10_000):  # an index with credentials and revocations, as in a real fleet
        ix.revoked_credentials.add(f"gone-{i}")
        ix.revoked_sessions[f"old-{i}"] = time.time() + 3600
    now = time.time()
    token = signer.issue(
        Claims(typ="device", sub="d1", ws="w", iat=now, exp=int(now) + 86400, jti="s", cid="c")
    )
    started = time.perf_counter()
    for _ in range(n):
        ix.check(signer.verify(token, now=now))
    return (time.perf_counter() - started) / n * 1e6


async def setup(args: argparse.Namespace, prefix: str, db_url: str) -> tuple[list[dict[str, str]], str]:
    """Announce devices with secrets; returns the S auth bodies and an operator password."""
    r = aioredis.Redis.from_url(args.redis_url)
    pub = Publisher(r, producer="bench")
    bodies, events = [], []
    for i in range(args.devices):
        secret = new_secret()
        device_id = f"bench-{i}"
        bodies.append({"deviceId": device_id, "deviceSecret": secret})
        events.append(
            DeviceRegistered(
                device_id=device_id,
                workspace_id="w-bench",
                name=device_id,
                device_type="virtual",
                credentials=[
                    InitialCredential(
                        credential_id=str(uuid.uuid4()), kind="secret", secret_sha256=secret_hash(secret)
                    )
                ],
            )
        )
    for k in range(0, len(events), 500):
        await pub.publish_batch(f"{prefix}events:device", events[k : k + 500])
    await pub.publish(f"{prefix}events:auth", A.WorkspaceCreated(workspace_id="w-bench", name="bench"))
    await r.aclose()
    return bodies, "bench-password-" + uuid.uuid4().hex


def start_auth(args: argparse.Namespace, prefix: str, db_url: str, port: int) -> subprocess.Popen[bytes]:
    """The auth API as its own process, rate limits raised for the benchmark."""
    env = {
        **os.environ,
        "REDIS_URL": args.redis_url,
        "DATABASE_URL": db_url,
        "STREAM_PREFIX": prefix,
        "SIGNING_KEY": KEY,
        "AUTH_PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    for name in ("LOGIN_ACCOUNT", "LOGIN_ADDRESS", "DEVICE_AUTH", "DEVICE_AUTH_ADDRESS"):
        env[f"AUTH_{name}_LIMIT"] = "100000000"
    return subprocess.Popen(
        [sys.executable, "-m", "services.auth", "api"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_ready(port: int, timeout: float = 60) -> None:
    """Poll /readyz until 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            ready = b" 200 " in await reader.readline()
            writer.close()
            if ready:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("auth did not become ready")


async def run(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """All three measurements; returns table rows."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    db = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{db}"')
    db_url = args.database_url.rsplit("/", 1)[0] + f"/{db}"
    port = _free_port()
    proc = start_auth(args, prefix, db_url, port)
    rows = []
    try:
        await wait_ready(port)
        bodies, password = await setup(args, prefix, db_url)
        # warm the index (the first request for each device may catch up from the stream)
        await load(port, "/api/v1/device/auth", bodies, args.concurrency, time.monotonic() + 60)
        work = [bodies[i % len(bodies)] for i in range(args.requests)]
        secs, lat, statuses = await load(
            port, "/api/v1/device/auth", work, args.concurrency, time.monotonic() + args.timeout
        )
        ok = statuses.get(200, 0)
        rows.append(
            (
                "device auth (`POST /api/v1/device/auth`, secret -> session)",
                f"{ok / secs:,.0f} /s",
                f"{len(lat)} requests, {args.concurrency} connections, p50 {pct(lat, 50):.1f} ms, "
                f"p99 {pct(lat, 99):.1f} ms, statuses {statuses}",
            )
        )
        rows.append(
            (
                "session verification (signature + expiry + revocation index)",
                f"{verification_cost():.1f} µs",
                "in-process, per token; no I/O",
            )
        )
        rows.append(await logins(port, password, args))
    finally:
        proc.terminate()
        proc.wait(10)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()
        r = aioredis.Redis.from_url(args.redis_url)
        keys = [k async for k in r.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await r.delete(*keys)
        await r.aclose()
    return rows


async def logins(port: int, password: str, args: argparse.Namespace) -> tuple[str, str, str]:
    """Operator logins per second with the production argon2id cost."""
    conn = Conn(port)
    status, body = await conn.post(
        "/api/v1/auth/bootstrap", {"email": "bench@example.org", "password": password}
    )
    if status != 201:
        raise RuntimeError(f"bootstrap failed: {status} {body[:200]!r}")
    work = [{"email": "bench@example.org", "password": password}] * args.logins
    secs, lat, statuses = await load(port, "/api/v1/auth/login", work, 4, time.monotonic() + args.timeout)
    return (
        "operator login (`POST /api/v1/auth/login`, argon2id t=3 m=64 MiB p=4)",
        f"{statuses.get(200, 0) / secs:,.1f} /s",
        f"{len(lat)} logins, 4 connections, p50 {pct(lat, 50):.0f} ms, p99 {pct(lat, 99):.0f} ms, "
        f"statuses {statuses}",
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    """Parse options, run, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--logins", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per step")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = p.parse_args()
    rows = asyncio.run(run(args))
    print(
        f"nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `bench/auth.py {' '.join(sys.argv[1:])}`\n"
    )
    print("| measure | result | detail |\n|---|---:|---|")
    for name, value, detail in rows:
        print(f"| {name} | {value} | {detail} |")


if __name__ == "__main__":
    main()
