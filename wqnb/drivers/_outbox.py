"""The bounded, ordered outbox behind a broker driver's ``publish_nowait``.

``publish_nowait`` cannot wait for a broker, so a driver accepts the message here and one
flusher task sends it: consecutive items of one queue go together (up to :data:`BATCH`) to
the driver's ``send(queue_id, items)``, which publishes them in order (and does its own
retrying while the broker refuses or is briefly unreachable). When ``send`` still fails
with one of ``retry_on`` the batch stays at the head and is sent again after a backoff, so
nothing is dropped and nothing overtakes it. Any other exception is a bug: the flusher
stops and every later :meth:`Outbox.put` says so (never a silent drop).

:meth:`close` waits (up to a timeout) for the outbox to empty and returns how many items it
could not deliver; the driver turns that into its ``PublishError`` on ``stop()``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from ..errors import PublishError, QueueFull
from ._tasks import cancel_and_wait

__all__ = ["BATCH", "Outbox"]

#: The most items of one queue handed to one ``send``.
BATCH = 256
_BACKOFF = (0.05, 2.0)

T = TypeVar("T")


class Outbox(Generic[T]):
    """``put`` now, published by one task later, in order. ``T`` is what the driver
    keeps per message (a :class:`~wqnb.message.Message`, or a frame encoded at ``put``
    time so a message that cannot travel is refused at once)."""

    def __init__(self, name: str, size: int, send: Callable[[str, list[T]], Awaitable[None]],
                 log: logging.Logger, *, target: str = "the broker",
                 retry_on: tuple[type[BaseException], ...] = (PublishError,)) -> None:
        self.name = name  # the driver's id: task name and log lines
        self.size = size
        self.target = target  # where the items go (a safe URL), for QueueFull's text
        self._send = send
        self._log = log
        self._retry_on = retry_on
        self._items: collections.deque[tuple[str, T]] = collections.deque()
        self._pending: collections.Counter[str] = collections.Counter()  # queued + in flight
        self._inflight = 0
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None  # the bug that stopped the flusher

    def __len__(self) -> int:
        """Items accepted and not yet sent (the batch in flight included)."""
        return len(self._items) + self._inflight

    def pending(self, queue_id: str) -> int:
        """Items of ``queue_id`` accepted and not yet sent (counted in a capped depth)."""
        return self._pending[queue_id]

    def put(self, queue_id: str, item: T) -> None:
        """Accept ``item`` for ``queue_id``; :class:`QueueFull` when ``size`` are waiting,
        :class:`PublishError` when the flusher died of a bug."""
        if self.error is not None:
            raise PublishError(f"{self.name}: outbox stopped: {self.error}")
        if len(self._items) >= self.size:
            raise QueueFull(f"queue is full: {queue_id} (outbox of {self.size} "
                            f"messages waiting for {self.target})")
        self._items.append((queue_id, item))
        self._pending[queue_id] += 1
        self._idle.clear()
        self._ready.set()

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[None]:
        """Start the flusher (again after :meth:`close`); returns its task."""
        if self._task is None or self._task.done():
            loop = loop or asyncio.get_running_loop()
            self._task = loop.create_task(self._flush(), name=f"{self.name}:outbox")
            if self._items:
                self._ready.set()
        return self._task

    async def close(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for everything to be sent, stop the flusher, and
        return how many items were not delivered (they are dropped: the caller says so)."""
        if self._items or not self._idle.is_set():
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                pass
        undelivered = len(self)
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        self._items.clear()
        self._pending.clear()
        self._inflight = 0
        self._idle.set()
        return undelivered

    async def _flush(self) -> None:
        try:
            await self._flush_forever()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a bug: say so on the next put, never drop silently
            self._log.exception("%s: outbox flusher failed", self.name)
            self.error = e

    async def _flush_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._items:
                qid = self._items[0][0]
                batch: list[T] = []
                while self._items and self._items[0][0] == qid and len(batch) < BATCH:
                    batch.append(self._items.popleft()[1])
                self._inflight = len(batch)
                await self._send_batch(qid, batch)
                self._pending[qid] -= len(batch)
                if self._pending[qid] <= 0:
                    del self._pending[qid]
                self._inflight = 0
            self._idle.set()

    async def _send_batch(self, qid: str, batch: list[T]) -> None:
        delay = _BACKOFF[0]
        while True:
            try:
                await self._send(qid, batch)
                return
            except self._retry_on as e:  # unreachable too long: keep the batch, say so, retry
                self._log.error("%s: %s; %d message(s) kept in the outbox, retrying", self.name, e,
                                len(batch) + len(self._items))
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF[1])
