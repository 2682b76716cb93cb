"""Benchmark of the heartbeat hot path: heartbeats/s and latency through the telemetry API with the
presence worker running, the ceiling of a bare uvicorn "hello" app, stream-entry accounting,
heartbeat -> ``device.status_changed`` latency and offline detection lag. Not a test: prints a
markdown table.

Real processes on free loopback ports, against the machine's Redis and Postgres under a key prefix
and a database of their own (removed at the end, also on error or Ctrl-C): the telemetry API
(``python -m services.telemetry api``), the device API (devices are created through
``POST /api/v1/devices`` with an operator token minted here) and the device worker (presence, the
outbox relay). Load comes from ``wrk`` (one thread, a Lua script rotating the devices' sessions in
``X-Device-Session``), so the client is compiled code; its CPU is reported. The ceiling is a plain
ASGI callable answering 200, served by its own process with the same uvicorn settings, under the
same wrk command.

Two device worker runs: the first with ``DEVICE_PRESENCE_INTERVAL_S=1`` and
``DEVICE_PRESENCE_TIMEOUT_S=3`` for the status-latency and offline-lag sample (offline detection in
seconds), then, for the load, one with the defaults (30 s / 90 s). With 1 s / 3 s under load, a
presence backlog of a few seconds makes the sweeper report false late/offline transitions (the
known limit in docs/presence.md), whose outbox rows then slow the worker further. The per-device
rate limit is raised (not disabled): wrk sends each device several heartbeats a second.

    .venv/bin/python bench/heartbeat.py [--devices 2000] [--duration 15] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-signing-key-" + "h" * 32
HEARTBEAT_PATH = "/api/v1/device/heartbeat"
BODY = '{"status":"healthy","metrics":{"cpu":12.5,"memory":43.1,"uptime":86400}}'
STATUS_TYPE = b"device.status_changed.v1"
INTERVAL_S, TIMEOUT_S = 1, 3  # presence timing for the run
GOALS = {"rate": 10_000, "p99_ms": 50.0, "status_p99_ms": 100.0, "offline_over_s": 1.0}

WRK_LUA = """
local tokens = {%(tokens)s}
local n = #tokens
local body = '%(body)s'
local cache = {}
local i = 0
request = function()
  i = i %% n + 1
  local r = cache[i]
  if r == nil then
    r = wrk.format("POST", "%(path)s",
      {["Host"] = "127.0.0.1", ["Content-Type"] = "application/json", ["X-Device-Session"] = tokens[i]},
      body)
    cache[i] = r
  end
  return r
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%%d,"duration_us":%%d,"status_errors":%%d,"connect":%%d,"read":%%d,'
    .. '"write":%%d,"timeout":%%d,"p50":%%d,"p90":%%d,"p99":%%d,"p999":%%d,"max":%%d,"mean":%%.1f}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""

HELLO_BODY = b'{"ok":true}'
WRK_RUNNING: set[subprocess.Popen[bytes]] = set()  # killed if the run is interrupted


