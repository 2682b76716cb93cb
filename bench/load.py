"""Headless locust (bench/locustfile.py) against a platform on 127.0.0.1: requests/s, failures,
p50/p95/p99 and the CPU of the client and the machine, as a markdown table. Not a test.

Locust runs as a subprocess (it patches the standard library through gevent), bounded by ``-t`` and
a hard timeout. By default nothing is started: the target is ``--url`` (``$FLEET_URL``, default
http://127.0.0.1:8080, e.g. ``fleet up``), which must be loopback. The operator comes from
``$FLEET_TOKEN`` or ``$FLEET_EMAIL`` + ``$FLEET_PASSWORD``, else from ``--demo-json`` (``fleet up``'s
``.fleet/demo.json``). With ``--layout`` it starts the platform itself on free ports, with its own
database and key prefix on the machine's Postgres and Redis, and removes all of it at the end:
``fleet-up`` (one process) or ``processes`` (auth API, device API and worker, telemetry API: the
per-process layout of bench/heartbeat.py, whose helpers it reuses).

    .venv/bin/python bench/load.py [--url URL] [--max] [--users N] [--duration S] [--layout L]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import ipaddress
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
DEFAULT_URL = "http://127.0.0.1:8080"
POOL_LINE = "pool: "  # what the locustfile logs once the pool is ready (the load starts)
RAISED = "1000000"  # rate limits raised (still counted) on a platform started here


class UsageError(Exception):
    """Bad arguments: exit code 2."""


def check_loopback(url: str) -> str:
    """``url`` if it is http(s) to a loopback address without credentials; else UsageError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not an http(s) URL: {url!r}")
    if parts.username or parts.password or parts.query:
        raise UsageError("no credentials or query in the target URL: secrets go in the environment")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(f"load goes to loopback only (127.0.0.1, ::1, localhost), not {host!r}")
    return url.rstrip("/")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options; defaults that depend on the mode are filled in (users, spawn rate)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("FLEET_URL", DEFAULT_URL), help="target (loopback)")
    p.add_argument("--layout", choices=("none", "fleet-up", "processes"), default="none")
    p.add_argument("--max", action="store_true", help="no wait: maximum throughput")
    p.add_argument("--interval", type=float, default=30, help="seconds between a device's heartbeats")
    p.add_argument("--devices", type=int, default=1000, help="pool size")
    p.add_argument("--users", type=int, help="locust users (default: 64 with --max, else --devices)")
    p.add_argument(
        "--spawn-rate",
        type=float,
        help="users started per second (default: users / interval; --max: users, at most 100)",
    )
    p.add_argument("--duration", type=float, default=60, help="seconds of load (locust -t)")
    p.add_argument("--timeout", type=float, help="hard limit on locust (default: duration + 360 s)")
    p.add_argument("--wrk", action="store_true", help="with --layout: then wrk, same platform and pool size")
    p.add_argument("--demo-json", default=".fleet/demo.json", help="fleet up's demo login, if no env")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="for --layout")
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = p.parse_args(argv)
    args.url = check_loopback(args.url)
    for name in ("devices", "duration", "interval"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name} must be positive")
    if args.users is None:
        args.users = 64 if args.max else args.devices
    if args.users <= 0:
        raise UsageError("--users must be positive")
    if args.spawn_rate is None:  # paced: one interval's spawn spreads the phases (a steady rate)
        args.spawn_rate = float(min(args.users, 100)) if args.max else args.users / args.interval
    if args.wrk and args.layout == "none":
        raise UsageError("--wrk needs --layout (its device logins need the raised rate limit)")
    if args.timeout is None:
        args.timeout = args.duration + 360
    if args.timeout < args.duration + 120:
        raise UsageError("--timeout must leave at least 120 s beyond --duration (setup, shutdown)")
    return args


def locust_argv(args: argparse.Namespace, host: str, csv_prefix: Path) -> list[str]:
    """The locust command line (no secret in it: those go in the environment)."""
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        f"{args.spawn_rate:.6g}",
        "-t",  # a bound on locust itself; FLEET_RUN_S ends the load after the setup
        f"{round(args.timeout)}s",
        "--stop-timeout",
        "5",
        "--host",
        host,
        "--csv",
        str(csv_prefix),
        "--only-summary",
    ]


