"""``queue.driver.memory``: a bounded FIFO per queue, in this process, on the running loop.

Like Wippy's driver (a Go buffered channel per queue): FIFO, capacity ``max_length``
(default 1000), publishers wait while a queue is full, several consumers on one queue
compete (each message goes to exactly one). Unlike it, nothing is lost: requeues ignore
the capacity, a stopped driver keeps its queues, and messages survive a restart of the
runtime for as long as the process lives.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import QueueFull, QueueNotFound
from ..message import Message
from .base import Driver, QueueSpec

#: A memory queue's capacity when its entry sets none (Wippy's default).
MAX_LENGTH_DEFAULT = 1000

__all__ = ["MemoryDriver", "MemoryQueue"]


class MemoryQueue:
    """One queue: ready messages, and those waiting on it. It is the driver's
    :class:`~wqnb.drivers.base.LocalQueue`: consumers and publishers in this process use
    it directly, with no await per message.

    A waiter is a one-shot callback registered by a consumer in push mode (``_pushers``:
    called synchronously, it takes at once) or a future (``_takers``: woken with a bare
    signal, it takes messages itself after it resumes, so a cancelled waiter can never
    lose a message). Push callbacks are served first.
    """

    __slots__ = ("spec", "capacity", "ready", "_pushers", "_takers", "_putters", "notify")

    def __init__(self, spec: QueueSpec) -> None:
        self.spec = spec
        self.capacity = spec.max_length if spec.max_length is not None else MAX_LENGTH_DEFAULT
        self.ready: deque[Message] = deque()
        self._pushers: deque[Callable[[], None]] = deque()
        #: ``notify(callback)``: call ``callback()`` once, synchronously, when a message is
        #: ready. The deque's own ``append`` (a C call: a consumer registers on every
        #: message it finds the queue empty for).
        self.notify: Callable[[Callable[[], None]], None] = self._pushers.append
        self._takers: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()

    @staticmethod
    def _wake_one(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    def put(self, message: Message) -> bool:
        """Append if there is room, waking no one yet (the publish fast path); False when full."""
        ready = self.ready
        if len(ready) >= self.capacity:
            return False
        ready.append(message)
        return True

    def wake(self) -> None:
        """One waiting consumer: messages are ready."""
        if self._pushers:
            self._pushers.popleft()()  # a consumer's push callback: it takes what it can now
        elif self._takers:
            self._wake_one(self._takers)

    def append(self, message: Message) -> None:
        self.ready.append(message)
        if self._pushers or self._takers:
            self.wake()

    def cancel_notify(self, callback: Callable[[], None]) -> None:
        try:
            self._pushers.remove(callback)
        except ValueError:
            pass

    def requeue(self, messages: Sequence[Message], *, front: bool) -> None:
        """Back at the head in order (a stop) or at the tail (a nack); ignores capacity."""
        if front:
            self.ready.extendleft(reversed(messages))
        else:
            self.ready.extend(messages)
        for _ in messages:
            if not (self._pushers or self._takers):
                break
            self.wake()

    def take_nowait(self, n: int) -> list[Message]:
        ready = self.ready
        if not ready:
            return []
        if n == 1 or len(ready) == 1:
            out = [ready.popleft()]
        else:
            out = [ready.popleft() for _ in range(min(n, len(ready)))]
        putters = self._putters
        for _ in out:  # one waiting publisher per slot freed
            if not putters:
                break
            self._wake_one(putters)
        # More may be left for another waiting consumer; the caller wakes it (route.wake())
        # once it has recorded its own deliveries, so rows and gauges stay in order.
        return out

    async def wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.ready:
            fut = loop.create_future()
            self._takers.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and self.ready:
                    self._wake_one(self._takers)  # pass the signal on, nothing is lost
                raise

    async def wait_room(self) -> bool:
        """Wait until the queue has room; return True if it had to wait."""
        if len(self.ready) < self.capacity:
            return False
        loop = asyncio.get_running_loop()
        while len(self.ready) >= self.capacity:
            fut = loop.create_future()
            self._putters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and len(self.ready) < self.capacity:
                    self._wake_one(self._putters)
                raise
        return True


class MemoryDriver(Driver):
    """Queues in this process. Publishing works before ``start`` (as in Wippy)."""

    kind = "queue.driver.memory"

    def __init__(self, id: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(id, options)
        self.queues: dict[str, MemoryQueue] = {}

    async def declare(self, spec: QueueSpec) -> None:
        self.declare_now(spec)

    def declare_now(self, spec: QueueSpec) -> MemoryQueue:
        """``declare`` without a loop: the runtime declares memory queues when it is
        built, so that publishing works before ``start`` (as in Wippy)."""
        q = self.queues.get(spec.id)
        if q is None:
            q = self.queues[spec.id] = MemoryQueue(spec)
        else:
            q.spec = spec  # Wippy: a redeclare swaps the config and keeps the backlog
            q.capacity = spec.max_length if spec.max_length is not None else MAX_LENGTH_DEFAULT
        return q

    def has_queue(self, queue_id: str) -> bool:
        return queue_id in self.queues

    def local(self, queue_id: str) -> MemoryQueue:
        return self._queue(queue_id)

    def _queue(self, queue_id: str) -> MemoryQueue:
        try:
            return self.queues[queue_id]
        except KeyError:
            raise QueueNotFound(f"queue not found: {queue_id}") from None

    async def publish(self, queue_id: str, messages: Sequence[Message]) -> None:
        q = self._queue(queue_id)
        for message in messages:
            if len(q.ready) >= q.capacity:
                await q.wait_room()
            q.append(message)

    def publish_nowait(self, queue_id: str, message: Message) -> None:
        q = self._queue(queue_id)
        if len(q.ready) >= q.capacity:
            raise QueueFull(f"queue is full: {queue_id} holds max_length={q.capacity} messages")
        q.append(message)

    async def fetch(self, queue_id: str, max_messages: int) -> list[Message]:
        q = self._queue(queue_id)
        while True:
            if q.ready:
                return q.take_nowait(max_messages)
            await q.wait_ready()

    async def nack(self, queue_id: str, messages: Sequence[Message]) -> None:
        self._queue(queue_id).requeue(messages, front=False)

    async def release(self, queue_id: str, messages: Sequence[Message]) -> None:
        self._queue(queue_id).requeue(messages, front=True)

    async def store(self, queue_id: str, messages: Sequence[Message]) -> None:
        self._queue(queue_id).requeue(messages, front=False)

    def depth(self, queue_id: str) -> int:
        return len(self._queue(queue_id).ready)

    def ready_view(self, queue_id: str) -> deque[Message]:
        return self._queue(queue_id).ready
