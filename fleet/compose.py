"""The services ``fleet`` knows, and running their hosts side by side in one process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from libs.events.service import ServiceHost, ServiceSpec
from services.auth.main import SPEC as AUTH
from services.commands.main import SPEC as COMMANDS
from services.device.main import SPEC as DEVICE
from services.gateway.main import SPEC as GATEWAY
from services.telemetry.main import SPEC as TELEMETRY

from .config import CommandError
from .dispatcher import ASGIApp

log = logging.getLogger(__name__)

# Start order; every service also works alone, so the order only decides what is printed first.
SPECS: dict[str, ServiceSpec] = {s.name: s for s in (AUTH, DEVICE, TELEMETRY, COMMANDS, GATEWAY)}


def spec_of(name: str) -> ServiceSpec:
    """A service's spec, or a usage error (exit 2) listing the known services."""
    spec = SPECS.get(name)
    if spec is None:
        raise CommandError(f"unknown service {name!r} (services: {', '.join(SPECS)})", code=2)
    return spec


def build_hosts(environ: Mapping[str, str]) -> dict[str, ServiceHost]:
    """One host per service, each with its settings loaded from ``environ``."""
    env = dict(environ)
    return {name: ServiceHost(spec, spec.load(env)) for name, spec in SPECS.items()}


async def start_hosts(hosts: Mapping[str, ServiceHost]) -> None:
    """Start every host (connections, migrations) at once; if one fails, stop all and raise."""
    results = await asyncio.gather(*(h.start() for h in hosts.values()), return_exceptions=True)
    failed = [(n, r) for n, r in zip(hosts, results, strict=True) if isinstance(r, BaseException)]
    if failed:
        await stop_hosts(hosts)
        name, exc = failed[0]
        raise CommandError(f"service {name} failed to start: {type(exc).__name__}: {exc}") from exc


async def stop_hosts(hosts: Mapping[str, ServiceHost]) -> None:
    """Close every host's connections (errors are logged, never raised)."""
    results = await asyncio.gather(*(h.stop() for h in hosts.values()), return_exceptions=True)
    for name, result in zip(hosts, results, strict=True):
        if isinstance(result, Exception):
            log.warning("stopping %s: %s", name, result)


def start_workers(hosts: Mapping[str, ServiceHost], stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """Each host's worker (relay, consumers, retention) as a task running until ``stop`` is set."""
    tasks = []
    for name, host in hosts.items():
        task = asyncio.create_task(host.run_worker(stop), name=f"{name}-worker")
        task.add_done_callback(_report_crash)
        tasks.append(task)
    return tasks


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped with an error", task.get_name(), exc_info=task.exception())


def apps(hosts: Mapping[str, ServiceHost]) -> dict[str, ASGIApp]:
    """Each service's ASGI app, its lifespan left to the launcher."""
    return {name: host.asgi_app(manage_lifespan=False) for name, host in hosts.items()}


async def readiness(hosts: Mapping[str, ServiceHost]) -> dict[str, dict[str, str]]:
    """Every service's readiness checks, probed concurrently."""
    checks = await asyncio.gather(*(h.readiness() for h in hosts.values()))
    return dict(zip(hosts, checks, strict=True))