@dataclass
class Stats:
    """The aggregated row of locust's ``<prefix>_stats.csv`` and the non-2xx rows by name."""

    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float
    max: float
    by_name: dict[str, int]


def parse_stats(text: str) -> Stats:
    """Locust's stats CSV (ms, rounded by locust: whole ms below 100 ms) -> Stats."""
    rows = list(csv.DictReader(text.splitlines()))
    agg = next((r for r in rows if r["Name"] == "Aggregated"), None)
    if agg is None:
        raise ValueError("no Aggregated row in the stats CSV")

    def num(row: dict[str, str], key: str) -> float:
        value = row.get(key) or "0"
        return 0.0 if value == "N/A" else float(value)

    return Stats(
        requests=int(num(agg, "Request Count")),
        failures=int(num(agg, "Failure Count")),
        rps=num(agg, "Requests/s"),
        p50=num(agg, "50%"),
        p95=num(agg, "95%"),
        p99=num(agg, "99%"),
        max=num(agg, "Max Response Time"),
        by_name={r["Name"]: int(num(r, "Request Count")) for r in rows if r["Name"] != "Aggregated"},
    )


def operator_env(args: argparse.Namespace) -> dict[str, str]:
    """The operator's login for the locustfile: env as given, else from fleet up's demo.json."""
    if os.environ.get("FLEET_TOKEN") or (os.environ.get("FLEET_EMAIL") and os.environ.get("FLEET_PASSWORD")):
        return {}
    path = Path(args.demo_json)
    try:
        demo = json.loads(path.read_text())
        return {"FLEET_EMAIL": demo["owner_email"], "FLEET_PASSWORD": demo["owner_password"]}
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(
            f"no operator: set FLEET_TOKEN or FLEET_EMAIL + FLEET_PASSWORD, or --demo-json "
            f"({path}: {type(exc).__name__})"
        ) from None


# --- running locust, with CPU sampled over the load window --------------------------------------


class Sampler(threading.Thread):
    """Every 0.25 s: (time, locust CPU s, server CPU s, machine busy CPU s)."""

    def __init__(self, locust_pid: int, servers: list[Any]) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.servers = psutil, servers
        self.locust = psutil.Process(locust_pid)
        self.samples: list[tuple[float, float, float, float]] = []
        self.stop = threading.Event()

    def _cpu(self, procs: list[Any]) -> float:
        total = 0.0
        for p in procs:
            with contextlib.suppress(self.psutil.Error):
                for q in [p, *p.children(recursive=True)]:
                    with contextlib.suppress(self.psutil.Error):
                        t = q.cpu_times()
                        total += t.user + t.system
        return total

    def run(self) -> None:
        """Sample until stopped (or the locust process is gone)."""
        while not self.stop.wait(0.25):
            t = self.psutil.cpu_times()
            busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
            locust = self._cpu([self.locust])
            if not self.locust.is_running():
                return
            self.samples.append((time.monotonic(), locust, self._cpu(self.servers), busy))

    def window(self, t0: float, t1: float) -> dict[str, float]:
        """CPU shares (1.0 = one core) of locust, the servers and the machine between t0 and t1."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return {}
        a, b = inside[0], inside[-1]
        wall = b[0] - a[0]
        return {
            "locust": (b[1] - a[1]) / wall,
            "servers": (b[2] - a[2]) / wall,
            "machine": (b[3] - a[3]) / wall,
        }


def machine_busy(seconds: float) -> float:
    """The machine's busy CPU (1.0 = one core) over ``seconds``."""
    import psutil

    def busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    b0, t0 = busy(), time.monotonic()
    time.sleep(seconds)
    return (busy() - b0) / (time.monotonic() - t0)


