"""The shape every service runs in: settings, pools, migrations, health, the worker, the CLI.

A service describes itself with a :class:`ServiceSpec` (its composition root builds one) and
:func:`main` runs it as ``python -m services.<name> api|worker|migrate|rebuild``. The launcher
composes several hosts in one process; containers run one command per process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError
from starlette.types import ASGIApp

from . import metrics, stats
from . import migrate as migrations
from .consumer import ConsumerRunner, Subscription
from .http import BodyLimit, Identity, Observed, install_error_handlers
from .identity import Signer
from .identity_feed import IdentityFeed
from .outbox import OutboxRelay
from .projection import Projection
from .publisher import dlq_stream
from .replay import TrimmedStreams, rebuild
from .retention import RetentionPolicy, run_retention
from .settings import ServiceSettings, SettingsError, consumer_name, load_settings
from .tracing import configure_tracing

log = logging.getLogger(__name__)


Task = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class ServiceSpec:
    """What a service is: its name (= Postgres schema and env prefix), routes and subscriptions."""

    name: str
    settings_cls: type[ServiceSettings]
    migrations_dir: Path | None = None
    routers: Callable[[ServiceHost], Sequence[APIRouter]] = lambda host: ()
    subscriptions: Callable[[ServiceHost], Sequence[Subscription]] = lambda host: ()
    projections: Callable[[ServiceHost], dict[str, Projection]] = lambda host: {}
    relay: bool = False
    retention: RetentionPolicy | None = None
    identity: bool = False
    # Long-running tasks beyond the consumers: `background` runs in every process that starts the
    # host (API, worker, launcher); `workers` only where the worker runs (e.g. a sweeper).
    background: Callable[[ServiceHost], Sequence[Task]] = lambda host: ()
    workers: Callable[[ServiceHost], Sequence[Task]] = lambda host: ()
    # Wraps the FastAPI app, e.g. with a plain-ASGI fast path for a hot route.
    asgi: Callable[[ServiceHost, ASGIApp], ASGIApp] = lambda host, app: app
    # Extra ``uvicorn.Config`` options from the settings (e.g. WebSocket frame size and keepalive).
    server: Callable[[ServiceSettings], dict[str, Any]] = lambda settings: {}
    # Runs before each ``GET /metrics`` renders, to refresh what only this service can count
    # (e.g. open commands per state from its tables); errors are logged, the scrape still answers.
    on_scrape: Callable[[ServiceHost], Coroutine[Any, Any, None]] | None = None

    @property
    def schema(self) -> str:
        """The Postgres schema this service owns."""
        return self.name

    def load(self, environ: dict[str, str] | None = None) -> ServiceSettings:
        """Settings from ``<NAME>_*`` variables."""
        return load_settings(self.settings_cls, self.name, environ)


@dataclass
class ServiceHost:
    """One running service: its settings and shared connections, its app and its worker."""

    spec: ServiceSpec
    settings: ServiceSettings
    redis: aioredis.Redis | None = None
    pool: asyncpg.Pool | None = None
    runners: list[ConsumerRunner] = field(default_factory=list)
    relay: OutboxRelay | None = None
    identity: Identity | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    _groups: list[tuple[str, str]] | None = None

    def stream(self, name: str) -> str:
        """A stream key with this deployment's prefix (``events:device`` -> ``<prefix>events:device``)."""
        return f"{self.settings.stream_prefix}{name}"

    @property
    def consumer(self) -> str:
        """This process's consumer name."""
        return consumer_name(self.spec.name, self.settings.consumer_name)

    async def start(self, *, run_migrations: bool = True) -> None:
        """Open Redis and Postgres and bring the schema up to date."""
        s = self.settings
        # No read timeout (consumers block on XREADGROUP), but dead peers are detected by keepalive
        # and a health check before reuse of an idle connection.
        self.redis = aioredis.Redis.from_url(
            s.redis_url,
            decode_responses=False,
            socket_connect_timeout=5,
            socket_keepalive=True,
            health_check_interval=30,
        )
        self.pool = await asyncpg.create_pool(
            s.database_url,
            min_size=1,
            max_size=10,
            server_settings={"search_path": self.spec.schema, "application_name": self.spec.name},
        )
        if run_migrations:
            async with self.pool.acquire() as conn:
                applied = await migrations.migrate(conn, self.spec.schema, self.spec.migrations_dir)
            if applied:
                log.info("%s: applied migrations %s", self.spec.name, ", ".join(applied))
        if self.spec.identity:
            await self._start_identity()
        for task in self.spec.background(self):
            self._background.append(asyncio.create_task(task(self._stop)))

    async def _start_identity(self) -> None:
        """Load the credential and revocation index, then follow it in the background."""
        if not self.settings.signing_key:
            raise SettingsError(f"{self.spec.name.upper()}_SIGNING_KEY (or SIGNING_KEY) is required")
        assert self.redis is not None
        feed = IdentityFeed(self.redis, [self.stream("events:auth"), self.stream("events:device")])
        await feed.load()
        self.identity = Identity(Signer(self.settings.signing_key), feed)
        self._background.append(asyncio.create_task(feed.run(self._stop), name="identity-feed"))

    async def stop(self) -> None:
        """Stop background tasks and close connections."""
        self._stop.set()
        if self._background:
            # a moment to finish on their own, then no waiting out a blocking read
            _done, late = await asyncio.wait(self._background, timeout=0.2)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.pool is not None:
            await self.pool.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def readiness(self) -> dict[str, str]:
        """Each dependency's state: ``ok`` or a short reason (never a URL or secret)."""
        checks: dict[str, str] = {}
        try:
            assert self.redis is not None
            await asyncio.wait_for(self.redis.ping(), timeout=1.0)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable ({type(exc).__name__})"
        try:
            assert self.pool is not None
            async with asyncio.timeout(2.0), self.pool.acquire() as conn:
                todo = await migrations.pending(conn, self.spec.schema, self.spec.migrations_dir)
            checks["postgres"] = "ok"
            checks["migrations"] = "ok" if not todo else f"pending: {', '.join(todo)}"
        except Exception as exc:
            checks["postgres"] = f"unreachable ({type(exc).__name__})"
            checks["migrations"] = "unknown"
        return checks

    async def observe(self) -> None:
        """Refresh this service's figures for a scrape: its groups' lag and pending, its DLQ lengths."""
        if self.redis is None or self.pool is None:
            return  # not started: nothing to ask
        if self._groups is None:
            self._groups = [(sub.stream, sub.group) for sub in self.spec.subscriptions(self)]
        dlqs = [dlq_stream(stream, self.settings.stream_prefix) for stream, _g in self._groups]
        try:
            async with asyncio.timeout(2.0):
                await stats.refresh(self.redis, self._groups, dlqs)
                if self.spec.on_scrape is not None:
                    await self.spec.on_scrape(self)
        except (RedisError, OSError, TimeoutError, asyncpg.PostgresError) as exc:
            log.warning("%s: metrics refresh failed, serving the last figures: %s", self.spec.name, exc)

    def build_app(self, *, manage_lifespan: bool = True) -> FastAPI:
        """The service's FastAPI app; the launcher manages the lifespan itself when composing."""

        @contextlib.asynccontextmanager
        async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        app = FastAPI(
            title=f"fleet {self.spec.name}",
            lifespan=lifespan if manage_lifespan else None,
            docs_url=None,
            redoc_url=None,
            **_NO_FRAMEWORK_TELEMETRY,
        )
        install_error_handlers(app)
        app.add_middleware(BodyLimit, max_bytes=self.settings.max_body_bytes)
        app.include_router(health_router(self))
        for router in self.spec.routers(self):
            app.include_router(router)
        return app

    def asgi_app(self, *, manage_lifespan: bool = True) -> ASGIApp:
        """The app to serve: the FastAPI app as the service's ``asgi`` hook wraps it."""
        app = self.spec.asgi(self, self.build_app(manage_lifespan=manage_lifespan))
        return Observed(app, self.spec.name)

    async def run_worker(self, stop: asyncio.Event) -> None:
        """Run the relay, the consumer runners and retention until ``stop`` is set."""
        assert self.redis is not None and self.pool is not None
        s = self.settings
        tasks = []
        if self.spec.relay:
            self.relay = OutboxRelay(
                self.pool, self.redis, schema=self.spec.schema, poll_interval_s=s.relay_poll_s
            )
            tasks.append(asyncio.create_task(self.relay.run(stop), name=f"{self.spec.name}-relay"))
        for sub in self.spec.subscriptions(self):
            runner = ConsumerRunner(
                self.redis,
                sub,
                consumer=self.consumer,
                prefix=s.stream_prefix,
                claim_idle_ms=s.claim_idle_ms,
                max_deliveries=s.max_deliveries,
            )
            self.runners.append(runner)
            tasks.append(asyncio.create_task(runner.run(), name=f"{sub.stream}/{sub.group}"))
        tasks += [asyncio.create_task(task(stop)) for task in self.spec.workers(self)]
        if self.spec.retention is not None:
            policy = RetentionPolicy(
                prefix=s.stream_prefix,
                events_max_age_s=self.spec.retention.events_max_age_s,
                interval_s=self.spec.retention.interval_s,
            )
            tasks.append(asyncio.create_task(run_retention(self.redis, policy, stop)))
        await stop.wait()
        for runner in self.runners:
            runner.stop()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


