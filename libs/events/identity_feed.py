"""Keeps an :class:`IdentityIndex` current from ``events:auth`` and ``events:device``.

Every instance reads both streams whole at start (no group: each needs every revocation), then
follows them with ``XREAD BLOCK``, so a revocation reaches every service within one read. A
verifier that misses a credential calls :meth:`IdentityFeed.catch_up` before saying 401: the
producer publishes a credential before it shows it to anyone, so reading up to "now" finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .envelope import UndecodableEntry, UnknownEventType, decode_entry, decode_event, entry_key
from .identity import IdentityIndex
from .schemas import REGISTRY, Registry

log = logging.getLogger(__name__)

# The entry types the index folds; others are skipped without decoding their data.
WANTED = frozenset(
    t.encode()
    for t in (
        "auth.workspace_created.v1",
        "auth.workspace_updated.v1",
        "auth.credential_issued.v1",
        "auth.credential_revoked.v1",
        "auth.operator_logged_out.v1",
        "auth.password_changed.v1",
        "auth.operator_removed.v1",
        "auth.operator_role_changed.v1",
        "device.registered.v1",
        "device.credential_rotated.v1",
        "device.updated.v1",
        "device.deleted.v1",
    )
)


class IdentityFeed:
    """Loads and follows the identity streams into ``index``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        streams: Sequence[str],
        index: IdentityIndex | None = None,
        *,
        registry: Registry = REGISTRY,
        block_ms: int = 500,
    ) -> None:
        self._redis = redis
        self.index = index or IdentityIndex()
        self.cursors: dict[str, str] = dict.fromkeys(streams, "0-0")
        self.registry = registry
        self.block_ms = block_ms
        self.ready = asyncio.Event()
        self._drain_lock = asyncio.Lock()

    async def load(self) -> None:
        """Read every stream from its start (call before serving)."""
        while await self._read(block=None):
            pass
        self.ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the streams until ``stop``; errors are logged and retried, never fatal."""
        backoff = 0.1
        while not stop.is_set():
            try:
                if not self.ready.is_set():
                    await self.load()
                await self._read(block=self.block_ms)
                self.index.prune(time.time())
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dead follower would silently stop revocations
                log.error("identity feed paused: %s", exc, exc_info=not isinstance(exc, RedisError))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)

    async def catch_up(self) -> None:
        """Read whatever is in the streams now (no waiting).

        Drains are serialized: a caller never settles for a drain that began before its call, so a
        credential published before the call is always seen.
        """
        async with self._drain_lock:
            with contextlib.suppress(RedisError):
                while await self._read(block=None):
                    pass

    async def _read(self, *, block: int | None) -> int:
        reply: Any = await self._redis.xread(self.cursors, count=1000, block=block)  # type: ignore[arg-type]
        n = 0
        for stream, entries in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                # The follower and catch_up read concurrently: apply each entry once, in order.
                if entry_key(eid) <= entry_key(self.cursors[name]):
                    continue
                self.cursors[name] = eid
                n += 1
                if fields.get(b"type") in WANTED:
                    self._apply(fields)
        return n

    def _apply(self, fields: dict[bytes, bytes]) -> None:
        try:
            envelope = decode_entry(fields)
            self.index.apply(decode_event(envelope, self.registry), at=envelope.occurred_at.timestamp())
        except (UndecodableEntry, UnknownEventType) as exc:
            log.warning("identity feed skipped an entry: %s", exc)
        except Exception:  # one bad entry must not stop the feed
            log.exception("identity feed could not apply an entry")