async def hello(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
    """The ceiling: a plain ASGI callable that reads the body and answers 200 (lifespan handled)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
        }
    )
    await send({"type": "http.response.body", "body": HELLO_BODY})


def serve_hello(port: int, workers: int, access_log: bool) -> None:
    """Serve ``hello`` as the services serve their apps (``libs.events.service.main``'s settings);
    ``access_log=False`` only to show what uvicorn's access log costs."""
    import uvicorn

    from libs.events.service import GracefulServer, configure_logging, run_loop

    configure_logging("INFO")
    if workers > 1:
        uvicorn.run(
            "bench.heartbeat:hello",
            host="127.0.0.1",
            port=port,
            workers=workers,
            loop="uvloop",
            log_level="info",
            access_log=access_log,
        )
        return
    config = uvicorn.Config(hello, host="127.0.0.1", port=port, log_level="info", access_log=access_log)
    run_loop(GracefulServer(config).serve())


# --- helpers -----------------------------------------------------------------------------------


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def cpu_seconds(procs: list[psutil.Process], children: bool = True) -> float:
    """User + system CPU seconds of processes (and their children; gone ones count 0)."""
    total = 0.0
    for p in procs:
        for q in [p, *(_children(p) if children else [])]:
            with contextlib.suppress(psutil.Error):
                t = q.cpu_times()
                total += t.user + t.system
    return total


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


def server_processes(name: str) -> list[psutil.Process]:
    """The machine's processes of one server (read only: for their CPU share)."""
    out = []
    for p in psutil.process_iter(["name"]):
        if (p.info["name"] or "").startswith(name):
            out.append(p)
    return out


def machine() -> str:
    """nproc and CPU model."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"nproc {os.cpu_count()}, CPU {model}"


class Services:
    """The processes this run started (and only those), with their logs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> psutil.Process:
        """Start one process in its own session (a Ctrl-C reaches us, and we stop it)."""
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return psutil.Process(proc.pid)

    def check_alive(self) -> None:
        """Fail with the log's tail if a process died."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        """The end of a process's log."""
        with contextlib.suppress(OSError):
            return "\n".join((self.workdir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop_one(self, name: str) -> None:
        """SIGTERM one process and wait for it (SIGKILL after 10 s)."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        """SIGTERM each process we started, then SIGKILL what is still there after 10 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def wait_ready(services: Services, port: int, name: str, timeout: float = 90) -> None:
    """Poll /readyz (or / for the hello app) until 200."""
    deadline = time.monotonic() + timeout
    path = "/" if name.startswith("hello") else "/readyz"
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            services.check_alive()
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"http://127.0.0.1:{port}{path}")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{name} not ready on port {port} after {timeout} s:\n{services.tail(name)}")


# --- wrk ---------------------------------------------------------------------------------------


def write_lua(path: Path, tokens: list[str]) -> None:
    """The wrk script: POST a dialect S heartbeat, rotating over the devices' sessions."""
    path.write_text(
        WRK_LUA % {"tokens": ",".join(f'"{t}"' for t in tokens), "body": BODY, "path": HEARTBEAT_PATH}
    )


def run_wrk(port: int, lua: Path, duration: float, connections: int) -> dict[str, Any]:
    """``wrk -t1 -c<connections> -d<duration>s --latency``; its summary and its own CPU seconds."""
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(lua),
        f"http://127.0.0.1:{port}{HEARTBEAT_PATH}",
    ]
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        WRK_RUNNING.add(proc)
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            WRK_RUNNING.discard(proc)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
    summary: dict[str, Any] = json.loads(line[6:])
    summary["ok"] = summary["requests"] - summary["status_errors"]
    summary["rate"] = summary["ok"] / (summary["duration_us"] / 1e6)
    summary["wrk_cpu"] = (usage.ru_utime + usage.ru_stime) / wall
    summary["wall"] = wall
    summary["text"] = text
    return summary


async def wrk_with_cpu(
    port: int, lua: Path, duration: float, connections: int, watched: dict[str, list[psutil.Process]]
) -> dict[str, Any]:
    """Run wrk in a thread; CPU share (of one core) of each watched group over the same window."""
    # a server's group lists its processes (Postgres' postmaster is every backend's parent)
    before = {k: cpu_seconds(v, "(" not in k) for k, v in watched.items()}
    t0 = time.perf_counter()
    result = await asyncio.to_thread(run_wrk, port, lua, duration, connections)
    wall = time.perf_counter() - t0
    result["cpu"] = {k: (cpu_seconds(v, "(" not in k) - before[k]) / wall for k, v in watched.items()}
    return result


# --- the run -----------------------------------------------------------------------------------


class StatusWatch:
    """Follows ``events:device`` from its current end; when each device's transitions arrive."""

    def __init__(self, r: aioredis.Redis, stream: str) -> None:
        self.r, self.stream = r, stream
        self.seen: dict[tuple[str, str], float] = {}  # (device_id, status) -> perf_counter
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Note the stream's last id now (as ``$`` would), then read from it in the background."""
        last = await self.r.xrevrange(self.stream, count=1)
        start = last[0][0] if last else b"0-0"
        self._task = asyncio.create_task(self._follow(start))

    async def _follow(self, last: bytes) -> None:
        while True:
            batches = await self.r.xread({self.stream: last}, count=1000, block=1000)
            now = time.perf_counter()
            for _stream, entries in batches or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if fields.get(b"type") != STATUS_TYPE:
                        continue
                    data = json.loads(fields[b"envelope"])["data"]
                    key = (data["device_id"], data["status"])
                    self.seen.setdefault(key, now)
                    self.events.setdefault(key, data)
            self.changed.set()

    async def until(self, keys: list[tuple[str, str]], timeout: float) -> None:
        """Wait until every key was seen, or the timeout."""
        deadline = time.monotonic() + timeout
        while not all(k in self.seen for k in keys) and time.monotonic() < deadline:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.5)

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def create_devices(port: int, operator: str, n: int, prefix: str) -> list[str]:
    """Register ``n`` devices through the device API as an operator; their ids."""
    ids: list[str] = []
    queue = iter(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in queue:
            r = await client.post(
                f"http://127.0.0.1:{port}/api/v1/devices",
                json={"name": f"{prefix}{i}", "device_type": "virtual"},
                headers={"Authorization": f"Bearer {operator}"},
            )
            if r.status_code != 201:
                raise RuntimeError(f"device creation: {r.status_code} {r.text[:300]}")
            ids.append(r.json()["device_id"])

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(8)))
    return ids


