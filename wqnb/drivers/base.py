"""The one interface every queue backend implements (memory now; Redis Streams, AMQP next).

Who calls what:

* the **runtime** calls :meth:`Driver.start` / :meth:`Driver.stop` (lifecycle),
  :meth:`Driver.declare` (once per ``queue.queue`` entry) and :meth:`Driver.publish` /
  :meth:`Driver.publish_nowait`;
* a **consumer** pulls with :meth:`Driver.take_nowait` (what is ready right now, no
  waiting: the fast path) and :meth:`Driver.take` (wait until at least one is ready:
  a batched fetch of up to ``max_messages``), then settles with :meth:`Driver.ack` and
  :meth:`Driver.requeue`.

Guarantees a driver must give (the conformance tests in ``tests/test_driver_*.py`` check
them on every backend):

* at-least-once: a taken message stays the driver's responsibility until it is acked or
  requeued; a broker driver redelivers what a dead consumer never settled;
* :meth:`publish` waits while the queue holds ``max_length`` ready messages (that wait is
  the backpressure publishers feel); :meth:`publish_nowait` raises
  :class:`~wqnb.errors.QueueFull` instead;
* :meth:`requeue` never waits and never fails for capacity: a nack or a stop must not
  lose a message because a queue is full;
* bodies are ``str`` or ``bytes``, as they must be on a wire.

Drivers do not record events; the runtime and the consumers do (DESIGN §1).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..message import Message

__all__ = ["Driver", "QueueSpec"]


def _nothing() -> None:
    return None


class _DepthView:
    """``len(view)`` is ``driver.depth(queue_id)``."""

    __slots__ = ("driver", "queue_id")

    def __init__(self, driver: Driver, queue_id: str) -> None:
        self.driver = driver
        self.queue_id = queue_id

    def __len__(self) -> int:
        return self.driver.depth(self.queue_id)


@dataclass(frozen=True)
class QueueSpec:
    """A declared queue: its registry id, capacity and dead-letter policy."""

    id: str
    max_length: int = 1000
    dead_letter: str | None = None
    max_attempts: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Driver(ABC):
    """A queue backend. Subclasses implement the abstract methods; see the module doc."""

    kind: ClassVar[str]
    #: True when :meth:`ack` does nothing (the consumer then skips awaiting it).
    ack_is_noop: ClassVar[bool] = False

    def __init__(self, id: str, options: dict[str, Any] | None = None) -> None:
        self.id = id
        self.options = dict(options or {})

    async def start(self) -> None:
        """Connect / get ready. Publishing may happen before start (as in Wippy)."""

    async def stop(self) -> None:
        """Release connections. The memory driver keeps its queues and messages."""

    @abstractmethod
    def declare(self, spec: QueueSpec) -> None:
        """Create the queue if it does not exist; declaring again keeps its messages."""

    @abstractmethod
    async def publish(self, queue_id: str, message: Message) -> bool:
        """Append ``message``; wait while the queue is full. Returns True if it waited."""

    def room(self, queue_id: str) -> bool:
        """True if :meth:`publish` would not wait now (brokers without a local cap: True)."""
        return True

    @abstractmethod
    def publish_nowait(self, queue_id: str, message: Message) -> None:
        """Append ``message`` or raise :class:`~wqnb.errors.QueueFull`."""

    def take_nowait(self, queue_id: str, max_messages: int) -> list[Message]:
        """Up to ``max_messages`` ready messages, without waiting (may be empty)."""
        return []

    @abstractmethod
    async def take(self, queue_id: str, max_messages: int) -> list[Message]:
        """Wait until at least one message is ready, then return up to ``max_messages``.

        Must be cancellation-safe: if the caller is cancelled, no message is lost.
        """

    async def ack(self, queue_id: str, messages: Sequence[Message]) -> None:
        """The messages are done; forget them."""

    @abstractmethod
    def requeue(self, queue_id: str, messages: Sequence[Message], *, front: bool) -> None:
        """Put messages back, at the tail (a nack) or at the head in order (a stop).

        Never waits and never fails for capacity.
        """

    @abstractmethod
    def depth(self, queue_id: str) -> int:
        """Messages ready in the queue now (a cheap local figure: it is read per event)."""

    def info(self, queue_id: str) -> dict[str, Any]:
        """Wippy's ``queue.info`` shape: ``{"message_count": n, "ready": n}``."""
        n = self.depth(queue_id)
        return {"message_count": n, "ready": n}

    # -- fast paths: per-queue callables fetched once, used per message ---------------------
    def ready_view(self, queue_id: str) -> Sized:
        """Something whose ``len()`` is :meth:`depth` of one queue (read for every recorded
        event: an in-process driver returns its ready deque itself)."""
        return _DepthView(self, queue_id)

    def putter(self, queue_id: str) -> Callable[[Message], bool] | None:
        """In-process drivers: ``put(message) -> bool``, append now without waking anyone
        (False when full). The runtime records the ``publish`` row, then calls the
        :meth:`waker`, so a ``deliver`` is never recorded before its ``publish``.
        ``None`` (brokers): the runtime awaits :meth:`publish`.
        """
        return None

    def waker(self, queue_id: str) -> Callable[[], None]:
        """``wake()``: tell one waiting consumer that messages are ready (after ``put``)."""
        return _nothing

    async def wait_room(self, queue_id: str) -> None:
        """Wait until ``put`` may succeed (the queue is below ``max_length``)."""

    def room_waiter(self, queue_id: str) -> Callable[[], Awaitable[Any]]:
        """``await wait_room()``: :meth:`wait_room` bound to one queue."""
        return lambda: self.wait_room(queue_id)

    def taker(self, queue_id: str) -> Callable[[int], list[Message]]:
        """``take(n)``: :meth:`take_nowait` bound to one queue."""
        return lambda n: self.take_nowait(queue_id, n)

    def notifier(self, queue_id: str) -> Callable[[Callable[[], None]], None] | None:
        """Push delivery for in-process drivers: ``notify(callback)`` registers ``callback()``
        to be called once, synchronously, when a message becomes ready (the consumer then
        takes at once, with no fetcher task and no task switch).

        ``None`` when the driver cannot push (brokers): the consumer awaits :meth:`take`.
        """
        return None

    def cancel_notify(self, queue_id: str, callback: Callable[[], None]) -> None:
        """Withdraw a :meth:`notifier` callback that has not fired."""

    def has_queue(self, queue_id: str) -> bool:
        """True if ``queue_id`` was declared on this driver."""
        return False
