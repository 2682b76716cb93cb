"""``fleet simulate``: many simulated agents in one process against a running platform (``agent.simulator``).

Devices are created through ``POST /api/v1/devices/bulk`` (1000 a request) as an operator, or read
back from a ``--reuse`` file; then every simulated agent runs the real agent protocol for
``--duration`` seconds, with a progress line on stderr once a second, and says ``bye`` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from .config import CommandError
from .sim_devices import load_or_create, operator_token

DEFAULT_SERVER = "http://127.0.0.1:8080"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fleet simulate``."""
    from agent.sim_schedule import PROFILES

    p = sub.add_parser("simulate", help="run many simulated agents against a platform (load generator)")
    p.add_argument("--server", default=DEFAULT_SERVER, help=f"platform URL (default {DEFAULT_SERVER})")
    p.add_argument("--gateway", help="send the agent sockets to this gateway URL instead (own process)")
    p.add_argument("--email", help="operator login (password from $FLEET_PASSWORD); or set $FLEET_TOKEN")
    p.add_argument("--devices", type=int, required=True, help="simulated agents running at once")
    p.add_argument("--profile", choices=PROFILES, default="steady")
    p.add_argument("--duration", type=float, default=60.0, help="seconds the agents run (default 60)")
    p.add_argument("--interval", type=float, default=30.0, help="heartbeat interval, s (default 30)")
    p.add_argument("--ramp", type=float, default=200.0, help="agents started per second (default 200)")
    p.add_argument("--name-prefix", default="sim", help="device names <prefix>-00001... (default sim)")
    p.add_argument("--reuse", metavar="FILE", help="keep created devices' credentials here (0600 JSON)")
    p.add_argument("--flap-fraction", type=float, default=0.2, help="flapping: share of agents that flap")
    p.add_argument("--churn-per-min", type=float, default=0.1, help="churn: share replaced a minute")
    p.add_argument("--seed", type=int, help="seed of the schedule, jitter and mock metrics")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--verbose", action="store_true", help="show the agents' warnings (noisy)")
    p.set_defaults(run=run)


def _check(args: argparse.Namespace) -> None:
    if not 1 <= args.devices <= 100_000:
        raise CommandError("--devices must be between 1 and 100000", code=2)
    if not 0 < args.duration <= 86_400:
        raise CommandError("--duration must be between 0 and 86400 seconds", code=2)
    if args.interval < 0.1 or args.ramp <= 0:
        raise CommandError("--interval must be at least 0.1 s and --ramp positive", code=2)
    if not 0 <= args.flap_fraction <= 1 or args.churn_per_min < 0:
        raise CommandError("--flap-fraction must be within 0..1 and --churn-per-min not negative", code=2)
    if not args.server.startswith(("http://", "https://")):
        raise CommandError("--server must be an http:// or https:// URL", code=2)


def run(args: argparse.Namespace) -> int:
    """Create or reuse the devices, run the simulation, print the summary."""
    from agent.sim_schedule import ProfileParams, pool_size
    from agent.simulator import SimConfig

    _check(args)
    params = ProfileParams(
        ramp_per_s=args.ramp,
        period_s=args.interval,
        flap_fraction=args.flap_fraction,
        churn_per_min=args.churn_per_min,
    )
    cfg = SimConfig(
        server_url=args.server.rstrip("/"),
        devices=args.devices,
        profile=args.profile,
        duration_s=args.duration,
        interval_s=args.interval,
        params=params,
        gateway_url=args.gateway.rstrip("/") if args.gateway else None,
        seed=args.seed,
    )
    token = operator_token(cfg.server_url, args.email)
    need = pool_size(cfg.profile, cfg.devices, params)
    creds, created = load_or_create(cfg.server_url, token, need, args.name_prefix, args.reuse)
    _err(f"devices: {need} ({created} created in bulk, {need - created} reused)")
    with _quiet(args.verbose):
        summary, interrupted = _simulate(cfg, creds)
    _print_summary(cfg, summary, created, args.json, interrupted)
    if summary.auth_rate_limited:
        _err(
            f"{summary.auth_rate_limited} device authentications were rate limited (HTTP 429): the server "
            "allows 300 a minute per client address by default; raise AUTH_DEVICE_AUTH_ADDRESS_LIMIT there"
        )
    # a short run may connect and beat between two progress samples: a stored heartbeat counts too
    return 0 if summary.connected_peak > 0 or summary.heartbeats > 0 else 1


def _simulate(cfg: Any, creds: list[Any]) -> tuple[Any, bool]:
    """Run the engine on uvloop when installed; SIGINT/SIGTERM stop it cleanly (a second one: now)."""
    from agent.simulator import Simulator

    sim = Simulator(cfg, creds, on_progress=_progress_printer())
    signals = {"count": 0}

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            signals["count"] += 1
            sim.request_stop()
            if signals["count"] > 1 and task is not None:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        return await sim.run()

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            summary = runner.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    return summary, signals["count"] > 0


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """The agents' per-heartbeat INFO lines and per-agent warnings would drown the progress line."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    levels = {"agent": logging.WARNING if verbose else logging.ERROR, "websockets": logging.ERROR}
    levels |= {"httpx": logging.WARNING, "httpcore": logging.WARNING}
    previous = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


def _err(line: str) -> None:
    print(f"fleet simulate: {line}", file=sys.stderr, flush=True)


def _progress_printer() -> Any:
    """One line a second: rewritten in place on a terminal, a new line otherwise (logs, tests)."""
    tty = sys.stderr.isatty()

    def show(p: Any) -> None:
        line = (
            f"{p.elapsed_s:6.0f} s  agents {p.running:,}  connected {p.connected:,}  "
            f"heartbeats/s {p.heartbeats_per_s:,.1f} ({p.heartbeats:,})  commands {p.commands:,}  "
            f"errors {p.errors:,}"
        )
        sys.stderr.write(f"\r\x1b[K{line}" if tty else f"{line}\n")
        sys.stderr.flush()

    return show


def _print_summary(cfg: Any, p: Any, created: int, as_json: bool, interrupted: bool) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    steady = None
    if p.all_connected_at is not None and p.elapsed_s > p.all_connected_at + 1:
        steady = (p.heartbeats - p.heartbeats_at_all_connected) / (p.elapsed_s - p.all_connected_at)
    body = {
        "profile": cfg.profile,
        "devices": cfg.devices,
        "created": created,
        "seconds": round(p.elapsed_s, 1),
        "interrupted": interrupted,
        "connected_peak": p.connected_peak,
        "all_connected_after_s": None if p.all_connected_at is None else round(p.all_connected_at, 1),
        "heartbeats": p.heartbeats,
        "heartbeats_per_s": round(p.heartbeats / max(p.elapsed_s, 1e-9), 1),
        "steady_heartbeats_per_s": None if steady is None else round(steady, 1),
        "commands": p.commands,
        "errors": p.errors,
        "auth_failures": p.auth_failures,
        "auth_rate_limited": p.auth_rate_limited,
        "heartbeat_errors": p.heartbeat_errors,
        "disconnects": p.disconnects,
        "starts": p.starts,
        "stops": p.stops,
        "clean_exits": p.clean_exits,
        "failed_exits": p.failed_exits,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if as_json:
        print(json.dumps(body))
        return
    for key, value in body.items():
        print(f"{key}: {value}")