async def status_sample(
    port: int, sessions: dict[str, str], watch: StatusWatch, gap_s: float
) -> tuple[list[float], list[float], int]:
    """One heartbeat per fresh device, ``gap_s`` apart; heartbeat -> online latencies (s), offline
    lags after the heartbeat's answer (s), and the number of devices whose events never came."""
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        for device_id, token in sessions.items():
            t = time.perf_counter()
            r = await client.post(
                f"http://127.0.0.1:{port}{HEARTBEAT_PATH}",
                content=BODY,
                headers={"X-Device-Session": token, "Content-Type": "application/json"},
            )
            if r.status_code != 200:
                raise RuntimeError(f"sample heartbeat: {r.status_code} {r.text[:300]}")
            sent[device_id], acked[device_id] = t, time.perf_counter()
            await asyncio.sleep(gap_s)
    online = [(d, "online") for d in sessions]
    await watch.until(online, 10)
    offline = [(d, "offline") for d in sessions]
    await watch.until(offline, TIMEOUT_S + 5)
    on = [watch.seen[k] - sent[k[0]] for k in online if k in watch.seen]
    off = [watch.seen[k] - acked[k[0]] for k in offline if k in watch.seen]
    missing = sum(k not in watch.seen for k in online + offline)
    return on, off, missing


async def load_sample(
    port: int, sessions: dict[str, str], watch: StatusWatch, window_s: float
) -> tuple[list[float], int]:
    """Heartbeats of fresh devices spread over ``window_s`` (while wrk runs); online latencies."""
    sent: dict[str, float] = {}
    gap = window_s / max(1, len(sessions))
    async with httpx.AsyncClient(timeout=5) as client:
        for device_id, token in sessions.items():
            t = time.perf_counter()
            r = await client.post(
                f"http://127.0.0.1:{port}{HEARTBEAT_PATH}",
                content=BODY,
                headers={"X-Device-Session": token, "Content-Type": "application/json"},
            )
            if r.status_code == 200:
                sent[device_id] = t
            await asyncio.sleep(gap)
    keys = [(d, "online") for d in sent]
    await watch.until(keys, 15)
    return [watch.seen[k] - sent[k[0]] for k in keys if k in watch.seen], len(sessions) - sum(
        k in watch.seen for k in keys
    )


