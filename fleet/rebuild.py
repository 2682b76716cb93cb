"""``fleet rebuild SERVICE PROJECTION``: truncate a read model and replay the log into it."""

from __future__ import annotations

import argparse
import asyncio
import os


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fleet rebuild``."""
    p = sub.add_parser("rebuild", help="truncate a service's projection and replay the log into it")
    p.add_argument("service", help="auth, device, telemetry, commands or gateway")
    p.add_argument("projection", help="the projection's name")
    p.add_argument(
        "--allow-trimmed",
        action="store_true",
        help="rebuild even when retention trimmed the source streams (the model forgets what they said)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Rebuild with the service's own rebuild logic and settings from the environment."""
    import asyncpg

    from libs.events.service import ServiceHost, configure_logging, rebuild_projection
    from libs.events.settings import SettingsError

    from .compose import spec_of
    from .config import CommandError

    spec = spec_of(args.service)
    try:
        settings = spec.load(dict(os.environ))
    except SettingsError as exc:
        raise CommandError(f"{spec.name}: configuration error: {exc}", code=2) from None
    configure_logging(settings.log_level)
    host = ServiceHost(spec, settings)
    # Name check before connecting, so a typo needs no database; rebuild_projection checks again.
    known = sorted(spec.projections(host))
    if args.projection not in known:
        names = ", ".join(known) or "none"
        raise CommandError(f"{spec.name} has no projection {args.projection!r} (known: {names})", code=2)
    try:
        asyncio.run(rebuild_projection(host, args.projection, allow_trimmed=args.allow_trimmed))
    except SettingsError as exc:
        raise CommandError(str(exc), code=2) from None
    except (OSError, asyncpg.PostgresError) as exc:
        raise CommandError(f"{spec.name}: {type(exc).__name__}: {exc}") from None
    return 0