def run_locust(
    args: argparse.Namespace, host: str, env: dict[str, str], workdir: Path, servers: list[Any]
) -> tuple[Stats, dict[str, float], str]:
    """Run locust to its end (or the hard timeout); its stats, CPU shares, and its log."""
    log_path = workdir / "locust.log"
    prefix = workdir / "locust"
    idle = machine_busy(2.0)  # what else runs on the shared cores, before any load
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            locust_argv(args, host, prefix),
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sampler = Sampler(proc.pid, servers)
    sampler.start()
    t_load = None
    deadline = time.monotonic() + args.timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline + 30:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                raise RuntimeError(f"locust killed after the hard timeout of {args.timeout:g} s")
            if t_load is None and POOL_LINE in log_path.read_text(errors="replace"):
                t_load = time.monotonic()
                print(f"load started: {args.duration:g} s", file=sys.stderr)
            time.sleep(0.2)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        sampler.stop.set()
    text = log_path.read_text(errors="replace")
    stats_csv = Path(f"{prefix}_stats.csv")
    if proc.returncode not in (0, 1) or not stats_csv.exists() or t_load is None:
        setup = [line for line in text.splitlines() if "setup failed" in line]
        tail = "\n".join(setup or text.splitlines()[-40:])
        raise RuntimeError(f"locust failed (exit {proc.returncode}):\n{tail}")
    cpu = sampler.window(t_load, t_load + args.duration)
    if cpu:
        cpu["before"] = idle
    return parse_stats(stats_csv.read_text()), cpu, text


# --- the platform, when --layout asks for it ----------------------------------------------------


async def start_layout(
    args: argparse.Namespace, services: Any, cleanup: dict[str, Any], workdir: Path
) -> tuple[str, dict[str, str], list[Any]]:
    """Start the platform; (heartbeat URL, env for the locustfile, server processes)."""
    import asyncpg
    import heartbeat as hb

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
        "SIGNING_KEY": secrets.token_hex(32),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        # raised, not disabled: the pool logs in from one address; max mode beats each device often
        "AUTH_DEVICE_AUTH_ADDRESS_LIMIT": RAISED,
        "TELEMETRY_DEVICE_RATE_PER_S": RAISED,
    }
    py = sys.executable
    if args.layout == "fleet-up":
        port = hb.free_port()
        data = workdir / "fleet"
        data.mkdir()  # with external Redis and Postgres, fleet up creates no data directory
        proc = services.start(
            "fleet-up", [py, "-m", "fleet", "up", "--port", str(port), "--data-dir", str(data)], env
        )
        await hb.wait_ready(services, port, "fleet-up")
        demo = await _wait_file(services, data / "demo.json")
        url = f"http://127.0.0.1:{port}"
        return url, {"FLEET_EMAIL": demo["owner_email"], "FLEET_PASSWORD": demo["owner_password"]}, [proc]
    ports = {name: hb.free_port() for name in ("auth", "device", "telemetry")}
    env.update({f"{k.upper()}_PORT": str(v) for k, v in ports.items()})
    procs = [
        services.start("auth-api", [py, "-m", "services.auth", "api"], env),
        services.start("device-api", [py, "-m", "services.device", "api"], env),
        services.start("device-worker", [py, "-m", "services.device", "worker"], env),
        services.start("telemetry", [py, "-m", "services.telemetry", "api"], env),
    ]
    for name, port in (
        ("auth-api", ports["auth"]),
        ("device-api", ports["device"]),
        ("telemetry", ports["telemetry"]),
    ):
        await hb.wait_ready(services, port, name)
    operator = await _bootstrap(ports["auth"])
    return (
        f"http://127.0.0.1:{ports['telemetry']}",
        {
            **operator,
            "FLEET_AUTH_URL": f"http://127.0.0.1:{ports['auth']}",
            "FLEET_DEVICE_URL": f"http://127.0.0.1:{ports['device']}",
        },
        procs,
    )


async def _wait_file(services: Any, path: Path, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.check_alive()
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(path.read_text()))
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{path} did not appear in {timeout:g} s")


