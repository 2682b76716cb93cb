"""Benchmark of the device agent and the fleet simulator. Not a test: prints a markdown table.

One ``fleet up`` process (``python -m fleet up``: auth, device, telemetry, commands and a gateway in
one process) on a free loopback port, against the machine's Redis and Postgres under a key prefix
and a database of its own (removed at the end, also on error or Ctrl-C), with device auth's
per-address limit raised (every simulated agent comes from 127.0.0.1).

(a) One real agent process (``python -m agent``, ``MOCK`` off: psutil metrics) as the seeded demo
device, heartbeat every second (``FLEET_AGENT_HEARTBEAT_INTERVAL_S=1``, and ``heartbeat_interval_s: 1``
in the state dir's ``config.json`` as ``update_config`` leaves it, so the server's 30 s is capped),
default log level (INFO: a line per heartbeat). After ``--warmup`` s, its RSS and USS (sampled every
second) and CPU over ``--agent-seconds``; heartbeats counted by its health endpoint. Then where its
memory goes: the RSS of a fresh interpreter importing each dependency alone, and the Python objects
``tracemalloc`` sees while importing it.

(b) ``fleet simulate --devices N`` (its own process) with the agent sockets sent to ONE separate
gateway process (``python -m services.gateway api``, its own port, same prefix and signing key; the
``fleet up`` process answers auth and stores heartbeats), so the gateway's CPU is its own. Sampled
every second: the simulator's progress line (agents, connected), CPU and RSS of the simulator, the
gateway and ``fleet up``. Heartbeats/s sustained is counted by Redis (``entries-added`` of the
prefix's ``telemetry:heartbeats``) over the window from all connected to the stop.

    .venv/bin/python bench/agent.py [--devices 10000] [--interval 30] [--duration 240]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import redis.asyncio as aioredis
from gateway import GatewayServices, raise_fd_limit
from heartbeat import clean, free_port, machine, wait_ready

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-signing-key-" + "a" * 32
MB = 1024 * 1024
GOALS = {"rss_mb": 30.0, "cpu": 0.01}
IMPORTS = (
    "asyncio",
    "msgspec",
    "psutil",
    "httpx",
    "websockets.asyncio.client",
    "agent.runner",
    "agent.__main__",
)


class Sampler:
    """CPU seconds and memory of one process, sampled on demand (gone: last values kept)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, float, int, int]] = []  # (t, cpu s, rss, uss)

    def sample(self, uss: bool = False) -> tuple[float, float, int, int]:
        with contextlib.suppress(psutil.Error):
            t = self.proc.cpu_times()
            mem = self.proc.memory_full_info() if uss else self.proc.memory_info()
            self.samples.append((time.monotonic(), t.user + t.system, mem.rss, getattr(mem, "uss", 0)))
        return self.samples[-1]

    def cpu_between(self, t0: float, t1: float) -> float:
        """Share of a core used between two sample times."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return float("nan")
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def other_load(ours: set[int]) -> str:
    """The load average and the busiest processes that are not this run's (what else was running)."""
    procs = [
        p for p in psutil.process_iter(["name", "cmdline"]) if p.pid not in ours and p.pid != os.getpid()
    ]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(2)
    busy = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            pct = p.cpu_percent(None)
            if pct >= 3:
                words = " ".join((p.info["cmdline"] or [p.info["name"] or "?"])[:3])
                busy.append((pct, f"{words[:60]} {pct:.0f}%"))
    top = ", ".join(text for _, text in sorted(busy, reverse=True)[:5]) or "nothing over 3 % of a core"
    return f"load average {os.getloadavg()[0]:.2f}; other processes: {top}"


