"""The gateway's only state: open commands, read from ``events:commands`` (no Postgres).

Every instance reads the whole stream at start and then follows it with ``XREAD BLOCK`` (no group:
each gateway must see every command, whichever instance holds the device's socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.events.envelope import UndecodableEntry, UnknownEventType, decode_entry, decode_event
from libs.events.schemas import REGISTRY

from .domain import CommandBook, OpenCommand

log = logging.getLogger(__name__)

COMMANDS = "events:commands"
WANTED = frozenset(
    t.encode()
    for t in (
        "command.queued.v1",
        "command.sent.v1",
        "command.delivered.v1",
        "command.finished.v1",
        "command.expired.v1",
        "command.cancelled.v1",
    )
)

OnQueued = Callable[[OpenCommand], None]


class CommandFeed:
    """Loads and follows ``events:commands`` into a :class:`CommandBook`."""

    def __init__(self, redis: aioredis.Redis, stream: str, book: CommandBook, *, block_ms: int = 500) -> None:
        self._redis = redis
        self.stream = stream
        self.book = book
        self.cursor = "0-0"
        self.block_ms = block_ms
        self.ready = asyncio.Event()
        self.on_queued: OnQueued | None = None

    async def load(self) -> None:
        """Read the stream from its start (no pushes: no socket is waiting for these yet)."""
        while await self._read(block=None, live=False):
            pass
        self.ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Load, then follow until ``stop``; Redis errors are logged and retried."""
        backoff = 0.1
        while not stop.is_set():
            try:
                if not self.ready.is_set():
                    await self.load()
                await self._read(block=self.block_ms, live=True)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dead follower would silently stop command pushes
                log.error("command feed paused: %s", exc, exc_info=not isinstance(exc, RedisError))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)

    async def _read(self, *, block: int | None, live: bool) -> int:
        reply: Any = await self._redis.xread({self.stream: self.cursor}, count=1000, block=block)
        n = 0
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                n += 1
                if fields.get(b"type") in WANTED:
                    self._apply(fields, live)
        return n

    def _apply(self, fields: dict[bytes, bytes], live: bool) -> None:
        try:
            event = decode_event(decode_entry(fields), REGISTRY)
        except (UndecodableEntry, UnknownEventType) as exc:
            log.warning("command feed skipped an entry: %s", exc)
            return
        queued = self.book.apply(event)
        if queued is not None and live and self.on_queued is not None:
            try:
                self.on_queued(queued)
            except Exception:  # one socket's trouble must not stop the feed
                log.exception("pushing command %s failed", queued.command_id)