async def _bootstrap(auth_port: int) -> dict[str, str]:
    """The first operator of the fresh database (``POST /api/v1/auth/bootstrap``)."""
    import httpx

    email, password = "load@fleet.local", secrets.token_urlsafe(18)
    async with httpx.AsyncClient(timeout=60) as client:
        r = await client.post(
            f"http://127.0.0.1:{auth_port}/api/v1/auth/bootstrap",
            json={"email": email, "password": password, "workspace_name": "Load"},
        )
    if r.status_code != 201:
        raise RuntimeError(f"bootstrap refused: HTTP {r.status_code} {r.text[:200]}")
    return {"FLEET_EMAIL": email, "FLEET_PASSWORD": password}


# --- main -----------------------------------------------------------------------------------------


def table(
    args: argparse.Namespace,
    stats: Stats,
    cpu: dict[str, float],
    argv: list[str],
    wrk: dict[str, Any] | None = None,
) -> str:
    """The markdown table of one run (a wrk column with --wrk)."""
    mode = (
        "max throughput (no wait)" if args.max else f"one heartbeat per device-user every {args.interval:g} s"
    )
    failed = {k: v for k, v in stats.by_name.items() if "[" in k}
    cores = (os.cpu_count() or 1) * 100
    rows = [
        ["target", f"{args.layout if args.layout != 'none' else args.url}; {mode}"],
        ["users / pool", f"{args.users} users, {args.devices} devices, {args.duration:g} s"],
        ["heartbeats/s (2xx + failures)", f"{stats.rps:,.0f}"],
        ["requests, failures", f"{stats.requests:,}, {stats.failures:,}" + (f" {failed}" if failed else "")],
        ["p50 / p95 / p99 / max", f"{stats.p50:g} / {stats.p95:g} / {stats.p99:g} / {stats.max:,.0f} ms"],
    ]
    if cpu:
        server = f", platform processes {cpu['servers']:.0%}" if args.layout != "none" else ""
        rows.append(
            [
                "CPU during the load (1 core = 100%)",
                f"locust {cpu['locust']:.0%}{server}, whole machine {cpu['machine']:.0%} of {cores}% "
                f"(busy {cpu['before']:.0%} in the 2 s before the load)",
            ]
        )
    if wrk is not None:
        ms = lambda us: f"{us / 1000:.1f}"  # noqa: E731
        sock = {k: wrk[k] for k in ("connect", "read", "write", "timeout") if wrk[k]}
        extra = [
            f"wrk -t1 -c{args.users}, the same pool size, after the locust run",
            "",
            f"{wrk['rate']:,.0f} (2xx only)",
            f"{wrk['requests']:,}, {wrk['status_errors']:,} non-2xx"
            + (f", socket errors {sock}" if sock else ""),
            f"{ms(wrk['p50'])} / — (p90 {ms(wrk['p90'])}) / {ms(wrk['p99'])} / {ms(wrk['max'])} ms",
            f"wrk {wrk['wrk_cpu']:.0%}, platform processes {wrk['cpu']['servers']:.0%}, "
            f"whole machine {wrk['machine']:.0%} of {cores}% (busy {wrk['before']:.0%} in the 2 s before)",
        ]
        for row, cell in zip(rows, extra, strict=False):
            row.append(cell)
    cmd = f"`.venv/bin/python bench/load.py {' '.join(argv)}`"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = f"nproc {os.cpu_count()}, Python {platform.python_version()}, {when}, {cmd}\n\n"
    cols = "| measure | locust | wrk |\n|---|---|---|\n" if wrk else "| measure | locust |\n|---|---|\n"
    return head + cols + "\n".join("| " + " | ".join(r) + " |" for r in rows)


async def run_wrk(
    args: argparse.Namespace, host: str, extra: dict[str, str], procs: list[Any], prefix: str, workdir: Path
) -> dict[str, Any]:
    """A fresh pool of --devices sessions, then ``wrk -c<users>`` for --duration (bench/heartbeat.py's)."""
    import heartbeat as hb
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(args.redis_url)
    try:  # start from an idle platform: the presence worker has read locust's heartbeats
        await hb.presence_drain(r, f"{prefix}telemetry:heartbeats", timeout=120)
    finally:
        await r.aclose()
    sessions = await device_sessions(
        extra.get("FLEET_AUTH_URL", host), extra.get("FLEET_DEVICE_URL", host), extra, args.devices
    )
    lua = workdir / "wrk.lua"
    hb.write_lua(lua, sessions)
    port = int(urlsplit(host).port or 80)
    before = machine_busy(2.0)
    m0 = _busy()
    result = await hb.wrk_with_cpu(port, lua, args.duration, args.users, {"servers": procs})
    result["machine"] = (_busy() - m0) / result["wall"]
    result["before"] = before
    return result


