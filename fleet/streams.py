"""``fleet streams``: every stream under a prefix with its length and consumer groups."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from libs.events.stats import StreamStats, list_streams, stream_stats

from .config import redis_url, stream_prefix

HEADER = ("stream", "length", "group", "consumers", "lag", "pending")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fleet streams``."""
    p = sub.add_parser("streams", help="list streams with their groups' lag and pending entries")
    p.add_argument("--prefix", help="stream key prefix (default: $STREAM_PREFIX or none)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON)."""
    prefix = stream_prefix(args.prefix)
    stats = asyncio.run(collect(redis_url(), prefix))
    if args.json:
        print(json.dumps(as_json(stats, prefix), indent=2))
    elif stats:
        print(format_table(rows(stats, prefix)))
    else:
        print(f"no streams under prefix {prefix!r}" if prefix else "no streams")
    return 0


async def collect(url: str, prefix: str) -> list[StreamStats]:
    """Stats of every stream under the prefix, in key order."""
    client = aioredis.Redis.from_url(url, decode_responses=False)
    try:
        return [await stream_stats(client, key) for key in await list_streams(client, prefix)]
    finally:
        await client.aclose()


def rows(stats: Sequence[StreamStats], prefix: str) -> list[tuple[str, ...]]:
    """One row per group (``-`` in the group columns for a stream without groups)."""
    out: list[tuple[str, ...]] = []
    for s in stats:
        name = s.stream.removeprefix(prefix)
        if not s.groups:
            out.append((name, str(s.length), "-", "-", "-", "-"))
        for g in s.groups:
            lag = "?" if g.lag is None else str(g.lag)  # Redis < 7 does not report lag
            out.append((name, str(s.length), g.group, str(g.consumers), lag, str(g.pending)))
    return out


def format_table(body: Sequence[tuple[str, ...]]) -> str:
    """Aligned columns under a header; numbers right-aligned."""
    table = [HEADER, *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    numeric = {1, 3, 4, 5}
    lines = []
    for r in table:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def as_json(stats: Sequence[StreamStats], prefix: str) -> dict[str, Any]:
    """The stats as plain JSON (``lag`` is null where Redis does not report it)."""
    streams = []
    for s in stats:
        groups = [
            {
                "group": g.group,
                "consumers": g.consumers,
                "lag": g.lag,
                "pending": g.pending,
                "last_delivered_id": g.last_delivered_id,
            }
            for g in s.groups
        ]
        streams.append(
            {
                "stream": s.stream.removeprefix(prefix),
                "key": s.stream,
                "length": s.length,
                "first_id": s.first_id,
                "last_id": s.last_id,
                "groups": groups,
            }
        )
    return {"prefix": prefix, "streams": streams}
