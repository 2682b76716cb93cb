"""Concurrent publishes that share round trips: one background task appends queued envelopes in batches.

A caller's ``publish`` returns only once Redis has acknowledged its entry (the commit point). Its
errors say what happened to the entry: :class:`NotSent` and :class:`PublisherClosed` mean it was
never sent (nothing written); an error from Redis fails every caller of the batch; and
:class:`OutcomeUnknown` means Redis had the entry but did not answer in time (it may be written).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from .envelope import Envelope
from .publisher import Publisher
from .tracing import tracing_on

AfterFlush = Callable[[Sequence[tuple[str, Envelope]], Sequence[str]], Awaitable[None]]


class PublisherClosed(RuntimeError):
    """The batcher was closed before the envelope could be appended."""


class NotSent(TimeoutError):
    """The envelope was still queued at its deadline and was withdrawn: nothing was written."""


class OutcomeUnknown(RuntimeError):
    """Redis had the envelope but gave no answer within the hard cap: it may or may not be written."""


class _Entry:
    """A queued envelope and its caller's future; ``sent`` once a batch has taken it (no way back)."""

    __slots__ = ("envelope", "future", "sent", "stream")

    def __init__(self, stream: str, envelope: Envelope, future: asyncio.Future[str]) -> None:
        self.stream, self.envelope, self.future = stream, envelope, future
        self.sent = False


class BatchingPublisher:
    """Queues envelopes and appends them with ``Publisher.publish_envelopes``, one batch at a time.

    A batch is flushed as soon as the previous flush finished and something is queued (under load
    the queue fills while a flush is in flight). After an idle spell the first envelope waits up to
    ``max_delay_s`` for companions, or until ``max_batch`` are queued. ``after_flush`` (optional)
    runs after the waiters of a written batch are released, e.g. to refresh a cache; it overlaps
    the next batch's append (one follow-up in flight at a time).

    Deadlines: an envelope still queued ``timeout_s`` after ``publish`` is withdrawn and its caller
    gets :class:`NotSent` (so that error is true: nothing was written); a cancelled caller's queued
    envelope is withdrawn too. Once a batch has taken an envelope it cannot be withdrawn (Redis may
    apply it any time), so its caller waits for Redis's answer, however late, up to
    ``hard_timeout_s`` per batch; past that it gets :class:`OutcomeUnknown`.
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        max_batch: int = 500,
        max_delay_s: float = 0.002,
        after_flush: AfterFlush | None = None,
        timeout_s: float = 5.0,
        hard_timeout_s: float = 30.0,
    ) -> None:
        self.publisher = publisher
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.after_flush = after_flush
        self.timeout_s = timeout_s
        self.hard_timeout_s = hard_timeout_s
        self.flushes = 0
        self.in_flight = 0  # entries of the batch Redis has and has not answered yet
        self._follow_up: asyncio.Task[None] | None = None
        self._queue: list[_Entry] = []
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
        # with tracing on, the span covers the wait for Redis's answer
        with self.publisher.span(stream, envelope) if tracing_on() else contextlib.nullcontext():
            return await self._publish(stream, envelope)

    async def _publish(self, stream: str, envelope: Envelope) -> str:
        self.start()
        loop = asyncio.get_running_loop()
        entry = _Entry(stream, envelope, loop.create_future())
        self._queue.append(entry)
        self._wake.set()
        if len(self._queue) >= self.max_batch:
            self._full.set()
        deadline = loop.call_later(self.timeout_s, self._withdraw, entry)
        try:
            # a cancelled caller cancels the future: a batch not yet formed skips it
            return await entry.future
        finally:
            deadline.cancel()

    def _withdraw(self, entry: _Entry) -> None:
        if not entry.sent and not entry.future.done():
            entry.future.set_exception(
                NotSent(f"not sent within {self.timeout_s:g} s; withdrawn, nothing was written")
            )

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
                batch = self._take()
                if len(self._queue) < self.max_batch:
                    self._full.clear()
                if batch:
                    await self._flush(batch)
                    busy = True
        except asyncio.CancelledError:
            self._fail(self._queue, PublisherClosed("the batching publisher was cancelled"))
            self._queue = []
            raise

    def _take(self) -> list[_Entry]:
        """Up to ``max_batch`` live entries off the queue, marked sent; withdrawn ones are dropped."""
        batch: list[_Entry] = []
        taken = 0
        for entry in self._queue:
            taken += 1
            if not entry.future.done():
                entry.sent = True
                batch.append(entry)
                if len(batch) == self.max_batch:
                    break
        del self._queue[:taken]
        return batch

    async def _linger(self) -> None:
        """Wait up to ``max_delay_s`` for companions (or a full batch)."""
        if self.max_delay_s <= 0:
            return
        self._full.clear()
        if len(self._queue) >= self.max_batch:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self.max_delay_s)

    async def _flush(self, batch: list[_Entry]) -> None:
        items = [(e.stream, e.envelope) for e in batch]
        self.flushes += 1
        self.in_flight = len(batch)
        cap = asyncio.timeout(self.hard_timeout_s)
        try:
            async with cap:
                ids = await self.publisher.publish_envelopes(items)
        except asyncio.CancelledError:
            self._fail(batch, OutcomeUnknown("the batching publisher stopped while Redis had the batch"))
            raise
        except Exception as exc:
            late = OutcomeUnknown(f"Redis did not answer within {self.hard_timeout_s:g} s")
            self._fail(batch, late if cap.expired() else exc)
            return
        finally:
            self.in_flight = 0
        for entry, entry_id in zip(batch, ids, strict=True):
            if not entry.future.done():
                entry.future.set_result(entry_id)
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
    def _fail(batch: Sequence[_Entry], exc: BaseException) -> None:
        for entry in batch:
            if not entry.future.done():
                entry.future.set_exception(exc)


__all__ = ["AfterFlush", "BatchingPublisher", "NotSent", "OutcomeUnknown", "PublisherClosed"]
