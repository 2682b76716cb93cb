"""Benchmark of the WebSocket gateway: idle agent sockets on one gateway process (memory per socket,
CPU at rest), heartbeat -> portal ``status`` latency with 100 portal sockets, and the command round
trip through agent sockets. Not a test: prints a markdown table.

Real processes on free loopback ports, against the machine's Redis and Postgres under key prefixes
and a database of their own (removed at the end, also on error or Ctrl-C).

(a) One ``python -m services.gateway api`` alone (its own stream prefix), started with its soft fd
limit raised to the hard limit (``preexec_fn``). ``--clients`` separate client processes (this
script with ``--hold``, the ``websockets`` library on asyncio, their own fd limit raised) open
``--sockets`` agent sockets to ``/api/v1/agent/ws`` (subprotocols ``fleet.agent.v1`` and
``auth.<session>``; sessions signed here with the gateway's ``SIGNING_KEY``), send ``hello`` and wait
for ``welcome``. The gateway's RSS (psutil) before and after, and its CPU over ``--rest`` seconds with
every socket open. Client keepalive pings are off; the gateway's own pings (every 20 s) are on.
``--deflate-sockets`` repeats it with ``GATEWAY_WS_COMPRESSION=true``; ``--bare-sockets`` sockets on a
bare uvicorn WebSocket app per ``--bare-impl`` give the server stack's own floor.

(b) A fresh gateway with the device API and worker (presence 1 s / 3 s), the telemetry API, the
commands API and worker (another stream prefix). ``--devices`` devices are created through the
device API; ``--portals`` portal sockets (``/ws/portal``, ``fleet.portal.v1``, operator token in the
``hello`` frame) are opened in this process; each device then sends its first heartbeat (dialect S,
``POST /api/v1/device/heartbeat``), ``--gap`` seconds apart, and the time until every portal got
the device's ``status`` frame with ``online`` is recorded.

(c) One agent socket per device (in this process) answers each ``command`` frame with ``ack`` then
``result`` (``succeeded``); ``--commands`` commands are queued one at a time through
``POST /api/v1/devices/{id}/commands`` and timed until a portal gets the ``command`` frame with state
``succeeded``; every command's recorded state is read back over the API at the end.

    .venv/bin/python bench/gateway.py [--sockets 10000] [--clients 4] [--devices 100] [--commands 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
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
from heartbeat import (
    BODY,
    HEARTBEAT_PATH,
    Services,
    clean,
    create_devices,
    free_port,
    machine,
    pct,
    wait_ready,
)
from websockets.asyncio.client import ClientConnection, connect

from libs.events.identity import Claims, Signer

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-signing-key-" + "g" * 32
AGENT_PATH, PORTAL_PATH = "/api/v1/agent/ws", "/ws/portal"
GOALS = {"kb_per_socket": 20.0, "status_p99_ms": 250.0}


# --- fd limits ---------------------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Raise this process's soft fd limit to its hard limit; the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class GatewayServices(Services):
    """``Services`` whose processes start with the soft fd limit raised (``preexec_fn``)."""

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> psutil.Process:
        """Start one process in its own session, its soft fd limit at the hard limit."""
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            preexec_fn=raise_fd_limit,
        )
        log.close()
        self.procs[name] = proc
        return psutil.Process(proc.pid)


# --- tokens ------------------------------------------------------------------------------------


def operator_token(signer: Signer, ws: str) -> str:
    """An owner's access token for workspace ``ws``."""
    now = time.time()
    return signer.issue(
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


def device_session(signer: Signer, ws: str, device_id: str) -> str:
    """A device session token, as auth mints for ``POST /api/v1/device/auth``."""
    now = time.time()
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


# --- (a) the client processes ------------------------------------------------------------------


async def agent_socket(port: int, token: str, open_timeout: float = 60) -> ClientConnection:
    """An agent socket after ``welcome`` (raises on anything else)."""
    ws = await connect(
        f"ws://127.0.0.1:{port}{AGENT_PATH}",
        subprotocols=["fleet.agent.v1", f"auth.{token}"],  # type: ignore[list-item]
        ping_interval=None,
        open_timeout=open_timeout,
        max_queue=16,
    )
    try:
        await ws.send(json.dumps({"type": "hello", "boot": uuid.uuid4().hex, "agent_version": "bench"}))
        first = json.loads(await asyncio.wait_for(ws.recv(), open_timeout))
        if first.get("type") != "welcome":
            raise RuntimeError(f"not welcome: {first.get('type')}")
    except BaseException:
        await ws.close()
        raise
    return ws


async def hold(port: int, tokens: list[str], concurrency: int) -> None:
    """Open one agent socket per token, print a JSON line, hold them until stdin says ``close``."""
    raise_fd_limit()
    opened: list[ClientConnection] = []
    errors: dict[str, int] = {}
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def one(token: str) -> None:
        async with gate:
            try:
                opened.append(await agent_socket(port, token))
            except Exception as exc:  # counted by kind: the report says why sockets are missing
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                errors[key] = errors.get(key, 0) + 1

    await asyncio.gather(*(one(t) for t in tokens))
    seconds = time.perf_counter() - started
    print(json.dumps({"open": len(opened), "errors": errors, "seconds": seconds}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # "close" or EOF
    closed = sum(ws.state.name != "OPEN" for ws in opened)  # closed by the server meanwhile
    gate = asyncio.Semaphore(concurrency)

    async def close(ws: ClientConnection) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)

    await asyncio.gather(*(close(ws) for ws in opened))
    print(json.dumps({"closed_before": closed}), flush=True)


async def hold_sockets(
    args: argparse.Namespace, workdir: Path, services: Services, proc: psutil.Process, port: int, count: int
) -> dict[str, Any]:
    """Open ``count`` idle agent sockets to ``port`` from ``--clients`` processes; the server's RSS before
    and after, its CPU while opening and at rest (``--rest`` s), then close them."""
    await asyncio.sleep(2)
    m: dict[str, Any] = {
        "fd_soft": proc.rlimit(psutil.RLIMIT_NOFILE)[0],
        "rss_before": proc.memory_info().rss,
    }
    signer, ws = Signer(KEY), str(uuid.uuid4())
    tokens = [device_session(signer, ws, str(uuid.uuid4())) for _ in range(count)]
    n = max(1, args.clients)
    clients: list[subprocess.Popen[str]] = []
    t0 = time.perf_counter()
    cpu0 = sum(proc.cpu_times()[:2])
    for i in range(n):
        path = workdir / f"tokens-{i}.txt"
        path.write_text("\n".join(tokens[i::n]))
        clients.append(
            subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--hold", str(port), str(path)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    HOLDERS.update(clients)

    def readline(c: subprocess.Popen[str]) -> str:
        assert c.stdout is not None
        return c.stdout.readline()

    reports = await asyncio.gather(
        *(asyncio.wait_for(asyncio.to_thread(readline, c), args.open_timeout) for c in clients)
    )
    m["open_s"] = time.perf_counter() - t0
    m["open_cpu"] = sum(proc.cpu_times()[:2]) - cpu0
    got = [json.loads(r) for r in reports if r.strip()]
    m["opened"] = sum(g["open"] for g in got)
    errors: dict[str, int] = {}
    for g in got:
        for k, v in g["errors"].items():
            errors[k] = errors.get(k, 0) + v
    m["errors"] = errors
    services.check_alive()
    await asyncio.sleep(2)
    m["rss_after"] = proc.memory_info().rss
    m["fds"] = proc.num_fds()
    print(f"{m['opened']} sockets open, resting {args.rest} s", file=sys.stderr)
    c0, t1 = sum(proc.cpu_times()[:2]), time.perf_counter()
    clients_cpu0 = sum(sum(psutil.Process(c.pid).cpu_times()[:2]) for c in clients)
    await asyncio.sleep(args.rest)
    m["rest_cpu"] = (sum(proc.cpu_times()[:2]) - c0) / (time.perf_counter() - t1)
    m["clients_rest"] = (
        sum(sum(psutil.Process(c.pid).cpu_times()[:2]) for c in clients) - clients_cpu0
    ) / args.rest
    m["rss_rest"] = proc.memory_info().rss
    for c in clients:
        with contextlib.suppress(OSError):
            assert c.stdin is not None
            c.stdin.write("close\n")
            c.stdin.flush()
    ends = await asyncio.gather(
        *(asyncio.wait_for(asyncio.to_thread(readline, c), 120) for c in clients), return_exceptions=True
    )
    m["dropped"] = sum(json.loads(e)["closed_before"] for e in ends if isinstance(e, str) and e.strip())
    for c in clients:
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.wait(30)
        HOLDERS.discard(c)
    services.check_alive()
    m["per_kb"] = (m["rss_after"] - m["rss_before"]) / max(1, m["opened"]) / 1024
    m["clients"] = n
    return m


async def idle_sockets(
    args: argparse.Namespace, workdir: Path, services: Services, prefix: str, env: dict[str, str]
) -> list[list[str]]:
    """(a): RSS and CPU of one gateway with ``--sockets`` idle agent sockets, and the same for a bare
    uvicorn WebSocket app (``--bare-sockets``) as the floor of the server stack."""
    rows: list[list[str]] = []
    mb = 1024 * 1024
    argv = [sys.executable, "-m", "services.gateway", "api"]
    variants = [("gateway-a", args.sockets, "", "false")]
    if args.deflate_sockets > 0:
        variants.append(("gateway-a-deflate", args.deflate_sockets, ", permessage-deflate on", "true"))
    for name, count, note, deflate in variants:
        port = free_port()
        gw_env = {"STREAM_PREFIX": prefix, "GATEWAY_PORT": str(port), "GATEWAY_WS_COMPRESSION": deflate}
        gw = services.start(name, argv, {**env, **gw_env})
        await wait_ready(services, port, name)
        m = await hold_sockets(args, workdir, services, gw, port, count)
        services.stop_one(name)
        opened = m["opened"]
        why = ""
        if opened < count:
            why = "; not all opened: " + ", ".join(f"{v} x {k}" for k, v in m["errors"].items())
        if not note:
            rows.append(
                [
                    f"idle agent sockets on one gateway process (`{AGENT_PATH}`, hello -> welcome)",
                    f"{opened:,} / {count:,}",
                    f"opened by {m['clients']} client processes in {m['open_s']:.1f} s "
                    f"({opened / m['open_s']:,.0f}/s, gateway CPU {m['open_cpu']:.1f} s = "
                    f"{m['open_cpu'] / max(1, opened) * 1e6:,.0f} µs per socket); "
                    f"gateway fds {m['fds']:,} (soft limit {m['fd_soft']}); {m['dropped']} closed by the "
                    f"server while held{why}",
                    f"10,000 {'✅' if opened >= 10_000 else '❌'}",
                ]
            )
        rows.append(
            [
                f"gateway RSS per idle socket{note}",
                f"{m['per_kb']:.1f} KB",
                f"RSS {m['rss_before'] / mb:.1f} MB before, {m['rss_after'] / mb:.1f} MB with {opened:,} "
                f"sockets ({m['rss_rest'] / mb:.1f} MB after the rest){why if note else ''}",
                f"< 20 KB {'✅' if m['per_kb'] < GOALS['kb_per_socket'] else '❌'}",
            ]
        )
        rows.append(
            [
                f"gateway CPU at rest, {opened:,} sockets open, {args.rest:.0f} s{note}",
                f"{m['rest_cpu']:.1%} of a core",
                f"the gateway's own keepalive pings (20 s) and revocation checks (1 s) run; clients send "
                f"nothing; client processes {m['clients_rest']:.1%} of a core together",
                "",
            ]
        )
    for spec in args.bare_impl if args.bare_sockets > 0 else []:
        port = free_port()
        name = f"hello-ws-{spec.replace(':', '-')}"
        bare = services.start(
            name, [sys.executable, str(Path(__file__).resolve()), "--serve-bare", str(port), spec], env
        )
        await wait_ready(services, port, name)
        b = await hold_sockets(args, workdir, services, bare, port, args.bare_sockets)
        services.stop_one(name)
        rows.append(
            [
                f"floor: bare uvicorn WebSocket app, `ws={spec.split(':')[0]}`"
                f"{', permessage-deflate off' if spec.endswith(':nodeflate') else ''} "
                "(accept, hello -> welcome, wait)",
                f"{b['per_kb']:.1f} KB per socket",
                f"{b['opened']:,} / {args.bare_sockets:,} sockets; RSS {b['rss_before'] / mb:.1f} -> "
                f"{b['rss_after'] / mb:.1f} MB; CPU at rest {b['rest_cpu']:.1%} of a core; "
                f"{b['open_cpu'] / max(1, b['opened']) * 1e6:,.0f} µs CPU per socket opened; same uvicorn "
                "settings as the gateway (64 KiB frames, pings 20 s / 20 s, uvloop)",
                "",
            ]
        )
    return rows


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The floor: accepts an agent socket, answers ``hello`` with ``welcome`` and waits; GET -> 200."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept", "subprotocol": "fleet.agent.v1"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if '"hello"' in (message.get("text") or ""):
            await send({"type": "websocket.send", "text": '{"type":"welcome"}'})


def serve_bare(port: int, spec: str) -> None:
    """Serve ``bare_app`` with the gateway's uvicorn WebSocket settings (``impl[:nodeflate]``)."""
    import uvicorn

    from libs.events.service import GracefulServer, configure_logging, run_loop

    configure_logging("WARNING")
    config = uvicorn.Config(
        bare_app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        ws=spec.split(":")[0],  # type: ignore[arg-type]
        ws_per_message_deflate=not spec.endswith(":nodeflate"),
        ws_max_size=65_536,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
    )
    run_loop(GracefulServer(config).serve())


HOLDERS: set[subprocess.Popen[str]] = set()  # client processes, killed if the run is interrupted


# --- (b) and (c) -------------------------------------------------------------------------------


class StatusEvents:
    """Follows ``events:device`` from its current end: when each ``(device, status)`` was published.
    Stops by a flag between short blocking reads (no cancellation inside a Redis read)."""

    def __init__(self, redis_url: str, stream: str) -> None:
        self.r = aioredis.Redis.from_url(redis_url)
        self.stream = stream
        self.seen: dict[tuple[str, str], float] = {}
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Note the stream's last id now, then read from it in the background."""
        last = await self.r.xrevrange(self.stream, count=1)
        self.task = asyncio.create_task(self._follow(last[0][0] if last else b"0-0"))

    async def _follow(self, last: bytes) -> None:
        while not self.stopping.is_set():
            batches = await self.r.xread({self.stream: last}, count=1000, block=200)
            now = time.perf_counter()
            for _stream, entries in batches or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if fields.get(b"type") != b"device.status_changed.v1":
                        continue
                    data = json.loads(fields[b"envelope"])["data"]
                    self.seen.setdefault((data["device_id"], data["status"]), now)

    async def stop(self) -> None:
        """Stop following (within one blocking read) and close the client."""
        self.stopping.set()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.r.aclose(), 5)


class Portal:
    """One portal socket: when each device's ``online`` status and each command's success arrived."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.online: dict[str, float] = {}
        self.succeeded: dict[str, float] = {}
        self.frames = 0
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for text in self.ws:
                now = time.perf_counter()
                self.frames += 1
                frame = json.loads(text)
                kind = frame.get("type")
                if kind == "status" and frame.get("status") == "online":
                    self.online.setdefault(frame["device_id"], now)
                elif kind == "command" and frame["command"].get("state") == "succeeded":
                    self.succeeded.setdefault(frame["command"]["command_id"], now)


async def open_portal(port: int, token: str) -> Portal:
    """A portal socket after its snapshot."""
    ws = await connect(
        f"ws://127.0.0.1:{port}{PORTAL_PATH}",
        subprotocols=["fleet.portal.v1"],  # type: ignore[list-item]
        open_timeout=30,
        max_size=None,
    )
    await ws.send(json.dumps({"type": "hello", "token": token}))
    first = json.loads(await asyncio.wait_for(ws.recv(), 30))
    if first.get("type") != "snapshot":
        raise RuntimeError(f"portal: {first}")
    return Portal(ws)


class Agent:
    """One device's agent socket answering every ``command`` with ``ack`` then ``result``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: dict[str, float] = {}
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for text in self.ws:
                frame = json.loads(text)
                if frame.get("type") != "command":
                    continue
                cid = frame["command_id"]
                self.received.setdefault(cid, time.perf_counter())
                await self.ws.send(json.dumps({"type": "ack", "command_id": cid}))
                await self.ws.send(
                    json.dumps(
                        {"type": "result", "command_id": cid, "status": "succeeded", "result": {"ok": True}}
                    )
                )


async def until(check: Any, timeout: float) -> None:
    """Poll ``check()`` every 10 ms until true or the timeout."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def ms(values: list[float], p: float) -> str:
    """The p-th percentile of seconds, in ms."""
    return f"{pct(values, p) * 1000:.1f}"


async def portal_and_commands(
    args: argparse.Namespace, services: Services, prefix: str, env: dict[str, str], rows: list[list[str]]
) -> None:
    """(b) heartbeat -> portal status latency, (c) command round trip; rows appended as measured."""
    ports = {name: free_port() for name in ("gateway", "device", "telemetry", "commands")}
    env = {
        **env,
        "STREAM_PREFIX": prefix,
        "GATEWAY_PORT": str(ports["gateway"]),
        "DEVICE_PORT": str(ports["device"]),
        "TELEMETRY_PORT": str(ports["telemetry"]),
        "COMMANDS_PORT": str(ports["commands"]),
        "DEVICE_PRESENCE_INTERVAL_S": "1",
        "DEVICE_PRESENCE_TIMEOUT_S": "3",
    }
    py = sys.executable
    for name, argv in (
        ("device-api", [py, "-m", "services.device", "api"]),
        ("device-worker", [py, "-m", "services.device", "worker"]),
        ("telemetry", [py, "-m", "services.telemetry", "api"]),
        ("commands-api", [py, "-m", "services.commands", "api"]),
        ("commands-worker", [py, "-m", "services.commands", "worker"]),
        ("gateway", [py, "-m", "services.gateway", "api"]),
    ):
        services.start(name, argv, env)
    for name, port in (
        ("device-api", ports["device"]),
        ("telemetry", ports["telemetry"]),
        ("commands-api", ports["commands"]),
        ("gateway", ports["gateway"]),
    ):
        await wait_ready(services, port, name)
    signer, ws = Signer(KEY), str(uuid.uuid4())
    operator = operator_token(signer, ws)
    ids = await create_devices(ports["device"], operator, args.devices, "bench-gw-")
    sessions = {d: device_session(signer, ws, d) for d in ids}
    await asyncio.sleep(1)  # the gateway's fleet view follows events:device
    print(f"{len(ids)} devices created; opening {args.portals} portals", file=sys.stderr)
    portals = [await open_portal(ports["gateway"], operator) for _ in range(args.portals)]
    try:
        # (b) first heartbeat -> every portal has the device's status frame (online)
        print(f"status latency: {len(ids)} devices, {len(portals)} portals", file=sys.stderr)
        sent: dict[str, float] = {}
        watch = StatusEvents(args.redis_url, f"{prefix}events:device")
        await watch.start()
        async with httpx.AsyncClient(timeout=10) as client:
            for device_id in ids:
                t = time.perf_counter()
                r = await client.post(
                    f"http://127.0.0.1:{ports['telemetry']}{HEARTBEAT_PATH}",
                    content=BODY,
                    headers={"X-Device-Session": sessions[device_id], "Content-Type": "application/json"},
                )
                if r.status_code != 200:
                    raise RuntimeError(f"heartbeat: {r.status_code} {r.text[:300]}")
                sent[device_id] = t
                await asyncio.sleep(args.gap)
        await until(lambda: all(len(p.online) >= len(ids) for p in portals), 15)
        print("status frames in; stopping the event watch", file=sys.stderr)
        await watch.stop()
        to_event = [watch.seen[(d, "online")] - t for d, t in sent.items() if (d, "online") in watch.seen]
        fan_out = [
            max(p.online[d] for p in portals) - watch.seen[(d, "online")]
            for d in sent
            if (d, "online") in watch.seen and all(d in p.online for p in portals)
        ]
        all_portals: list[float] = []
        each: list[float] = []
        missing = 0
        for device_id, t in sent.items():
            seen = [p.online[device_id] - t for p in portals if device_id in p.online]
            missing += len(portals) - len(seen)
            each += seen
            if len(seen) == len(portals):
                all_portals.append(max(seen))
        if all_portals:
            p99 = pct(all_portals, 99) * 1000
            ok = p99 < GOALS["status_p99_ms"] and not missing
            rows.append(
                [
                    f"first heartbeat (dialect S) -> `status` online on all {len(portals)} portal sockets",
                    f"p50 {ms(all_portals, 50)} ms, p99 {p99:.1f} ms",
                    f"{len(all_portals)} devices, {args.gap * 1000:.0f} ms apart; max "
                    f"{max(all_portals) * 1000:.1f} ms; per portal frame p50 {ms(each, 50)} ms, p99 "
                    f"{ms(each, 99)} ms; {missing} frames missing. Split: heartbeat -> "
                    f"`device.status_changed` on `events:device` p50 {ms(to_event, 50)} ms, p99 "
                    f"{ms(to_event, 99)} ms (telemetry, presence worker, outbox relay); that event -> "
                    f"the last portal's frame p50 {ms(fan_out, 50)} ms, p99 {ms(fan_out, 99)} ms (gateway)",
                    f"p99 < 250 ms {'✅' if ok else '❌'}",
                ]
            )
        else:
            rows.append(["heartbeat -> portal `status`", "no frames", f"{missing} frames missing", "❌"])
        services.check_alive()

        # (c) command round trips through agent sockets
        print(f"command round trips: {args.commands} commands", file=sys.stderr)
        agents = {d: Agent(await agent_socket(ports["gateway"], sessions[d], 30)) for d in ids}
        print(f"{len(agents)} agent sockets open", file=sys.stderr)
        await asyncio.sleep(1)
        watcher = portals[0]
        queued: dict[str, float] = {}
        posted: dict[str, float] = {}
        device_of: dict[str, str] = {}
        recorded: dict[str, float] = {}
        h = {"Authorization": f"Bearer {operator}"}
        base = f"http://127.0.0.1:{ports['commands']}"
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(args.commands):
                device_id = ids[i % len(ids)]
                t = time.perf_counter()
                r = await client.post(
                    f"{base}/api/v1/devices/{device_id}/commands",
                    json={"command_type": "ping", "parameters": {"i": i}},
                    headers=h,
                )
                if r.status_code != 201:
                    raise RuntimeError(f"command: {r.status_code} {r.text[:300]}")
                cid = r.json()["command_id"]
                queued[cid], posted[cid], device_of[cid] = t, time.perf_counter(), device_id
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # the recorded state, polled every 5 ms
                    got = (await client.get(f"{base}/api/v1/commands/{cid}", headers=h)).json()
                    if got["state"] == "succeeded":
                        recorded[cid] = time.perf_counter()
                        break
                    await asyncio.sleep(0.005)
                await until(lambda cid=cid: cid in watcher.succeeded, 10)
            states: dict[str, int] = {}
            server: list[float] = []
            for cid in queued:
                c = (await client.get(f"{base}/api/v1/commands/{cid}", headers=h)).json()
                states[c["state"]] = states.get(c["state"], 0) + 1
                if c.get("finished_at"):
                    server.append(_iso(c["finished_at"]) - _iso(c["created_at"]))
        trips = [watcher.succeeded[c] - t for c, t in queued.items() if c in watcher.succeeded]
        got_at = {c: agents[device_of[c]].received.get(c) for c in queued}
        push = [at - queued[c] for c, at in got_at.items() if at is not None]
        post = [posted[c] - t for c, t in queued.items()]
        polled = [recorded[c] - t for c, t in queued.items() if c in recorded]
        if polled:
            rows.append(
                [
                    "command round trip: `POST /api/v1/devices/{id}/commands` -> `GET /api/v1/commands/{id}` "
                    "says succeeded (agent answers `ack` + `result`; polled every 5 ms)",
                    f"p50 {ms(polled, 50)} ms, p99 {ms(polled, 99)} ms",
                    f"{len(polled)} / {len(queued)} commands, one at a time, round robin over "
                    f"{len(ids)} agent sockets; max {max(polled) * 1000:.1f} ms; "
                    f"POST answered p50 {ms(post, 50)} ms",
                    "",
                ]
            )
        if trips:
            rows.append(
                [
                    "command round trip: `POST /api/v1/devices/{id}/commands` -> portal `command` state "
                    "succeeded (agent answers `ack` + `result`)",
                    f"p50 {ms(trips, 50)} ms, p99 {ms(trips, 99)} ms",
                    f"{len(trips)} / {len(queued)} commands (same run); max {max(trips) * 1000:.1f} ms; "
                    f"POST -> `command` frame at the agent p50 {ms(push, 50) if push else '-'} ms, p99 "
                    f"{ms(push, 99) if push else '-'} ms; server `finished_at - created_at` p50 "
                    f"{ms(server, 50) if server else '-'} ms, p99 {ms(server, 99) if server else '-'} ms; "
                    f"recorded states: {states}",
                    "",
                ]
            )
        else:
            rows.append(["command round trip", "no command finished", f"states {states}", "❌"])
        for a in agents.values():
            await a.ws.close()
        services.check_alive()
    finally:
        for p in portals:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.ws.close(), 5)


def _iso(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time."""
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- the run -----------------------------------------------------------------------------------


async def run(
    args: argparse.Namespace, workdir: Path, services: Services, cleanup: dict[str, Any]
) -> list[list[str]]:
    """Every measurement; returns table rows."""
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
        "SIGNING_KEY": KEY,
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    rows: list[list[str]] = []
    if args.sockets > 0:
        print(f"(a) {args.sockets} idle agent sockets", file=sys.stderr)
        rows += await idle_sockets(args, workdir, services, cleanup["prefix"] + "-a:", env)
        for row in rows:  # kept on stderr too, should a later part fail
            print("| " + " | ".join(row) + " |", file=sys.stderr)
    if args.devices > 0:
        print("(b), (c) portal latency and command round trips", file=sys.stderr)
        before = len(rows)
        try:
            await asyncio.wait_for(
                portal_and_commands(args, services, cleanup["prefix"] + "-b:", env, rows), args.part_timeout
            )
        except Exception as exc:  # the table says what was not measured, and why
            what = "heartbeat -> portal status; command round trip"
            if len(rows) > before:
                what = "command round trip"
            rows.append([what, "not measured", f"{type(exc).__name__}: {str(exc)[:200]}", "❌"])
    return rows


def main() -> None:
    """Parse options, run, clean up, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sockets", type=int, default=10_000, help="idle agent sockets (0: skip (a))")
    p.add_argument("--clients", type=int, default=4, help="client processes holding the idle sockets")
    p.add_argument("--concurrency", type=int, default=100, help="handshakes in flight per client process")
    p.add_argument("--open-timeout", type=float, default=600, help="seconds to open every idle socket")
    p.add_argument("--rest", type=float, default=10, help="seconds of the CPU-at-rest measurement")
    p.add_argument("--devices", type=int, default=100, help="devices for (b) and (c) (0: skip them)")
    p.add_argument("--portals", type=int, default=100)
    p.add_argument("--gap", type=float, default=0.05, help="seconds between first heartbeats")
    p.add_argument("--commands", type=int, default=200)
    p.add_argument("--part-timeout", type=float, default=300, help="seconds for (b) and (c) together")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--bare-sockets", type=int, default=2000, help="sockets on the bare app (0: skip)")
    p.add_argument(
        "--deflate-sockets", type=int, default=0, help="idle sockets, GATEWAY_WS_COMPRESSION=true (0: skip)"
    )
    p.add_argument(
        "--bare-impl",
        nargs="*",
        default=["auto:nodeflate"],
        help="uvicorn ws=<impl>[:nodeflate] (wsproto needs `pip install wsproto`)",
    )
    p.add_argument("--serve-bare", nargs=2, metavar=("PORT", "IMPL"), help=argparse.SUPPRESS)
    p.add_argument("--hold", nargs=2, metavar=("PORT", "TOKENS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), args.serve_bare[1])
        return
    if args.hold:
        tokens = Path(args.hold[1]).read_text().split()
        asyncio.run(hold(int(args.hold[0]), tokens, args.concurrency))
        return
    raise_fd_limit()
    run_id = uuid.uuid4().hex[:8]
    cleanup: dict[str, Any] = {
        "prefix": f"bench-{run_id}",  # the runs use <prefix>-a: and <prefix>-b:; clean removes both
        "db": f"bench_{run_id}",
        "db_url": args.database_url.rsplit("/", 1)[0] + f"/bench_{run_id}",
    }
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        services = GatewayServices(Path(tmp))
        try:
            rows = asyncio.run(run(args, Path(tmp), services, cleanup))
        except KeyboardInterrupt:
            rows = []
        finally:
            for proc in list(HOLDERS):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                    proc.wait(10)
            services.stop()
            asyncio.run(clean(args, cleanup))
    if not rows:
        sys.exit("interrupted: processes stopped, database and keys removed")
    print(
        f"{machine()}, Python {platform.python_version()}, {started}, "
        f"`.venv/bin/python bench/gateway.py {' '.join(sys.argv[1:])}`\n"
    )
    print("| measure | result | detail | goal |\n|---|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
