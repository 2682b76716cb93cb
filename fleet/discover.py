"""``fleet discover``: the agents announcing themselves on the LAN (mDNS ``_fleet-agent._tcp``)."""

from __future__ import annotations

import argparse
import json

from .config import CommandError

HEADER = ("name", "device_id", "claimed", "version", "health_port", "host", "addresses")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fleet discover``."""
    p = sub.add_parser("discover", help="list fleet agents on the local network (mDNS)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default 3)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Browse for ``--timeout`` seconds and print what answered."""
    from agent.discovery import discover_lan

    if not 0 < args.timeout <= 60:
        raise CommandError("--timeout must be between 0 and 60 seconds", code=2)
    try:
        found = discover_lan(args.timeout)
    except OSError as exc:  # no multicast-capable interface, or the mDNS port is not ours to bind
        raise CommandError(f"mDNS is not available here: {exc}") from None
    if args.json:
        print(json.dumps(found, indent=2))
    elif found:
        print(table([HEADER, *(tuple(a[k] for k in HEADER) for a in found)]))
    else:
        print(f"no agents answered within {args.timeout:g} s")
    return 0


def table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns, the first row as header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