async def start_platform(services: GatewayServices, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """``fleet up`` on a free port; the demo workspace it seeds (``demo.json``)."""
    port = free_port()
    (workdir / "fleet").mkdir()  # with Redis and Postgres given, fleet up creates no data dir
    argv = [sys.executable, "-m", "fleet", "up", "--port", str(port), "--data-dir", str(workdir / "fleet")]
    services.start("fleet-up", argv, env)
    await wait_ready(services, port, "fleet-up", timeout=120)
    demo_file = workdir / "fleet" / "demo.json"
    deadline = time.monotonic() + 60
    while not demo_file.exists() and time.monotonic() < deadline:
        services.check_alive()
        await asyncio.sleep(0.2)
    return {**json.loads(demo_file.read_text()), "port": port}


# --- (a) one agent process ---------------------------------------------------------------------


async def agent_health(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=2) as client:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return dict((await client.get(f"http://127.0.0.1:{port}/health")).json())
    return {}


async def one_agent(args: argparse.Namespace, services: GatewayServices, demo: dict[str, Any], workdir: Path):
    """(a): RSS, USS and CPU of one real agent at 1 heartbeat/s."""
    health = free_port()
    env = {
        **os.environ,
        "FLEET_AGENT_SERVER_URL": f"http://127.0.0.1:{demo['port']}",
        "FLEET_AGENT_DEVICE_ID": demo["device_id"],
        "FLEET_AGENT_DEVICE_SECRET": demo["device_secret"],
        "FLEET_AGENT_STATE_DIR": str(workdir / "agent-state"),
        "FLEET_AGENT_HEARTBEAT_INTERVAL_S": "1",
        "FLEET_AGENT_HEALTH_PORT": str(health),
        "FLEET_AGENT_MOCK": "false",
    }
    # What an operator's update_config leaves in the state dir: it also caps the server's 30 s interval.
    # (FLEET_AGENT_MAX_INTERVAL_S would say the same, but agent.config cannot parse it: no parser for
    # "float | None".)
    (workdir / "agent-state").mkdir(mode=0o700)
    (workdir / "agent-state" / "config.json").write_text('{"heartbeat_interval_s": 1}')
    proc = Sampler(services.start("agent", [sys.executable, "-m", "agent"], env).pid)
    deadline = time.monotonic() + 60
    while (await agent_health(health)).get("heartbeatCount", 0) < 1:
        services.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the agent stored no heartbeat in 60 s:\n{services.tail('agent')}")
        await asyncio.sleep(0.5)
    await asyncio.sleep(args.warmup)
    beats0, t0 = (await agent_health(health))["heartbeatCount"], proc.sample(uss=True)[0]
    while time.monotonic() - t0 < args.agent_seconds:
        await asyncio.sleep(1)
        proc.sample(uss=True)
    beats = (await agent_health(health))["heartbeatCount"] - beats0
    t1 = proc.sample(uss=True)[0]
    services.stop_one("agent")
    return proc, beats, t1 - t0


def import_costs() -> list[tuple[str, float, float]]:
    """Per module: RSS of a fresh interpreter importing it alone, and the Python objects it made.

    Two interpreters each: tracemalloc's own bookkeeping would inflate the RSS of the first.
    """
    rss_of = "int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) * 1024"
    out = []
    for module in ("", *IMPORTS):
        imp = f"import {module}\n" if module else ""
        plain = f"{imp}print({rss_of})"
        traced = f"import tracemalloc; tracemalloc.start()\n{imp}print(tracemalloc.get_traced_memory()[0])"
        rss, py = (
            int(
                subprocess.run(
                    [sys.executable, "-c", c], cwd=ROOT, capture_output=True, text=True, check=True
                ).stdout
            )
            for c in (plain, traced)
        )
        out.append((module or "(bare interpreter)", rss / MB, py / MB))
    return out


def agent_rows(proc: Sampler, beats: int, seconds: float) -> list[list[str]]:
    rss = [s[2] for s in proc.samples]
    uss = [s[3] for s in proc.samples]
    cpu = (proc.samples[-1][1] - proc.samples[0][1]) / seconds
    costs = import_costs()
    bare = costs[0][1]
    detail = "; ".join(
        f"`{m}` +{rss_mb - bare:.1f} MB ({py:.1f} MB Python objects)" for m, rss_mb, py in costs[1:]
    )
    return [
        [
            "(a) agent RSS at 1 heartbeat/s (max over the run)",
            f"{max(rss) / MB:.1f} MB",
            f"USS {max(uss) / MB:.1f} MB; RSS {rss[0] / MB:.1f} -> {rss[-1] / MB:.1f} MB "
            f"over {seconds:.0f} s",
            f"< {GOALS['rss_mb']:.0f} MB {'✅' if max(rss) / MB < GOALS['rss_mb'] else '❌'}",
        ],
        [
            "(a) agent CPU at 1 heartbeat/s",
            f"{cpu:.2%} of a core",
            f"{beats} heartbeats stored in {seconds:.0f} s (health endpoint); psutil metrics; "
            "an INFO log line each",
            f"< 1 % {'✅' if cpu < GOALS['cpu'] else '❌'}",
        ],
        [
            "(a) import cost, fresh interpreter, each alone",
            f"bare {bare:.1f} MB",
            detail,
            "",
        ],
    ]


# --- (b) the simulator against one gateway -----------------------------------------------------

PROGRESS = re.compile(r"agents ([\d,]+)\s+connected ([\d,]+)")


def progress(path: Path) -> tuple[int, int] | None:
    """(agents running, connected) from the simulator's last progress line."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    for line in reversed(lines):
        if m := PROGRESS.search(line):
            return int(m[1].replace(",", "")), int(m[2].replace(",", ""))
    return None


async def heartbeats_added(r: aioredis.Redis, stream: str) -> int:
    with contextlib.suppress(Exception):
        return int((await r.xinfo_stream(stream))["entries-added"])
    return 0


async def simulate(
    args: argparse.Namespace,
    services: GatewayServices,
    demo: dict[str, Any],
    env: dict[str, str],
    workdir: Path,
    r: aioredis.Redis,
    prefix: str,
) -> dict[str, Any]:
    """(b): run ``fleet simulate`` against a gateway process; samples of every process."""
    gw_port = free_port()
    gw_env = {**env, "GATEWAY_PORT": str(gw_port)}
    gateway = Sampler(
        services.start("gateway", [sys.executable, "-m", "services.gateway", "api"], gw_env).pid
    )
    await wait_ready(services, gw_port, "gateway")
    platform_proc = Sampler(services.procs["fleet-up"].pid)
    err, out = workdir / "simulate.stderr", workdir / "simulate.json"
    argv = [sys.executable, "-m", "fleet", "simulate", "--server", f"http://127.0.0.1:{demo['port']}"]
    argv += ["--gateway", f"http://127.0.0.1:{gw_port}", "--devices", str(args.devices), "--json"]
    argv += ["--duration", str(args.duration), "--interval", str(args.interval), "--ramp", str(args.ramp)]
    argv += ["--email", demo["owner_email"], "--reuse", str(workdir / "devices.json"), "--seed", "1"]
    sim_env = {**os.environ, "FLEET_PASSWORD": demo["owner_password"]}
    with err.open("wb") as e, out.open("wb") as o:
        sim = subprocess.Popen(argv, cwd=ROOT, env=sim_env, stdout=o, stderr=e, preexec_fn=raise_fd_limit)
    SIMULATORS.add(sim)
    procs = {"simulator": Sampler(sim.pid), "gateway": gateway, "fleet up": platform_proc}
    m: dict[str, Any] = {"procs": procs, "marks": [], "added": []}
    deadline = time.monotonic() + args.duration + 300
    while sim.poll() is None and time.monotonic() < deadline:
        now = time.monotonic()
        for proc in procs.values():
            proc.sample()
        m["marks"].append((now, progress(err)))
        m["added"].append((now, await heartbeats_added(r, f"{prefix}telemetry:heartbeats")))
        await asyncio.sleep(1)
    if sim.poll() is None:
        sim.kill()
        raise RuntimeError("the simulator did not stop in time")
    SIMULATORS.discard(sim)
    m["summary"] = json.loads(out.read_text().strip().splitlines()[-1])
    m["exit"] = sim.returncode
    m["gateway_rss_after"] = gateway.sample()[2]
    return m


SIMULATORS: set[subprocess.Popen[bytes]] = set()  # killed if the run is interrupted


def window(m: dict[str, Any], devices: int) -> tuple[float, float, bool, float]:
    """The steady window: from all (else 95 % of the peak) connected, +2 s, to the last sample still
    there; whether all connected; the mean connected count in it."""
    marks = [(t, p[1]) for t, p in m["marks"] if p is not None]
    peak = max((c for _, c in marks), default=0)
    floor = devices if peak >= devices else 0.95 * peak
    there = [t for t, c in marks if c >= floor]
    if not there:
        return 0.0, 0.0, False, 0.0
    t0, t1 = there[0] + 2, there[-1]
    inside = [c for t, c in marks if t0 <= t <= t1] or [peak]
    return t0, t1, peak >= devices, sum(inside) / len(inside)


def at_time(proc: Sampler, t: float) -> tuple[float, float, int, int]:
    return min(proc.samples, key=lambda s: abs(s[0] - t))


def sim_rows(args: argparse.Namespace, m: dict[str, Any]) -> list[list[str]]:
    t0, t1, complete, mean_connected = window(m, args.devices)
    procs, s = m["procs"], m["summary"]
    marks = [(t, p) for t, p in m["marks"] if p is not None and p[0] > 0]
    (ta, (a1, _)), (tb, (a2, _)) = marks[0], min(marks, key=lambda tp: abs(tp[0] - t0 + 2))
    sim = procs["simulator"]
    per_agent = (at_time(sim, tb)[2] - at_time(sim, ta)[2]) / max(a2 - a1, 1) / 1024
    gw = procs["gateway"]
    gw_per = (at_time(gw, tb)[2] - gw.samples[0][2]) / max(a2, 1) / 1024
    added = [(t, n) for t, n in m["added"] if t0 <= t <= t1]
    stored, span = (added[-1][1] - added[0][1], added[-1][0] - added[0][0]) if len(added) > 1 else (0, 0.0)
    rate = stored / span if span else float("nan")
    steady = f"{t1 - t0:.0f} s window"
    cpu = {name: p.cpu_between(t0, t1) for name, p in procs.items()}
    ramp_s = s["all_connected_after_s"]
    return [
        [
            f"(b) simulated agents connected to one gateway (`--devices {args.devices}`)",
            f"{s['connected_peak']:,} / {args.devices:,}",
            f"all connected after {ramp_s} s (ramp {args.ramp:g}/s asked)"
            if complete
            else "not all connected",
            "",
        ],
        [
            f"(b) heartbeats/s sustained (interval {args.interval:g} s, {steady})",
            f"{rate:,.0f}/s",
            f"counted by Redis ({stored:,} in {span:.0f} s); {mean_connected:,.0f} connected on average, "
            f"expected {mean_connected / args.interval:,.0f}/s; simulator's own count from all connected "
            f"{s['steady_heartbeats_per_s']}/s; errors {s['errors']} (auth {s['auth_failures']}, heartbeat "
            f"{s['heartbeat_errors']}, disconnects {s['disconnects']}); clean exits {s['clean_exits']:,}",
            "",
        ],
        [
            "(b) CPU over the window, % of a core",
            f"simulator {cpu['simulator']:.0%}, gateway {cpu['gateway']:.0%}",
            f"fleet up (auth, device presence, telemetry writes, its own idle gateway) {cpu['fleet up']:.0%}",
            "",
        ],
        [
            "(b) memory",
            f"simulator {per_agent:.1f} KB per agent",
            f"simulator RSS {max(x[2] for x in sim.samples) / MB:.0f} MB peak; gateway RSS "
            f"{gw.samples[0][2] / MB:.0f} -> {at_time(gw, tb)[2] / MB:.0f} MB ({gw_per:.1f} KB per socket); "
            f"simulator exit code {m['exit']}",
            "",
        ],
    ]


async def run(args: argparse.Namespace, workdir: Path, services: GatewayServices, cleanup: dict[str, Any]):
    """Both parts; the table rows."""
    admin = await asyncpg.connect(args.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{cleanup["db"]}"')
        cleanup["db_created"] = True
    finally:
        await admin.close()
    env = {
        **os.environ,
        "REDIS_URL": args.redis_url,
        "DATABASE_URL": cleanup["db_url"],
        "STREAM_PREFIX": cleanup["prefix"],
        "SIGNING_KEY": KEY,
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        "AUTH_DEVICE_AUTH_ADDRESS_LIMIT": "1000000",  # every simulated agent comes from 127.0.0.1
    }
    demo = await start_platform(services, env, workdir)
    rows: list[list[str]] = []
    if args.agent_seconds > 0:
        rows += agent_rows(*await one_agent(args, services, demo, workdir))
    if args.devices > 0:
        r = aioredis.Redis.from_url(args.redis_url)
        try:
            m = await simulate(args, services, demo, env, workdir, r, cleanup["prefix"])
        finally:
            await r.aclose()
        rows += sim_rows(args, m)
    return rows


def main() -> None:
    """Parse options, run, clean up, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent-seconds", type=float, default=60, help="(a) measured seconds (0: skip)")
    p.add_argument("--warmup", type=float, default=5, help="(a) seconds before measuring")
    p.add_argument("--devices", type=int, default=10_000, help="(b) simulated agents (0: skip)")
    p.add_argument("--interval", type=float, default=30, help="(b) heartbeat interval (the platform default)")
    p.add_argument("--ramp", type=float, default=200, help="(b) agents started per second")
    p.add_argument("--duration", type=float, default=240, help="(b) seconds the simulated agents run")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = p.parse_args()
    raise_fd_limit()
    run_id = uuid.uuid4().hex[:8]
    cleanup: dict[str, Any] = {
        "prefix": f"bench-{run_id}:",
        "db": f"bench_{run_id}",
        "db_url": args.database_url.rsplit("/", 1)[0] + f"/bench_{run_id}",
    }
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = other_load(set())
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        services = GatewayServices(Path(tmp))
        try:
            rows = asyncio.run(run(args, Path(tmp), services, cleanup))
        except KeyboardInterrupt:
            rows = []
        finally:
            for sim in list(SIMULATORS):
                with contextlib.suppress(ProcessLookupError):
                    sim.send_signal(signal.SIGINT)  # its agents say bye; then it exits
                with contextlib.suppress(subprocess.TimeoutExpired):
                    sim.wait(30)
                if sim.poll() is None:
                    sim.kill()
            services.stop()
            asyncio.run(clean(args, cleanup))
    if not rows:
        sys.exit("interrupted: processes stopped, database and keys removed")
    print(
        f"{machine()}, Python {platform.python_version()}, {started}, "
        f"`.venv/bin/python bench/agent.py {' '.join(sys.argv[1:])}`; at the start: {load}\n"
    )
    print("| measure | result | detail | goal |\n|---|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
