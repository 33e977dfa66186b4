"""A pull-only reference driver: a broker's contract with nothing else (like httpx's
``MockTransport``). It keeps messages in their wire form (id, body, headers as JSON, the
attempt), hands out receipts, holds fetched messages in flight until they are acked,
nacked or released, and has none of the memory driver's in-process fast paths, so the
consumer and the runtime take exactly the path they take on RabbitMQ or Redis.

It also counts the frames a real broker would get (``frames``), so tests can check that
a double settle sends one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wqnb.drivers.base import Driver, QueueSpec
from wqnb.errors import QueueFull, QueueNotFound
from wqnb.message import Message


@dataclass
class Wire:
    """A message as a broker stores it."""

    id: str
    body: str | bytes
    headers: str  # JSON: what survives a wire
    attempt: int
    redelivered: bool = False


@dataclass
class RefQueue:
    spec: QueueSpec
    ready: deque[Wire] = field(default_factory=deque)
    in_flight: dict[int, Wire] = field(default_factory=dict)
    changed: asyncio.Event | None = None

    def signal(self) -> None:
        if self.changed is not None:
            self.changed.set()


class ReferenceDriver(Driver):
    kind = "queue.driver.reference"
    exact_depth = True

    def __init__(self, id: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(id, options)
        self.queues: dict[str, RefQueue] = {}
        self._receipts = itertools.count(1)
        self.frames: list[tuple[str, str, int]] = []  # (op, queue, receipt)
        self.subscriptions: dict[str, dict[str, Any]] = {}

    def _q(self, queue_id: str) -> RefQueue:
        try:
            return self.queues[queue_id]
        except KeyError:
            raise QueueNotFound(f"queue not found: {queue_id}") from None

    @staticmethod
    def _wire(m: Message, attempt: int | None = None) -> Wire:
        return Wire(m.id, m.body, json.dumps(m.headers), m.attempt if attempt is None else attempt)

    def _full(self, q: RefQueue) -> bool:
        return q.spec.max_length is not None and len(q.ready) >= q.spec.max_length

    async def declare(self, spec: QueueSpec) -> None:
        q = self.queues.get(spec.id)
        if q is None:
            self.queues[spec.id] = RefQueue(spec)
        else:
            q.spec = spec

    def has_queue(self, queue_id: str) -> bool:
        return queue_id in self.queues

    async def publish(self, queue_id: str, messages: Sequence[Message]) -> None:
        q = self._q(queue_id)
        for m in messages:
            while self._full(q):  # a broker refuses; the driver retries when there is room
                q.changed = q.changed or asyncio.Event()
                q.changed.clear()
                await q.changed.wait()
            q.ready.append(self._wire(m, 1))
            q.signal()

    def publish_nowait(self, queue_id: str, message: Message) -> None:
        q = self._q(queue_id)
        if self._full(q):
            raise QueueFull(f"queue is full: {queue_id} holds max_length={q.spec.max_length} messages")
        q.ready.append(self._wire(message, 1))
        q.signal()

    async def subscribe(self, queue_id: str, *, prefetch: int, concurrency: int, auto_ack: bool = False,
                        options: dict[str, Any] | None = None) -> None:
        self._q(queue_id)
        self.subscriptions[queue_id] = {"qos": prefetch + concurrency, "auto_ack": auto_ack}

    async def unsubscribe(self, queue_id: str) -> None:
        self.subscriptions.pop(queue_id, None)

    async def fetch(self, queue_id: str, max_messages: int) -> list[Message]:
        q = self._q(queue_id)
        while not q.ready:
            q.changed = q.changed or asyncio.Event()
            q.changed.clear()
            await q.changed.wait()  # cancelled here: nothing was taken
        out = []
        for _ in range(min(max_messages, len(q.ready))):
            w = q.ready.popleft()
            receipt = next(self._receipts)
            q.in_flight[receipt] = w
            m = Message(w.id, -1, w.body, json.loads(w.headers), w.attempt)
            m.receipt = receipt
            m.redelivered = w.redelivered
            out.append(m)
        q.signal()  # room for a waiting publisher
        return out

    def _settle(self, op: str, queue_id: str, m: Message) -> Wire:
        q = self._q(queue_id)
        self.frames.append((op, queue_id, m.receipt))
        try:
            return q.in_flight.pop(m.receipt)
        except KeyError:
            raise RuntimeError(f"PRECONDITION_FAILED - unknown delivery tag {m.receipt}") from None

    async def ack(self, queue_id: str, messages: Sequence[Message]) -> None:
        for m in messages:
            self._settle("ack", queue_id, m)

    async def nack(self, queue_id: str, messages: Sequence[Message]) -> None:
        q = self._q(queue_id)
        for m in messages:
            q.ready.append(self._wire(m))  # the copy, with the raised attempt, ignoring capacity
            self._settle("nack", queue_id, m)
        q.signal()

    async def release(self, queue_id: str, messages: Sequence[Message]) -> None:
        q = self._q(queue_id)
        wires = [self._settle("release", queue_id, m) for m in messages]
        for w in reversed(wires):
            w.redelivered = True
            q.ready.appendleft(w)
        q.signal()

    async def store(self, queue_id: str, messages: Sequence[Message]) -> None:
        q = self._q(queue_id)
        for m in messages:
            q.ready.append(self._wire(m))
        q.signal()

    def depth(self, queue_id: str) -> int:
        return len(self._q(queue_id).ready)

    async def info(self, queue_id: str) -> dict[str, Any]:
        q = self._q(queue_id)
        return {"message_count": len(q.ready), "ready": len(q.ready), "in_flight": len(q.in_flight)}


DRIVER = ReferenceDriver