def _busy() -> float:
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


async def device_sessions(auth_url: str, device_url: str, operator: dict[str, str], n: int) -> list[str]:
    """Login, ``n`` devices in bulk, one device session each (16 logins at a time)."""
    import httpx

    async with httpx.AsyncClient(timeout=60) as c:
        body = {"email": operator["FLEET_EMAIL"], "password": operator["FLEET_PASSWORD"]}
        r = await c.post(f"{auth_url}/api/v1/auth/login", json=body)
        r.raise_for_status()
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        made: list[tuple[str, str]] = []
        while len(made) < n:
            bulk = {"count": min(1000, n - len(made)), "name_prefix": "wrk", "device_type": "virtual"}
            bulk["start"] = len(made) + 1
            r = await c.post(f"{device_url}/api/v1/devices/bulk", json=bulk, headers=headers)
            r.raise_for_status()
            made += [(d["device_id"], d["credentials"]["secret"]) for d in r.json()["items"]]
        gate = asyncio.Semaphore(16)

        async def login(device_id: str, secret: str) -> str:
            async with gate:
                a = await c.post(
                    f"{auth_url}/api/v1/device/auth", json={"deviceId": device_id, "deviceSecret": secret}
                )
            a.raise_for_status()
            return str(a.json()["token"])

        return list(await asyncio.gather(*(login(*d) for d in made)))


def run(args: argparse.Namespace, argv: list[str]) -> str:
    """Start what --layout asks for, run locust, clean up; the table."""
    env = {
        **os.environ,
        "FLEET_DEVICES": str(args.devices),
        "FLEET_HEARTBEAT_INTERVAL_S": f"{args.interval:g}",
    }
    env["FLEET_MAX"] = "1" if args.max else "0"
    env["FLEET_RUN_S"] = f"{args.duration:g}"
    env["FLEET_SETUP_TIMEOUT_S"] = f"{args.timeout - args.duration - 60:g}"
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        workdir = Path(tmp)
        if args.layout == "none":
            env.update(operator_env(args))
            stats, cpu, _ = run_locust(args, args.url, env, workdir, [])
            return table(args, stats, cpu, argv)
        import heartbeat as hb

        run_id = uuid.uuid4().hex[:8]
        cleanup: dict[str, Any] = {
            "prefix": f"load-{run_id}:",
            "db": f"load_{run_id}",
            "db_url": args.database_url.rsplit("/", 1)[0] + f"/load_{run_id}",
        }
        services = hb.Services(workdir)
        try:
            host, extra, procs = asyncio.run(start_layout(args, services, cleanup, workdir))
            env.update(extra, FLEET_KEEP_DEVICES="1")  # the database goes away with the run
            stats, cpu, _ = run_locust(args, host, env, workdir, procs)
            services.check_alive()
            wrk = None
            if args.wrk:
                print(f"wrk: {args.duration:g} s", file=sys.stderr)
                wrk = asyncio.run(run_wrk(args, host, extra, procs, cleanup["prefix"], workdir))
                services.check_alive()
            return table(args, stats, cpu, argv, wrk)
        finally:
            services.stop()
            asyncio.run(hb.clean(args, cleanup))


def main() -> None:
    """Parse, run, print."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/heartbeat.py's helpers
    argv = sys.argv[1:]
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"load.py: {exc}", file=sys.stderr)
        sys.exit(2)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        print(run(args, argv))
    except UsageError as exc:
        print(f"load.py: {exc}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as exc:
        print(f"load.py: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit("interrupted: locust and the platform stopped, database and keys removed")


if __name__ == "__main__":
    main()
