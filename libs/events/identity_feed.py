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

from .envelope import UndecodableEntry, UnknownEventType, decode_entry, decode_event
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
        self._catching_up: asyncio.Future[None] | None = None

    async def load(self) -> None:
        """Read every stream from its start (call before serving)."""
        while await self._read(block=None):
            pass
        self.ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the streams until ``stop``; Redis errors are retried."""
        backoff = 0.1
        while not stop.is_set():
            try:
                if not self.ready.is_set():
                    await self.load()
                await self._read(block=self.block_ms)
                self.index.prune(time.time())
                backoff = 0.1
            except RedisError as exc:
                log.warning("identity feed paused: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)

    async def catch_up(self) -> None:
        """Read whatever is already in the streams (no waiting); concurrent callers share one read."""
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.ensure_future(self._drain())
        await asyncio.shield(self._catching_up)

    async def _drain(self) -> None:
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
                if _after(eid, self.cursors[name]):
                    self.cursors[name] = eid
                n += 1
                if fields.get(b"type") in WANTED:
                    self._apply(fields)
        return n

    def _apply(self, fields: dict[bytes, bytes]) -> None:
        try:
            self.index.apply(decode_event(decode_entry(fields), self.registry))
        except (UndecodableEntry, UnknownEventType) as exc:
            log.warning("identity feed skipped an entry: %s", exc)


def _after(a: str, b: str) -> bool:
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    return (int(ams), int(aseq or 0)) > (int(bms), int(bseq or 0))
