"""Serving the composed platform on one port until SIGINT/SIGTERM, then stopping it in order.

Shutdown order: the stop event is set; uvicorn stops accepting and drains open requests while the
workers finish their current batch; then the hosts close their pools and Redis clients. (The
launcher stops Redis and Postgres after this returns.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import uvicorn

from libs.events import metrics
from libs.events.service import ServiceHost

from .compose import apps, readiness, start_hosts, start_workers, stop_hosts
from .config import STOP_REQUESTED, CommandError
from .dispatcher import Dispatcher


class FleetServer(uvicorn.Server):
    """uvicorn without its own signal handling (the launcher owns SIGINT and SIGTERM)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signals alone: uvicorn would re-raise them after serving and skip our teardown."""
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening, then mark the server ready."""
        await super().startup(sockets=sockets)
        if self.started:
            self.ready.set()


class Shutdown:
    """What SIGINT/SIGTERM do: the first stops everything; a second stops waiting for clients."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.server: FleetServer | None = None

    def request(self) -> None:
        """Signal handler."""
        if self.stop.is_set() and self.server is not None:
            self.server.force_exit = True
        self.stop.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM in the running loop while inside this block."""
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            loop.add_signal_handler(sig, self.request)
        if STOP_REQUESTED.is_set():  # a signal came before these handlers, and was swallowed
            self.request()
        try:
            yield
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)  # the launcher's, for the teardown after the loop


async def serve_platform(
    hosts: Mapping[str, ServiceHost],
    sock: socket.socket,
    url: str,
    on_ready: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Start the hosts and their workers, serve ``sock`` until a signal, then stop in order.

    ``on_ready`` runs once the port accepts connections (``fleet up`` seeds the demo there).
    """
    shutdown = Shutdown()
    with shutdown.installed():
        await start_hosts(hosts)
        workers = start_workers(hosts, shutdown.stop)
        try:
            for name in hosts:
                print(f"service {name}: {url}_services/{name}/", flush=True)
            if not shutdown.stop.is_set():
                shutdown.server = FleetServer(_config(hosts))
                await _serve(shutdown.server, sock, shutdown.stop, url, on_ready)
        finally:
            shutdown.stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
            await stop_hosts(hosts)


def _config(hosts: Mapping[str, ServiceHost]) -> uvicorn.Config:
    async def probe() -> dict[str, dict[str, str]]:
        return await readiness(hosts)

    async def scrape() -> tuple[bytes, str]:
        for host in hosts.values():
            await host.observe()
        return metrics.render(), metrics.CONTENT_TYPE

    app = Dispatcher(apps(hosts), probe, metrics=scrape)
    # log_config=None: uvicorn logs through the launcher's logging setup.
    access_log = os.environ.get("FLEET_ACCESS_LOG", "").lower() in ("1", "true", "yes")
    return uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        timeout_graceful_shutdown=5,
        access_log=access_log,
        **server_options(hosts),
    )


def server_options(hosts: Mapping[str, ServiceHost]) -> dict[str, Any]:
    """The uvicorn options the services ask for (the gateway's WebSocket limits), merged.

    One server carries every service here, so two services asking for different values of one
    option is a configuration error, not a silent pick.
    """
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name, host in hosts.items():
        for key, value in host.spec.server(host.settings).items():
            if key in merged and merged[key] != value:
                raise CommandError(f"{owner[key]} and {name} ask for different uvicorn {key}")
            merged[key], owner[key] = value, name
    return merged


async def _serve(
    server: FleetServer,
    sock: socket.socket,
    stop: asyncio.Event,
    url: str,
    on_ready: Callable[[], Awaitable[None]] | None,
) -> None:
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    ready = asyncio.create_task(server.ready.wait())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and not serving.done():
            if on_ready is not None:
                seeding = asyncio.create_task(on_ready())
                await asyncio.wait({seeding, serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            print(f"fleet is up: {url}", flush=True)
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        ready.cancel()
        stopping.cancel()
    await serving
    if not stop.is_set():
        raise CommandError("the HTTP server stopped unexpectedly")
