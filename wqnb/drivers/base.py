"""The one interface every queue backend implements: in-process (memory) and brokers.

Shaped like httpx's transports: one small async interface that the consumer and the
runtime call, many backends behind it, and a reference implementation with no fast paths
(``tests/test_driver_conformance.py``'s pull-only driver) that the conformance suite runs
beside the real ones.

Who calls what:

* the **runtime** calls :meth:`Driver.start` / :meth:`Driver.stop` (lifecycle),
  :meth:`Driver.declare` (once per ``queue.queue`` entry, at start: a broker needs its
  connection) and :meth:`Driver.publish` / :meth:`Driver.publish_nowait`;
* a **consumer** fetches with :meth:`Driver.fetch` (wait until at least one message is
  ready, then up to ``max_messages``: a batched fetch), and settles with :meth:`ack`,
  :meth:`nack` (a copy at the tail with ``attempts + 1``, then the original acked),
  :meth:`Driver.release` (on stop: back to the head, same attempt) and, for a dead
  letter, :meth:`Driver.store` on the dead-letter queue's driver followed by :meth:`ack`.

Guarantees a driver gives (``tests/test_driver_conformance.py`` checks them on every
backend, with the capability flags below for what a broker cannot do):

* **at-least-once**: a fetched message stays the driver's (or broker's) responsibility
  until it is acked, nacked or released; a broker redelivers what a dead consumer never
  settled, with ``redelivered`` set;
* :meth:`publish` returns once the message is stored (a broker has confirmed it); it waits
  (memory) or retries with backoff (brokers) while the queue holds ``max_length`` ready
  messages: that wait is the backpressure publishers feel. :meth:`publish_nowait` raises
  :class:`~wqnb.errors.QueueFull` instead, and every message it accepted is delivered;
* :meth:`nack`, :meth:`release` and :meth:`store` never lose a message because a queue is
  full (capacity bounds publishers, never requeues);
* bodies are ``str`` or ``bytes`` and come back as they went; headers keep their JSON
  types; ``message.id`` is the wire id, kept end to end;
* a message's ``attempt`` is ``1 + its "attempts" header``'s nacks: only :meth:`nack`
  raises it. A redelivery by the broker (a dead consumer, a broker restart) sets
  ``redelivered`` and spends no attempt.

Drivers do not record events; the runtime and the consumers do (DESIGN §1).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ..message import Message

__all__ = ["Driver", "QueueSpec", "LocalQueue"]


@dataclass(frozen=True)
class QueueSpec:
    """A declared queue: its registry id, capacity and dead-letter policy.

    ``max_length`` is ``None`` for "no cap" (a broker queue without ``options.max_length``;
    the memory driver's default of 1000 is filled in by the registry for memory queues).
    ``name`` is the broker's name for the queue (Wippy's ``queue_name``, default: the
    entry's name part). ``options`` carries ``driver_options.<driver>`` for the driver.
    """

    id: str
    max_length: int | None = 1000
    dead_letter: str | None = None
    max_attempts: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def broker_name(self) -> str:
        return self.name or self.id.partition(":")[2] or self.id


class LocalQueue(Protocol):
    """The optional in-process protocol: a queue that lives in this process.

    A consumer asks :meth:`Driver.local` once per queue; when it gets one, it takes
    messages synchronously in a push callback (no fetcher task, no await per message) and
    settles without awaiting. Every method is synchronous and never blocks.
    """

    #: ``len(ready)`` is the queue's depth, read for every recorded event.
    ready: Sized

    def put(self, message: Message) -> bool:
        """Append now without waking anyone (False when full)."""

    def wake(self) -> None:
        """Tell one waiting consumer that messages are ready (after :meth:`put`)."""

    async def wait_room(self) -> bool:
        """Wait until :meth:`put` may succeed; True if it had to wait."""

    def take_nowait(self, n: int) -> list[Message]:
        """Up to ``n`` ready messages, now (may be empty)."""

    def notify(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once, synchronously, when a message becomes ready."""

    def cancel_notify(self, callback: Callable[[], None]) -> None:
        """Withdraw a :meth:`notify` callback that has not fired."""

    def requeue(self, messages: Sequence[Message], *, front: bool) -> None:
        """Back at the tail (a nack) or the head in order (a stop); ignores capacity."""


class Driver(ABC):
    """A queue backend. Subclasses implement the abstract methods; see the module doc."""

    kind: ClassVar[str]
    #: Capabilities the conformance suite reads (what a broker cannot promise).
    #: ``depth()`` is exact at every instant (False: a cached, approximate figure).
    exact_depth: ClassVar[bool] = True
    #: One consumer sees messages in publish order, and a nack goes to the tail.
    fifo: ClassVar[bool] = True
    #: Released messages come back at the head, in their order.
    release_in_order: ClassVar[bool] = True
    #: Messages survive a restart of the broker process (tested where a server runs).
    durable: ClassVar[bool] = False
    #: The driver names its broker-side consumers after the consumer entry: a consumer
    #: then passes ``consumer=<its entry id>`` to :meth:`subscribe` (Redis Streams'
    #: consumer names). Off by default, so no other driver's signature changes.
    names_consumers: ClassVar[bool] = False

    def __init__(self, id: str, options: dict[str, Any] | None = None) -> None:
        self.id = id
        self.options = dict(options or {})

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect / get ready. Raises :class:`~wqnb.errors.DriverUnavailable` naming the
        driver and its address (credentials hidden) when the broker cannot be reached
        within the driver's connection timeout."""

    async def stop(self) -> None:
        """Release connections. The memory driver keeps its queues and messages."""

    @abstractmethod
    async def declare(self, spec: QueueSpec) -> None:
        """Create the queue if it does not exist; declaring again keeps its messages."""

    def has_queue(self, queue_id: str) -> bool:
        """True if ``queue_id`` was declared on this driver."""
        return False

    # -- publishing -----------------------------------------------------------------------
    @abstractmethod
    async def publish(self, queue_id: str, messages: Sequence[Message]) -> None:
        """Store ``messages`` in order; return once stored (confirmed). Waits or retries
        while the queue is full; raises :class:`~wqnb.errors.PublishError` if the broker
        stays unreachable past the driver's timeout (never a silent drop)."""

    @abstractmethod
    def publish_nowait(self, queue_id: str, message: Message) -> None:
        """Accept ``message`` now or raise :class:`~wqnb.errors.QueueFull`. A broker hands
        it to a bounded outbox flushed with confirms; what it accepts is delivered."""

    # -- consuming ------------------------------------------------------------------------
    async def subscribe(self, queue_id: str, *, prefetch: int, concurrency: int, auto_ack: bool = False,
                        options: dict[str, Any] | None = None) -> None:
        """A consumer starts on ``queue_id`` (before its first :meth:`fetch`). A broker
        starts delivering here: AMQP ``basic.qos(prefetch + concurrency)`` then
        ``basic.consume``, so that unsettled ≤ prefetch + concurrency holds at the broker
        too. ``options`` is the consumer's ``driver_options.<driver>``."""

    async def unsubscribe(self, queue_id: str) -> None:
        """The consumer stops taking: no more deliveries; what the driver holds that no
        :meth:`fetch` returned yet is released to the broker. Acks, nacks and releases of
        what was fetched still work afterwards (running handlers finish)."""

    @abstractmethod
    async def fetch(self, queue_id: str, max_messages: int) -> list[Message]:
        """Wait until at least one message is ready, then return up to ``max_messages``.

        Cancellation-safe: if the caller is cancelled, no message is lost (it is either
        not taken, or released/redelivered). A returned message carries its ``receipt``
        and ``redelivered``.
        """

    async def ack(self, queue_id: str, messages: Sequence[Message]) -> None:
        """The messages are done; forget them (batched)."""

    @abstractmethod
    async def nack(self, queue_id: str, messages: Sequence[Message]) -> None:
        """Requeue at the tail as copies whose ``attempt`` is one more, then ack the
        originals (a crash in between gives a duplicate, never a loss). The consumer has
        already raised ``message.attempt``; the copy carries it in its ``attempts``
        header. Never refused for capacity."""

    @abstractmethod
    async def release(self, queue_id: str, messages: Sequence[Message]) -> None:
        """Stop: hand fetched messages back, unhandled, at the head and in order where
        the broker can (``release_in_order``), same attempt."""

    @abstractmethod
    async def store(self, queue_id: str, messages: Sequence[Message]) -> None:
        """Append without waiting for room (a dead letter, a delayed requeue landing):
        capacity bounds publishers, never these."""

    # -- reading --------------------------------------------------------------------------
    @abstractmethod
    def depth(self, queue_id: str) -> int:
        """Messages ready in the queue (a cheap local figure, read per recorded event; on
        a broker a cached one, refreshed by the driver: ``exact_depth`` is then False)."""

    async def info(self, queue_id: str) -> dict[str, Any]:
        """Wippy's ``queue.info`` shape, asked of the broker: ``{"message_count": n,
        "ready": n}``, plus ``in_flight`` where the broker knows it."""
        n = self.depth(queue_id)
        return {"message_count": n, "ready": n}

    def ready_view(self, queue_id: str) -> Sized:
        """Something whose ``len()`` is :meth:`depth` of one queue."""
        return _DepthView(self, queue_id)

    # -- the optional in-process protocol -------------------------------------------------
    def local(self, queue_id: str) -> LocalQueue | None:
        """The queue itself when it lives in this process (memory), else ``None``."""
        return None


class _DepthView:
    """``len(view)`` is ``driver.depth(queue_id)``."""

    __slots__ = ("driver", "queue_id")

    def __init__(self, driver: Driver, queue_id: str) -> None:
        self.driver = driver
        self.queue_id = queue_id

    def __len__(self) -> int:
        return self.driver.depth(self.queue_id)
