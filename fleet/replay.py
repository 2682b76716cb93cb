"""``fleet replay STREAM``: a stream's events as JSON lines, filtered, optionally following."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, BinaryIO

import msgspec
import redis.asyncio as aioredis

from libs.events.envelope import to_jsonable
from libs.events.replay import ReplayFilter, ReplayRecord, replay

from .config import redis_url, stream_prefix

_ID = re.compile(r"^(\d+(-\d+)?|-|\+)$")
_encoder = msgspec.json.Encoder()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fleet replay``."""
    p = sub.add_parser("replay", help="print a stream's events as JSON lines")
    p.add_argument("stream", help="logical stream name, e.g. events:device")
    p.add_argument("--from", dest="start", type=entry_id, default="-", help="first entry id (inclusive)")
    p.add_argument("--to", dest="end", type=entry_id, default="+", help="last entry id (inclusive)")
    p.add_argument(
        "--type",
        dest="types",
        action="append",
        metavar="TYPE",
        help="only this event type, e.g. device.registered.v1 (repeatable)",
    )
    p.add_argument("--device", help="only events of this device id")
    p.add_argument("--since", type=iso_datetime, help="entries added at or after (ISO 8601, UTC if no zone)")
    p.add_argument("--until", type=iso_datetime, help="entries added at or before (ISO 8601)")
    p.add_argument("--follow", action="store_true", help="keep printing new entries until Ctrl-C")
    p.add_argument("--prefix", help="stream key prefix (default: $STREAM_PREFIX or none)")
    p.set_defaults(run=run)


def entry_id(text: str) -> str:
    """An argparse type: a stream entry id (``1700000000000-0``, ``1700000000000``, ``-``, ``+``)."""
    if not _ID.match(text):
        raise argparse.ArgumentTypeError(f"not a stream entry id: {text!r}")
    return text


def iso_datetime(text: str) -> datetime:
    """An argparse type: an ISO 8601 time; one without a zone is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def run(args: argparse.Namespace) -> int:
    """Print the matching entries; Ctrl-C ends ``--follow`` quietly."""
    interrupted = asyncio.run(until_interrupted(_replay(args, sys.stdout.buffer)))
    return 130 if interrupted and not args.follow else 0


async def until_interrupted(work: Coroutine[Any, Any, None]) -> bool:
    """Run ``work`` until it ends or SIGINT cancels it; True if interrupted.

    The cancellation is delivered from a loop callback, while the task waits, and repeated until
    it lands: asyncio.run's own SIGINT handling cancels the task wherever it is running, and
    redis-py then sometimes swallows the cancellation (the follow loop would never end).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            if interrupted and not task.done():
                task.cancel()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if not task.cancelled():
        task.result()
    return interrupted


async def _replay(args: argparse.Namespace, out: BinaryIO) -> None:
    flt = ReplayFilter(types=args.types, device_id=args.device, since=args.since, until=args.until)
    key = stream_prefix(args.prefix) + args.stream
    client = aioredis.Redis.from_url(redis_url(), decode_responses=False)
    try:
        if not args.follow and not await client.exists(key):
            print(f"fleet replay: no stream {key!r}", file=sys.stderr)
            return
        records = replay(client, key, start=args.start, end=args.end, flt=flt, follow=args.follow)
        async for record in records:
            out.write(record_line(args.stream, record))
            if args.follow:
                out.flush()
        out.flush()
    finally:
        await client.aclose()


def record_line(stream: str, record: ReplayRecord) -> bytes:
    """One JSON line for a record, naming the logical stream (without the key prefix)."""
    item: dict[str, Any] = {"stream": stream, "entry_id": record.entry_id}
    if record.envelope is None:
        item["error"] = record.error
    else:
        item["envelope"] = to_jsonable(record.envelope)
    return _encoder.encode(item) + b"\n"
