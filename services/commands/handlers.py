"""Use-cases of the queue: load -> decide -> store the command and its events in one transaction.

Operators queue, read and cancel; devices poll (K) and report results (K, S); the sweeper expires
commands past their TTL. Other services' events move commands along in ``lifecycle_handlers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from libs.events.envelope import new_id
from libs.events.outbox import Outbox
from libs.events.schemas import Event
from libs.events.service import ServiceHost

from . import metrics, store
from .dialects import DomainError, Report
from .domain import (
    QUEUED,
    Command,
    NewCommand,
    Ttl,
    check_retry,
    decide_cancel,
    decide_expire,
    decide_queue,
    decide_result,
    decide_send,
    fingerprint,
    ttl_of,
)

log = logging.getLogger(__name__)
STREAM = "events:commands"
Render = Callable[[Command], Any]


def not_found(command_id: str) -> DomainError:
    """The one answer for a missing or another workspace's command."""
    return DomainError("not_found", "COMMAND_NOT_FOUND", f"command {command_id} not found")


class _KeyTaken(Exception):
    """A concurrent request inserted the same idempotency key first."""


class Commands:
    """The queue's use-cases over the host's pool and Redis (bound lazily: pools open at start)."""

    def __init__(self, host: ServiceHost) -> None:
        self.host = host
        s = host.settings
        self.ttl = Ttl(int(getattr(s, "default_ttl_s", 3600)), int(getattr(s, "max_ttl_s", 7 * 86400)))
        self.sweep_s = float(getattr(s, "sweep_s", 0.2))
        self.pending_limit = int(getattr(s, "pending_limit", 100))
        self._outbox: Outbox | None = None
        self._counted_at = 0.0

    @property
    def pool(self) -> asyncpg.Pool:
        """The service's Postgres pool."""
        assert self.host.pool is not None, "the host is not started"
        return self.host.pool

    @property
    def outbox(self) -> Outbox:
        """State and events in one transaction, published at once after the commit."""
        if self._outbox is None:
            assert self.host.redis is not None
            stream = self.host.stream(STREAM)
            self._outbox = Outbox(self.pool, self.host.redis, producer="commands", stream=stream)
        return self._outbox

    # ---- operators ----------------------------------------------------------------------------

    async def queue(
        self, workspace_id: str, device_id: str, cmd: NewCommand, by: str, *, shape: str, render: Render
    ) -> tuple[int, Any]:
        """Queue a command; a retry under the same idempotency key gets the first answer again."""
        if cmd.idempotency_key is not None:
            again = await self._retry(workspace_id, device_id, cmd, shape)
            if again is not None:
                return again
        command, events = decide_queue(
            new_id(), workspace_id, device_id, cmd, ttl=self.ttl, by=by, shape=shape, now=datetime.now(UTC)
        )
        reply = render(command)
        try:
            async with self.outbox.transaction() as tx:
                keep = reply if cmd.idempotency_key is not None else None
                if not await store.insert(tx.conn, command, 201, keep):
                    raise _KeyTaken
                tx.emit(events)
        except _KeyTaken:
            again = await self._retry(workspace_id, device_id, cmd, shape)
            assert again is not None
            return again
        metrics.count(events)
        log.info("command %s (%s) queued for %s by %s", command.command_id, cmd.command_type, device_id, by)
        return 201, reply

    async def _retry(
        self, workspace_id: str, device_id: str, cmd: NewCommand, shape: str
    ) -> tuple[int, Any] | None:
        assert cmd.idempotency_key is not None
        async with self.pool.acquire() as conn:
            found = await store.by_key(conn, workspace_id, cmd.idempotency_key)
        if found is None:
            return None
        existing, status, reply = found
        check_retry(existing, fingerprint(shape, device_id, cmd, ttl_of(cmd, self.ttl)))
        return status, reply

    async def command(self, workspace_id: str, command_id: str) -> Command:
        """A command of the workspace, else not_found."""
        async with self.pool.acquire() as conn:
            c = await store.get(conn, command_id)
        if c is None or c.workspace_id != workspace_id:
            raise not_found(command_id)
        return c

    async def history(self, workspace_id: str, device_id: str, *, limit: int, offset: int) -> list[Command]:
        """A device's commands, newest first."""
        async with self.pool.acquire() as conn:
            return await store.history(conn, workspace_id, device_id, limit=limit, offset=offset)

    async def listing(
        self, workspace_id: str, device_id: str | None, states: list[str] | None, *, limit: int, offset: int
    ) -> list[Command]:
        """The workspace's commands, newest first (optionally one device's, in some states)."""
        async with self.pool.acquire() as conn:
            return await store.listing(conn, workspace_id, device_id, states, limit=limit, offset=offset)

    async def cancel(self, workspace_id: str, command_id: str, by: str) -> Command:
        """Cancel a command that has no result yet (cancelling twice changes nothing)."""
        async with self.outbox.transaction() as tx:
            c = await store.get(tx.conn, command_id, lock=True)
            if c is None or c.workspace_id != workspace_id:
                raise not_found(command_id)
            new, events = decide_cancel(c, by=by, now=datetime.now(UTC))
            await store.save(tx.conn, [new] if events else [])
            tx.emit(events)
        metrics.count(events)
        return new

    # ---- devices ------------------------------------------------------------------------------

    async def poll(self, workspace_id: str, device_id: str) -> list[Command]:
        """Dialect K's pending list, oldest first; a queued command is marked sent when first listed."""
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn:
            listed = await store.open_for(conn, workspace_id, device_id, now, limit=self.pending_limit)
        if all(c.state != QUEUED for c in listed):
            return listed
        events: list[Event] = []
        async with self.outbox.transaction() as tx:
            listed = await store.open_for(
                tx.conn, workspace_id, device_id, now, limit=self.pending_limit, lock=True
            )
            changed = []
            for i, c in enumerate(listed):
                if c.state == QUEUED:
                    listed[i], out = decide_send(c, via="k_poll", now=now)
                    changed.append(listed[i])
                    events += out
            await store.save(tx.conn, changed)
            tx.emit(events)
        metrics.count(events)
        return listed

    async def report(
        self, workspace_id: str, device_id: str, command_id: str, report: Report, *, via: str, foreign: str
    ) -> tuple[Command, str]:
        """A device's result over HTTP; another device's command is ``foreign`` (not_found or
        forbidden), another workspace's is not found. Returns the command and the verdict."""
        async with self.outbox.transaction() as tx:
            c = await store.get(tx.conn, command_id, lock=True)
            if c is None or c.workspace_id != workspace_id:
                raise not_found(command_id)
            if c.device_id != device_id:
                if foreign == "forbidden":
                    raise DomainError("forbidden", "FORBIDDEN", "the command belongs to another device")
                raise not_found(command_id)
            new, events, verdict = decide_result(c, report, via=via, now=datetime.now(UTC))
            await store.save(tx.conn, [new] if events else [])
            tx.emit(events)
        metrics.count(events)
        if verdict != "accepted":
            log.info("result for command %s %s (it is %s)", command_id, verdict, c.state)
        return new, verdict

    # ---- expiry -------------------------------------------------------------------------------

    async def sweep_once(self, now: datetime | None = None, limit: int = 500) -> int:
        """Expire up to ``limit`` open commands past their TTL; returns how many."""
        now = now or datetime.now(UTC)
        async with self.outbox.transaction() as tx:
            due = await store.due(tx.conn, now, limit)
            expired: list[Command] = []
            events: list[Event] = []
            for c in due:
                new, out = decide_expire(c, now=now)
                expired.append(new)
                events += out
            await store.save(tx.conn, expired)
            tx.emit(events)
        metrics.count(events)
        return len(due)

    async def run_sweeper(self, stop: asyncio.Event) -> None:
        """Sweep every ``sweep_s`` until ``stop`` is set; errors are logged and retried."""
        while not stop.is_set():
            try:
                while await self.sweep_once() >= 500:
                    pass
                await self._count_backlog()
            except Exception as exc:  # a database or Redis blip must not end the sweeper
                log.warning("command expiry sweeper: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.sweep_s)

    async def _count_backlog(self) -> None:
        if time.monotonic() - self._counted_at < 5.0:
            return
        self._counted_at = time.monotonic()
        async with self.pool.acquire() as conn:
            counts = await store.open_count(conn)
        metrics.set_backlog(counts)