# FastAPI releases with built-in OpenTelemetry open their own server span per request (a separate
# trace, recording the raw path: dialect W's carries a token), request metrics and validation-failure
# logs with the input values. The runtime's own middleware (``http.Observed``) does the first two by
# route template; the framework's are turned off where the framework has them.
_NO_FRAMEWORK_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def health_router(host: ServiceHost) -> APIRouter:
    """``GET /healthz`` (alive), ``GET /readyz`` (dependencies usable), ``GET /metrics`` (Prometheus)."""
    router = APIRouter()

    @router.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": host.spec.name}

    @router.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks = await host.readiness()
        ready = all(v == "ok" for v in checks.values())
        body = {
            "status": "ready" if ready else "not_ready",
            "service": host.spec.name,
            "checks": checks,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        await host.observe()
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    return router


class GracefulServer(uvicorn.Server):
    """A uvicorn server that exits 0 after a graceful SIGINT/SIGTERM shutdown.

    Plain uvicorn re-raises the captured signal once shut down, so a clean stop looks like a crash.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into a graceful exit (a second one forces it)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


SPEC_ENV = "FLEET_SERVICE_SPEC"


def app_from_env() -> ASGIApp:
    """The served app of the spec named ``module:attr`` in ``FLEET_SERVICE_SPEC`` (for API workers)."""
    module, _, attr = os.environ[SPEC_ENV].partition(":")
    spec: ServiceSpec = getattr(importlib.import_module(module), attr)
    settings = spec.load()
    configure_logging(settings.log_level)
    configure_tracing(spec.name, settings.otel_exporter)
    return ServiceHost(spec, settings).asgi_app()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when installed (about a fifth more heartbeats per core), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it on Linux
        asyncio.run(main)
        return
    uvloop.run(main)


def configure_logging(level: str) -> None:
    """Plain one-line logs on stderr."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _serve_worker(host: ServiceHost) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await host.start()
    try:
        log.info("%s worker started as %s", host.spec.name, host.consumer)
        await host.run_worker(stop)
    finally:
        await host.stop()


async def rebuild_projection(host: ServiceHost, name: str, *, allow_trimmed: bool = False) -> int:
    """Rebuild one of the service's projections with a progress bar; returns events applied."""
    await host.start()
    try:
        projections = host.spec.projections(host)
        if name not in projections:
            known = ", ".join(sorted(projections)) or "none"
            raise SettingsError(f"{host.spec.name} has no projection {name!r} (known: {known})")
        assert host.pool is not None and host.redis is not None
        started = time.monotonic()
        projection = projections[name]
        try:
            n = await rebuild(
                host.pool,
                host.redis,
                projection,
                progress=progress_printer(name),
                allow_trimmed=allow_trimmed,
            )
        except TrimmedStreams as exc:
            raise SettingsError(str(exc)) from None
        sys.stderr.write("\n")
        print(f"rebuilt {name}: {n} events applied in {time.monotonic() - started:.1f}s")
        return n
    finally:
        await host.stop()


def progress_printer(label: str) -> Callable[[int, int], None]:
    """A one-line progress bar on stderr."""
    started = time.monotonic()

    def show(done: int, total: int) -> None:
        width = 30
        frac = done / total if total else 1.0
        bar = "#" * int(frac * width)
        rate = done / max(time.monotonic() - started, 1e-6)
        sys.stderr.write(f"\r{label} [{bar:<{width}}] {done}/{total} ({rate:,.0f} events/s)")
        sys.stderr.flush()

    return show


def main(spec: ServiceSpec, argv: Sequence[str] | None = None) -> int:
    """``python -m services.<name> api|worker|migrate|rebuild PROJECTION``."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{spec.name}")
    sub = parser.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument(
        "--workers", type=int, default=1, help="API processes sharing the port (one event loop per core)"
    )
    sub.add_parser("worker", help="run the outbox relay and the stream consumers")
    sub.add_parser("migrate", help="apply pending migrations and exit")
    rb = sub.add_parser("rebuild", help="truncate a projection and replay the log into it")
    rb.add_argument("projection")
    rb.add_argument(
        "--allow-trimmed", action="store_true", help="rebuild even from streams retention trimmed"
    )
    args = parser.parse_args(argv)
    try:
        settings = spec.load()
    except SettingsError as exc:
        print(f"{spec.name}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    configure_tracing(spec.name, settings.otel_exporter)
    host = ServiceHost(spec, settings)
    if args.command == "api" and args.workers > 1:
        # uvicorn's supervisor forks the processes; each builds its own host from the same spec.
        os.environ[SPEC_ENV] = f"services.{spec.name}.main:SPEC"
        uvicorn.run(
            "libs.events.service:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=args.workers,
            access_log=settings.access_log,
            loop="uvloop",
            log_level="info",
            **spec.server(settings),
        )
        return 0
    if args.command == "api":
        config = uvicorn.Config(
            host.asgi_app(),
            host=settings.host,
            port=settings.port,
            log_level="info",
            access_log=settings.access_log,
            **spec.server(settings),
        )
        run_loop(GracefulServer(config).serve())
        return 0
    if args.command == "worker":
        run_loop(_serve_worker(host))
        return 0
    if args.command == "migrate":
        asyncio.run(_migrate_only(host))
        return 0
    try:
        asyncio.run(rebuild_projection(host, args.projection, allow_trimmed=args.allow_trimmed))
    except SettingsError as exc:
        print(f"{spec.name}: {exc}", file=sys.stderr)
        return 2
    return 0


async def _migrate_only(host: ServiceHost) -> None:
    await host.start(run_migrations=True)
    await host.stop()
