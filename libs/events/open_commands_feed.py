"""Follows ``events:commands`` into :class:`~libs.events.open_commands.OpenCommands`.

Like the identity feed: every instance reads the stream whole at start (no group: each gateway must
see every command, whichever instance holds the device's socket), then follows it with ``XREAD BLOCK``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .envelope import UndecodableEntry, UnknownEventType, decode_entry, decode_event, entry_key
from .open_commands import OpenCommand, OpenCommands
from .schemas import REGISTRY

log = logging.getLogger(__name__)

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


class OpenCommandsFeed:
    """Loads and follows ``events:commands`` into ``commands``.

    ``on_queued`` is called for each command queued after the initial read (a gateway pushes it to
    the device's socket); commands already open at start are the caller's to look up.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        *,
        commands: OpenCommands | None = None,
        on_queued: OnQueued | None = None,
        block_ms: int = 500,
    ) -> None:
        self._redis = redis
        self.stream = stream
        self.commands = commands if commands is not None else OpenCommands()
        self.on_queued = on_queued
        self.cursor = "0-0"
        self.block_ms = block_ms
        self.ready = asyncio.Event()
        self._lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        """Read the stream whole, then follow it until ``stop``; errors are logged and retried."""
        backoff = 0.1
        while not stop.is_set():
            try:
                if not self.ready.is_set():
                    await self.catch_up(raise_errors=True)
                    self.ready.set()
                await self._read(block=self.block_ms, live=True)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dead follower would silently stop command deliveries
                log.error("open-commands feed paused: %s", exc, exc_info=not isinstance(exc, RedisError))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)

    async def catch_up(self, *, raise_errors: bool = False) -> None:
        """Read whatever the stream holds now (no waiting, no ``on_queued``); serialized."""
        async with self._lock:
            try:
                while await self._read(block=None, live=False):
                    pass
            except RedisError:
                if raise_errors:
                    raise

    async def _read(self, *, block: int | None, live: bool) -> int:
        reply: Any = await self._redis.xread({self.stream: self.cursor}, count=1000, block=block)
        n = 0
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                if entry_key(eid) <= entry_key(self.cursor):
                    continue  # a concurrent catch_up already read it
                self.cursor = eid
                n += 1
                if fields.get(b"type") in WANTED:
                    self._apply(fields, live)
        return n

    def _apply(self, fields: dict[bytes, bytes], live: bool) -> None:
        try:
            event = decode_event(decode_entry(fields), REGISTRY)
        except (UndecodableEntry, UnknownEventType) as exc:
            log.warning("open-commands feed skipped an entry: %s", exc)
            return
        queued = self.commands.apply(event)
        if queued is not None and live and self.on_queued is not None:
            try:
                self.on_queued(queued)
            except Exception:  # one socket's trouble must not stop the feed
                log.exception("handing over command %s failed", queued.command_id)
