"""Follows ``events:commands`` into the set of open commands per device (queued, sent or delivered).

Like the identity feed: every instance reads the stream whole at start (no group), then follows it
with ``XREAD BLOCK``. Services that hand commands to devices outside the commands service (the S
heartbeat answer, gateway sockets) ask it what is still open for a device, oldest first. Memory
holds open commands only: finished, expired and cancelled ones are dropped as their events arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .envelope import UndecodableEntry, UnknownEventType, decode_entry, decode_event, entry_key
from .schemas import REGISTRY
from .schemas.commands import (
    CommandCancelled,
    CommandDelivered,
    CommandExpired,
    CommandFinished,
    CommandQueued,
    CommandSent,
)

log = logging.getLogger(__name__)


@dataclass
class OpenCommand:
    """A command still waiting for its result."""

    command_id: str
    device_id: str
    workspace_id: str
    command_type: str
    parameters: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    state: str = "queued"
    attempts: int = 0


@dataclass
class OpenCommands:
    """Open commands per device, folded from the lifecycle events (pure)."""

    by_device: dict[str, dict[str, OpenCommand]] = field(default_factory=dict)
    device_of: dict[str, str] = field(default_factory=dict)

    def apply(self, event: Any) -> None:
        """Fold one event (other events are ignored)."""
        if isinstance(event, CommandQueued):
            self.by_device.setdefault(event.device_id, {})[event.command_id] = OpenCommand(
                event.command_id,
                event.device_id,
                event.workspace_id,
                event.command_type,
                dict(event.parameters),
                event.created_at,
                event.expires_at,
            )
            self.device_of[event.command_id] = event.device_id
        elif isinstance(event, CommandSent | CommandDelivered):
            found = self.get(event.command_id)
            if found is not None:
                found.state = "sent" if isinstance(event, CommandSent) else "delivered"
                if isinstance(event, CommandSent):
                    found.attempts = max(found.attempts, event.attempt)
        elif isinstance(event, CommandFinished | CommandExpired | CommandCancelled):
            device = self.device_of.pop(event.command_id, None)
            commands = self.by_device.get(device or "")
            if commands is not None:
                commands.pop(event.command_id, None)
                if not commands:
                    del self.by_device[device or ""]

    def get(self, command_id: str) -> OpenCommand | None:
        """An open command by id."""
        device = self.device_of.get(command_id)
        return self.by_device.get(device or "", {}).get(command_id)

    def for_device(self, device_id: str, now: datetime, *, states: Sequence[str] = ()) -> list[OpenCommand]:
        """A device's open commands not yet expired (optionally only in ``states``), oldest first."""
        found = [
            c
            for c in self.by_device.get(device_id, {}).values()
            if c.expires_at > now and (not states or c.state in states)
        ]
        return sorted(found, key=lambda c: (c.created_at, c.command_id))


class OpenCommandsFeed:
    """Loads and follows ``events:commands`` into ``commands``."""

    def __init__(self, redis: aioredis.Redis, stream: str, *, block_ms: int = 500) -> None:
        self._redis = redis
        self.stream = stream
        self.commands = OpenCommands()
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
                await self._read(block=self.block_ms)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("open-commands feed paused: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)

    async def catch_up(self, *, raise_errors: bool = False) -> None:
        """Read whatever the stream holds now (no waiting); serialized like the identity feed."""
        async with self._lock:
            try:
                while await self._read(block=None):
                    pass
            except RedisError:
                if raise_errors:
                    raise

    async def _read(self, *, block: int | None) -> int:
        reply: Any = await self._redis.xread({self.stream: self.cursor}, count=1000, block=block)
        n = 0
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                if entry_key(eid) <= entry_key(self.cursor):
                    continue
                self.cursor = eid
                n += 1
                try:
                    self.commands.apply(decode_event(decode_entry(fields), REGISTRY))
                except (UndecodableEntry, UnknownEventType):
                    continue
        return n
