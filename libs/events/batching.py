"""Concurrent publishes that share round trips: one background task appends queued envelopes in batches.

A caller's ``publish`` returns only once Redis has acknowledged its entry (the commit point); when the
batch fails, every caller of that batch gets the error and nothing is claimed as written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from .envelope import Envelope
from .publisher import Publisher

AfterFlush = Callable[[Sequence[tuple[str, Envelope]], Sequence[str]], Awaitable[None]]


class PublisherClosed(RuntimeError):
    """The batcher was closed before the envelope could be appended."""


class BatchingPublisher:
    """Queues envelopes and appends them with ``Publisher.publish_envelopes``, one batch at a time.

    A batch is flushed as soon as the previous flush finished and something is queued (under load
    the queue fills while a flush is in flight). After an idle spell the first envelope waits up to
    ``max_delay_s`` for companions, or until ``max_batch`` are queued. ``after_flush`` (optional)
    runs after the waiters of a written batch are released, e.g. to refresh a cache; it overlaps
    the next batch's append (one follow-up in flight at a time). A batch not acknowledged within
    ``timeout_s`` fails its waiters with TimeoutError (its entries may still have been written).
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        max_batch: int = 500,
        max_delay_s: float = 0.002,
        after_flush: AfterFlush | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.publisher = publisher
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.after_flush = after_flush
        self.timeout_s = timeout_s
        self.flushes = 0
        self._follow_up: asyncio.Task[None] | None = None
        self._queue: list[tuple[str, Envelope, asyncio.Future[str]]] = []
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Start the flushing task (``publish`` also starts it on first use)."""
        if self._closed:
            raise PublisherClosed("the batching publisher is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="batching-publisher")

    async def publish(self, stream: str, envelope: Envelope) -> str:
        """Append ``envelope`` to ``stream`` with the next batch; returns its entry id once acknowledged."""
        self.start()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append((stream, envelope, future))
        self._wake.set()
        if len(self._queue) >= self.max_batch:
            self._full.set()
        return await future

    async def aclose(self) -> None:
        """Flush what is queued, then stop; later publishes raise :class:`PublisherClosed`."""
        self._closed = True
        self._wake.set()
        self._full.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(asyncio.CancelledError):
            await self._settle_follow_up()
        self._fail(self._queue, PublisherClosed("the batching publisher is closed"))
        self._queue = []

    async def _run(self) -> None:
        busy = False
        try:
            while True:
                if not self._queue:
                    if self._closed:
                        return
                    busy = False
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if not busy and not self._closed and len(self._queue) < self.max_batch:
                    await self._linger()
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                if len(self._queue) < self.max_batch:
                    self._full.clear()
                await self._flush(batch)
                busy = True
        except asyncio.CancelledError:
            self._fail(self._queue, PublisherClosed("the batching publisher was cancelled"))
            self._queue = []
            raise

    async def _linger(self) -> None:
        """Wait up to ``max_delay_s`` for companions (or a full batch)."""
        if self.max_delay_s <= 0:
            return
        self._full.clear()
        if len(self._queue) >= self.max_batch:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self.max_delay_s)

    async def _flush(self, batch: list[tuple[str, Envelope, asyncio.Future[str]]]) -> None:
        items = [(stream, env) for stream, env, _f in batch]
        self.flushes += 1
        try:
            ids = await asyncio.wait_for(self.publisher.publish_envelopes(items), self.timeout_s)
        except asyncio.CancelledError:
            self._fail(batch, PublisherClosed("the batching publisher was cancelled"))
            raise
        except Exception as exc:
            self._fail(batch, exc)
            return
        for (_s, _e, future), entry_id in zip(batch, ids, strict=True):
            if not future.done():
                future.set_result(entry_id)
        if self.after_flush is not None:
            await self._settle_follow_up()
            self._follow_up = asyncio.create_task(self._run_follow_up(self.after_flush, items, ids))

    @staticmethod
    async def _run_follow_up(after: AfterFlush, items: list[tuple[str, Envelope]], ids: list[str]) -> None:
        # The entries are written: a failing follow-up (a cache) must not fail the batch.
        with contextlib.suppress(Exception):
            await after(items, ids)

    async def _settle_follow_up(self) -> None:
        if self._follow_up is not None:
            await self._follow_up
            self._follow_up = None

    @staticmethod
    def _fail(batch: Sequence[tuple[str, Envelope, asyncio.Future[str]]], exc: BaseException) -> None:
        for _s, _e, future in batch:
            if not future.done():
                future.set_exception(exc)


__all__ = ["AfterFlush", "BatchingPublisher", "PublisherClosed"]