async def presence_lag(r: aioredis.Redis, stream: str, stop: asyncio.Event) -> int:
    """The presence group's largest lag (entries not yet read) while ``stop`` is unset."""
    worst = 0
    while not stop.is_set():
        for g in await r.xinfo_groups(stream):
            if g["name"] in (b"device.presence", "device.presence"):
                worst = max(worst, int(g.get("lag") or 0) + int(g["pending"]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    return worst


async def table_writes(db_url: str) -> dict[str, int]:
    """Rows inserted + updated so far per table of this run's database (``schema.table``)."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT schemaname || '.' || relname AS t, n_tup_ins + n_tup_upd AS w FROM pg_stat_user_tables"
        )
    finally:
        await conn.close()
    return {row["t"]: int(row["w"]) for row in rows}


async def presence_drain(r: aioredis.Redis, stream: str, timeout: float = 120) -> float | None:
    """Seconds until the presence group has read and acknowledged the whole heartbeats stream."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        groups = await r.xinfo_groups(stream)
        g = next((g for g in groups if g["name"] in (b"device.presence", "device.presence")), None)
        if g is not None and (g.get("lag") in (0, None)) and g["pending"] == 0:
            return time.perf_counter() - started
        await asyncio.sleep(0.05)
    return None


async def run(
    args: argparse.Namespace, workdir: Path, services: Services, cleanup: dict[str, Any]
) -> list[list[str]]:
    """Every measurement; returns table rows."""
    prefix = cleanup["prefix"]
    db_url = cleanup["db_url"]
    admin = await asyncpg.connect(args.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{cleanup["db"]}"')
        cleanup["db_created"] = True
    finally:
        await admin.close()
    ports = {name: free_port() for name in ("telemetry", "device", "hello", "hello-quiet")}
    env = {
        **os.environ,
        "REDIS_URL": args.redis_url,
        "DATABASE_URL": db_url,
        "STREAM_PREFIX": prefix,
        "SIGNING_KEY": KEY,
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        "TELEMETRY_PORT": str(ports["telemetry"]),
        "DEVICE_PORT": str(ports["device"]),
        "TELEMETRY_DEVICE_RATE_PER_S": "1000000",  # raised, still counted on every request
    }
    short = {**env, "DEVICE_PRESENCE_INTERVAL_S": str(INTERVAL_S)}
    short["DEVICE_PRESENCE_TIMEOUT_S"] = str(TIMEOUT_S)
    py = sys.executable
    telemetry_argv = [py, "-m", "services.telemetry", "api"]
    if args.workers > 1:
        helptext = subprocess.run(
            [*telemetry_argv, "--help"], env=env, cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout
        if "--workers" not in helptext:
            raise RuntimeError(
                "`python -m services.telemetry api` has no --workers option; run with --workers 1"
            )
        telemetry_argv += ["--workers", str(args.workers)]
    tele = services.start("telemetry", telemetry_argv, env)
    dev_api = services.start("device-api", [py, "-m", "services.device", "api"], env)
    worker_argv = [py, "-m", "services.device", "worker"]
    services.start("device-worker-short", worker_argv, short)
    hello_argv = [py, str(Path(__file__).resolve()), "--workers", str(args.workers), "--serve-hello"]
    hello_p = services.start("hello", [*hello_argv, str(ports["hello"])], env)
    quiet_p = services.start("hello-quiet", [*hello_argv, str(ports["hello-quiet"]), "--no-access-log"], env)
    for name, port in (
        ("telemetry", ports["telemetry"]),
        ("device-api", ports["device"]),
        ("hello", ports["hello"]),
        ("hello-quiet", ports["hello-quiet"]),
    ):
        await wait_ready(services, port, name)

    signer, now, ws = _signer(), time.time(), str(uuid.uuid4())
    from libs.events.identity import Claims

    operator = signer.issue(
        Claims(
            typ="operator",
            sub="bench-op",
            ws=ws,
            iat=now,
            exp=int(now) + 7200,
            jti=uuid.uuid4().hex,
            roles={ws: "owner"},
        )
    )
    t = time.perf_counter()
    ids = await create_devices(ports["device"], operator, args.devices + 2 * args.sample, "bench-")
    created_s = time.perf_counter() - t
    print(f"created {len(ids)} devices in {created_s:.1f} s", file=sys.stderr)

    def session(device_id: str) -> str:
        return signer.issue(
            Claims(
                typ="device",
                sub=device_id,
                ws=ws,
                iat=now,
                exp=int(now) + 7200,
                jti=uuid.uuid4().hex,
                cid="bench",
            )
        )

    load_ids = ids[: args.devices]
    idle_sample = {d: session(d) for d in ids[args.devices : args.devices + args.sample]}
    busy_sample = {d: session(d) for d in ids[args.devices + args.sample :]}
    lua = workdir / "heartbeat.lua"
    write_lua(lua, [session(d) for d in load_ids])

    r = aioredis.Redis.from_url(args.redis_url)
    cleanup["redis"] = r
    watch = StatusWatch(r, f"{prefix}events:device")
    await watch.start()
    rows: list[list[str]] = []
    heartbeats = f"{prefix}telemetry:heartbeats"
    try:
        # 1. heartbeat -> device.status_changed on an idle system, then the offline deadline
        print(f"status latency and offline lag: {args.sample} fresh devices", file=sys.stderr)
        on, off, missing = await status_sample(ports["telemetry"], idle_sample, watch, args.sample_gap)
        services.check_alive()

        # 2. the ceiling: bare uvicorn "hello" under the same wrk command
        services.stop_one("device-worker-short")
        dev_worker = services.start("device-worker", worker_argv, env)
        redis_procs = server_processes("redis-server")
        print("ceiling: hello app", file=sys.stderr)
        await asyncio.to_thread(run_wrk, ports["hello"], lua, 2, args.connections)
        ceiling = await wrk_with_cpu(
            ports["hello"], lua, args.duration, args.connections, {"server": [hello_p]}
        )
        await asyncio.to_thread(run_wrk, ports["hello-quiet"], lua, 2, args.connections)
        quiet = await wrk_with_cpu(
            ports["hello-quiet"], lua, args.duration, args.connections, {"server": [quiet_p]}
        )

        # 3. heartbeats through the telemetry API, presence worker running
        print(f"warm-up: {args.warmup} s of heartbeats", file=sys.stderr)
        await asyncio.to_thread(run_wrk, ports["telemetry"], lua, args.warmup, args.connections)
        await presence_drain(r, heartbeats)
        await asyncio.sleep(1)
        services.check_alive()
        xlen_before = await r.xlen(heartbeats)
        print(
            f"load: {args.duration} s, {args.connections} connections, {len(load_ids)} devices",
            file=sys.stderr,
        )
        admin = await asyncpg.connect(args.database_url)
        try:
            pids = await admin.fetch("SELECT pid, datname FROM pg_stat_activity")
        finally:
            await admin.close()
        ours = {row["pid"] for row in pids if row["datname"] == cleanup["db"]}
        pg_procs = server_processes("postgres")
        watched = {
            "telemetry API": [tele],
            "device worker": [dev_worker],
            "device API": [dev_api],
            "Redis (shared)": redis_procs,
            "Postgres (this run's connections)": [p for p in pg_procs if p.pid in ours],
            "Postgres (other processes: postmaster, WAL writer, other databases)": [
                p for p in pg_procs if p.pid not in ours
            ],
        }
        writes_before = await table_writes(db_url)
        side = asyncio.create_task(load_sample(ports["telemetry"], busy_sample, watch, args.duration * 0.8))
        lag_stop = asyncio.Event()
        lag_task = asyncio.create_task(presence_lag(r, heartbeats, lag_stop))
        beat = await wrk_with_cpu(ports["telemetry"], lua, args.duration, args.connections, watched)
        lag_stop.set()
        worst_lag = await lag_task
        busy_on, busy_missing = await side
        writes = {k: v - writes_before.get(k, 0) for k, v in (await table_writes(db_url)).items()}
        await asyncio.sleep(1)  # requests in flight at wrk's cut-off land
        xlen_after = await r.xlen(heartbeats)
        drain = await presence_drain(r, heartbeats)
        services.check_alive()
    finally:
        await watch.stop()
        await r.aclose()

    growth = xlen_after - xlen_before - len(busy_sample)
    in_flight = growth - beat["ok"]
    backed = 0 <= in_flight <= args.connections
    non2xx = beat["status_errors"]
    sock = {k: beat[k] for k in ("connect", "read", "write", "timeout") if beat[k]}
    ms = lambda us: f"{us / 1000:.1f} ms"  # noqa: E731
    ok_rate = beat["rate"] >= GOALS["rate"] and beat["p99"] / 1000 < GOALS["p99_ms"]
    rows.append(
        [
            "heartbeats, dialect S (`POST /api/v1/device/heartbeat`), presence worker running",
            f"{beat['rate']:,.0f} /s",
            f"p50 {ms(beat['p50'])}, p99 {ms(beat['p99'])}, max {ms(beat['max'])}; {beat['ok']:,} 2xx, "
            f"{non2xx} non-2xx{', socket errors ' + str(sock) if sock else ''}; wrk CPU "
            f"{beat['wrk_cpu']:.0%} of a core",
            f"≥ 10,000 /s, p99 < 50 ms {'✅' if ok_rate else '❌'}",
        ]
    )
    rows.append(
        [
            'ceiling: bare uvicorn "hello" ASGI app (same uvicorn settings, same wrk command)',
            f"{ceiling['rate']:,.0f} /s",
            f"p50 {ms(ceiling['p50'])}, p99 {ms(ceiling['p99'])}; {ceiling['status_errors']} non-2xx; "
            f"server CPU {ceiling['cpu']['server']:.0%}, wrk CPU {ceiling['wrk_cpu']:.0%} of a core",
            "",
        ]
    )
    rows.append(
        [
            '"hello" with uvicorn\'s access log off (what the per-request log line costs)',
            f"{quiet['rate']:,.0f} /s",
            f"p50 {ms(quiet['p50'])}, p99 {ms(quiet['p99'])}; {quiet['status_errors']} non-2xx; "
            f"server CPU {quiet['cpu']['server']:.0%}, wrk CPU {quiet['wrk_cpu']:.0%} of a core",
            "",
        ]
    )
    rows.append(
        [
            "every 2xx backed by a stream entry",
            f"{beat['ok']:,} 2xx / {growth:,} entries",
            f"XLEN `telemetry:heartbeats` grew {growth:,} during the load run (sampler heartbeats "
            f"excluded); {in_flight:+,} = in flight at wrk's cut-off (allowed 0..{args.connections})",
            "✅" if backed else "❌",
        ]
    )
    cpu = beat["cpu"]
    rows.append(
        [
            "CPU during the load run (share of one core; 2 cores = 200%)",
            f"telemetry {cpu['telemetry API']:.0%}",
            ", ".join(f"{k} {v:.0%}" for k, v in cpu.items() if k != "telemetry API")
            + f", wrk {beat['wrk_cpu']:.0%}",
            "",
        ]
    )
    busy = {k: v for k, v in sorted(writes.items(), key=lambda kv: -kv[1]) if v}
    rows.append(
        [
            "presence worker during the load run",
            f"lag ≤ {worst_lag:,} entries",
            "largest backlog of group `device.presence` (unread + pending), sampled every 0.25 s; "
            + (f"caught up {drain:.1f} s after the run" if drain is not None else "not caught up in 120 s")
            + "; Postgres rows written (inserted + updated) per 2xx heartbeat: "
            + ", ".join(f"`{k}` {v / max(1, beat['ok']):.2f}" for k, v in busy.items()),
            "",
        ]
    )

    def lat_row(name: str, values: list[float], n: int, miss: int) -> list[str]:
        if not values:
            return [name, "no events", f"{n} devices, {miss} events missing", "❌"]
        p99 = pct(values, 99) * 1000
        return [
            name,
            f"p50 {pct(values, 50) * 1000:.1f} ms, p99 {p99:.1f} ms",
            f"{len(values)} fresh devices, max {max(values) * 1000:.1f} ms, {miss} events missing",
            f"p99 < 100 ms {'✅' if p99 < GOALS['status_p99_ms'] and not miss else '❌'}",
        ]

    rows.append(
        lat_row("heartbeat -> `device.status_changed` online (idle system)", on, len(idle_sample), missing)
    )
    rows.append(
        lat_row(
            "heartbeat -> `device.status_changed` online (during the load run)",
            busy_on,
            len(busy_sample),
            busy_missing,
        )
    )
    if off:
        over = [x - TIMEOUT_S for x in off]
        rows.append(
            [
                f"offline detection lag (interval {INTERVAL_S} s, timeout {TIMEOUT_S} s), minus the timeout",
                f"p50 {pct(over, 50) * 1000:.0f} ms, p99 {pct(over, 99) * 1000:.0f} ms",
                f"{len(off)} devices, from the heartbeat's 200 to the `offline` event; "
                f"max {max(over) * 1000:.0f} ms",
                f"≤ timeout + 1 s {'✅' if max(over) <= GOALS['offline_over_s'] else '❌'}",
            ]
        )
    else:
        rows.append(["offline detection lag", "no offline events", "", "❌"])
    return rows


def _signer() -> Any:
    from libs.events.identity import Signer

    return Signer(KEY)


async def clean(args: argparse.Namespace, cleanup: dict[str, Any]) -> None:
    """Drop the database and delete the run's keys."""
    if cleanup.get("db_created"):
        admin = await asyncpg.connect(args.database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{cleanup["db"]}" WITH (FORCE)')
        finally:
            await admin.close()
    r = cleanup.get("redis") or aioredis.Redis.from_url(args.redis_url)
    try:
        keys = [k async for k in r.scan_iter(match=f"{cleanup['prefix']}*", count=1000)]
        for k in range(0, len(keys), 500):
            await r.delete(*keys[k : k + 500])
    finally:
        await r.aclose()


def main() -> None:
    """Parse options, run, clean up, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=2000, help="devices wrk rotates over")
    p.add_argument("--duration", type=float, default=15, help="seconds of each measured wrk run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="telemetry API processes (if it takes --workers)")
    p.add_argument("--warmup", type=float, default=3, help="seconds of heartbeats before the measured run")
    p.add_argument("--sample", type=int, default=100, help="fresh devices per status-latency sample")
    p.add_argument("--sample-gap", type=float, default=0.02, help="seconds between sample heartbeats")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--serve-hello", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--no-access-log", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_hello:
        serve_hello(args.serve_hello, args.workers, not args.no_access_log)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    run_id = uuid.uuid4().hex[:8]
    cleanup: dict[str, Any] = {
        "prefix": f"bench-{run_id}:",
        "db": f"bench_{run_id}",
        "db_url": args.database_url.rsplit("/", 1)[0] + f"/bench_{run_id}",
    }
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # SIGTERM ends the run like Ctrl-C: the finally blocks stop the processes and clean up
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="bench-heartbeat-") as tmp:
        services = Services(Path(tmp))
        try:
            rows = asyncio.run(run(args, Path(tmp), services, cleanup))
        except KeyboardInterrupt:
            rows = []
        finally:
            for proc in list(WRK_RUNNING):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            services.stop()
            cleanup.pop("redis", None)  # its loop is gone; clean with a fresh client
            asyncio.run(clean(args, cleanup))
    if not rows:
        sys.exit("interrupted: processes stopped, database and keys removed")
    print(
        f"{machine()}, Python {platform.python_version()}, {started}, "
        f"`.venv/bin/python bench/heartbeat.py {' '.join(sys.argv[1:])}`\n"
    )
    print("| measure | result | detail | goal |\n|---|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
