"""``fleet-agent`` (or ``python -m agent``): the device agent process.

Usage: ``fleet-agent [--config FILE.toml] [--once]``; configuration is described in ``agent.config``,
the health endpoint in ``agent.health``, the spool in ``agent.spool``.

Exit codes:

- 0: stopped cleanly (SIGTERM or SIGINT: ``bye`` on the socket, or a final ``offline`` heartbeat over
  HTTP), or ``--once`` stored its heartbeat;
- 1: the server refused the device credentials (401 twice in a row, or 403: device disabled) or the
  enrolment token, or ``--once`` could not store its heartbeat; one clear line on stderr;
- 2: configuration error (no credentials and no enrolment token, a bad value, an unreadable file).

A ``restart`` command makes the process re-execute itself (same pid, same arguments) after its
result is recorded in the spool. Logs go to stderr and to ``<state_dir>/agent.log`` (rotated, what
``collect_logs`` reads); secrets and tokens are never logged. While it runs the agent announces
itself on the LAN over mDNS (``agent.lan``; ``FLEET_AGENT_DISCOVERY=false`` turns that off).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import logging.handlers
import os
import random
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx

from agent.commands import default_registry
from agent.config import (
    AgentConfig,
    ConfigError,
    Credentials,
    EnrolmentRefused,
    load_config,
    read_credentials,
    resolve_credentials,
)
from agent.health import start_health_server
from agent.lan import LanAnnouncer
from agent.metrics import make_sampler
from agent.protocol import Settings, backoff_delay
from agent.runner import AGENT_VERSION, AUTH_PATH, HEARTBEAT_PATH, RESTART, AgentRunner, heartbeat_body
from libs.events.schemas.agent import Heartbeat

log = logging.getLogger("agent")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fleet-agent", description="The fleet device agent.")
    parser.add_argument("--config", type=Path, help="a TOML file (environment variables override it)")
    parser.add_argument("--once", action="store_true", help="authenticate, send one heartbeat, exit")
    return parser.parse_args(argv)


def _setup_logging(cfg: AgentConfig) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        path = cfg.state_dir / "agent.log"
        handlers.append(logging.handlers.RotatingFileHandler(path, maxBytes=1 << 20, backupCount=3))
    except OSError:
        pass  # a read-only state dir still lets the agent run; stderr has the logs
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(cfg.log_level.upper())
    # websockets logs handshake headers (the session token) at DEBUG; httpx logs every request.
    logging.getLogger("websockets").setLevel(max(logging.INFO, root.level))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


async def _credentials(cfg: AgentConfig, http: httpx.AsyncClient, stop: asyncio.Event) -> Credentials | None:
    """Credentials, retrying an enrolment the server did not answer (None: stopped meanwhile)."""
    settings = Settings(backoff_base_s=cfg.backoff_base_s, backoff_cap_s=cfg.backoff_cap_s)
    attempt = 0
    while not stop.is_set():
        try:
            return await resolve_credentials(cfg, http)
        except (httpx.HTTPError, ConnectionError, ValueError, KeyError) as exc:
            if isinstance(exc, ConfigError):
                raise
            delay = backoff_delay(attempt, settings, random.Random())
            attempt += 1
            log.warning("enrolment not answered (%s); retrying in %.1f s", type(exc).__name__, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    return None


async def _once(cfg: AgentConfig, creds: Credentials, http: httpx.AsyncClient) -> int:
    """Authenticate and store one heartbeat over HTTP."""
    base = cfg.server_url.rstrip("/")
    body = {"deviceId": creds.device_id, "deviceSecret": creds.device_secret}
    auth = await http.post(base + AUTH_PATH, json=body)
    if auth.status_code != 200:
        print(f"fleet-agent: authentication refused (HTTP {auth.status_code})", file=sys.stderr)
        return 1
    metrics = make_sampler(cfg.mock).sample()
    hb = Heartbeat(seq=0, sent_at=datetime.now(UTC), metrics=metrics)
    headers = {"X-Device-Session": str(auth.json()["token"])}
    body = heartbeat_body(hb, os.urandom(6).hex())
    answer = await http.post(base + HEARTBEAT_PATH, json=body, headers=headers)
    if answer.status_code != 200:
        print(f"fleet-agent: heartbeat refused (HTTP {answer.status_code})", file=sys.stderr)
        return 1
    print(f"fleet-agent: heartbeat stored for device {creds.device_id}")
    return 0


def _known_device_id(cfg: AgentConfig) -> str | None:
    """The device id the agent already has (configured or stored), without asking the server."""
    if cfg.device_id and cfg.device_secret:
        return cfg.device_id
    try:
        stored = read_credentials(cfg.state_dir)
    except ConfigError:
        return None  # resolve_credentials says what is wrong with the file
    return stored.device_id if stored is not None else None


async def _amain(cfg: AgentConfig, once: bool) -> int:
    stop = asyncio.Event()
    runners: list[AgentRunner] = []  # what a signal must stop, once there is something

    def on_signal() -> None:
        stop.set()
        for runner in runners:
            runner.request_shutdown()

    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, on_signal)
    enabled = cfg.discovery and not once
    lan = LanAnnouncer(enabled=enabled, version=AGENT_VERSION, health_port=cfg.health_port)
    known = _known_device_id(cfg)
    lan.start(known)  # unclaimed until enrolled; in the background, so it never delays the agent
    try:
        return await _agent(cfg, once, stop, runners, lan if known is None else None)
    finally:
        await lan.close()


async def _agent(
    cfg: AgentConfig, once: bool, stop: asyncio.Event, runners: list[AgentRunner], lan: LanAnnouncer | None
) -> int:
    """Credentials (``lan``: announce the enrolment), then one heartbeat or the runner."""
    async with httpx.AsyncClient(timeout=cfg.http_timeout_s) as http:
        try:
            creds = await _credentials(cfg, http, stop)
        except EnrolmentRefused as exc:
            print(f"fleet-agent: {exc}", file=sys.stderr)
            return 1
        if creds is None:
            return 0
        if lan is not None:
            lan.claimed(creds.device_id)
        if once:
            return await _once(cfg, creds, http)
        # in mock mode, seeded by the device: a restarted agent's simulated uptime and counters go on
        seed = int.from_bytes(hashlib.sha256(creds.device_id.encode()).digest()[:8], "big")
        sampler, registry = make_sampler(cfg.mock, seed=seed), default_registry()
        runners.append(AgentRunner(cfg, creds, sampler=sampler, registry=registry, http=http))
        if stop.is_set():
            runners[0].request_shutdown()
        return await _serve(cfg, runners[0])


async def _serve(cfg: AgentConfig, runner: AgentRunner) -> int:
    """Run the agent with its health endpoint; print why when it gives up."""
    health = await start_health_server(cfg.health_port, runner.health)
    who = runner.credentials.device_id
    log.info("device %s: agent starting (boot %s), server %s", who, runner.boot, cfg.server_url)
    try:
        code = await runner.run()
    finally:
        if health is not None:
            health.close()
    if code == 1:
        print(f"fleet-agent: {runner.exit_message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the agent until it is stopped; returns the exit code (see the module docstring)."""
    args = _parse(argv)
    try:
        cfg = load_config(file=args.config)
        _setup_logging(cfg)
        code = asyncio.run(_amain(cfg, args.once))
    except ConfigError as exc:
        print(f"fleet-agent: configuration error: {exc}", file=sys.stderr)
        return 2
    if code == RESTART:
        logging.shutdown()
        # same pid, same arguments: a supervisor (or an e2e test) keeps watching the same process
        os.execv(sys.executable, [sys.executable, "-m", "agent", *sys.argv[1:]])  # noqa: S606
    return code


if __name__ == "__main__":
    sys.exit(main())
