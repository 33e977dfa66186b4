"""``queue.driver.amqp``: wqnb queues on RabbitMQ, at-least-once, through aio-pika.

The contract is :mod:`wqnb.drivers.base`; the decisions are notes/brokers.md §10. In short:

* **publish** = ``basic.publish`` on a confirm-mode channel, persistent, ``mandatory``
  (an unroutable message comes back instead of vanishing); it returns once the broker
  confirmed. A queue with ``max_length`` is declared with ``x-max-length`` and
  ``x-overflow: reject-publish``: the broker refuses (``basic.nack``) a publish into a
  full queue and :meth:`AmqpDriver.publish` retries with backoff (5 ms → 100 ms) until
  there is room: that is the backpressure. While the broker is unreachable it retries
  until ``publish_timeout`` (30 s), then raises :class:`~wqnb.errors.PublishError`.
* **publish_nowait** puts the message in a bounded outbox (``outbox_size``, 1000) that one
  task flushes with confirms; it raises :class:`~wqnb.errors.QueueFull` when the outbox is
  full or the queue is known full (a refused publish, or the cached depth at
  ``max_length``). Every message it accepted is published later (refusals are retried);
  :meth:`AmqpDriver.stop` waits for the outbox and raises ``PublishError`` naming how many
  it could not deliver, never a silent drop.
* **fetch** pops messages that ``basic.consume`` pushed into a local buffer. The broker
  bounds that push with ``basic.qos``: the consumer calls :meth:`AmqpDriver.subscribe`
  with ``prefetch + concurrency`` before its first fetch (the driver entry's
  ``prefetch_count`` overrides it, Wippy's knob).
* **ack** = ``basic.ack`` (one ``multiple`` frame when the batch is every outstanding
  delivery up to its highest tag, else one frame each); **nack** = a confirmed copy with
  the raised attempt in ``x-wqnb-attempt``, then ``basic.ack`` of the original. If the
  copy is refused because the queue is full, the original is ``basic.nack(requeue=True)``
  instead (RabbitMQ keeps a requeued message even in a full queue) and the raised attempt
  is kept in this process by message id (up to 100,000 ids), so a redelivery here carries
  it; a redelivery to another process starts from the header it has.
  **release** (stop) = ``basic.nack(requeue=True)``: classic queues put the messages back
  in their old places. **store** (a dead letter) = a confirmed publish, retried while the
  target refuses. A crash between copy and ack gives a duplicate, never a loss.
* **auto_ack: true** consumes with ``no_ack``: the broker forgets a message the moment it
  sends it, so a crash loses what this process holds (at-most-once). ack frames are never
  sent (Wippy's mix closes the channel); a nack still publishes the copy; a release
  republishes the buffered messages at the tail. RabbitMQ ignores ``basic.qos`` for no-ack
  consumers, so the driver cancels its consumer while its buffer holds more than the QoS
  and consumes again once it drained.
* **reconnect**: when the connection drops, one task redials with backoff
  (``reconnect_delay`` doubling to ``reconnect_max_delay``), redeclares the queues,
  reopens the consumer channels with their QoS and consumes again. Acks of deliveries
  from a dead channel are dropped (the broker already requeued those messages and
  redelivers them with ``redelivered`` set: duplicates, never loss). A consumer channel
  closed alone (RabbitMQ's ``consumer_timeout``) is reopened the same way.
* **depth** is the broker's ``message_count`` (ready) from a passive declare, refreshed
  every 0.5 s by a small task, plus local corrections (own confirmed publishes, messages
  taken) and the deliveries buffered here; approximate (``exact_depth = False``).
  :meth:`info` and :meth:`settled` ask the broker.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from yarl import URL

from ..errors import ConfigError, DriverUnavailable, PublishError, QueueFull, QueueNotFound
from ..message import Message
from . import amqp_wire
from ._inbox import Inbox
from ._outbox import Outbox
from ._tasks import cancel_and_wait
from .amqp_config import AmqpConfig, AmqpConsumerOptions, AmqpQueueOptions, safe_url
from .base import Driver, QueueSpec

__all__ = ["AmqpDriver", "DRIVER"]

log = logging.getLogger("wqnb.drivers.amqp")

#: Errors that mean "the connection or channel went away": retry after reconnecting.
_LOST = (aiormq.exceptions.AMQPConnectionError, aiormq.exceptions.ChannelInvalidStateError,
         aiormq.exceptions.AMQPChannelError, ConnectionError, OSError, RuntimeError)
_FULL_BACKOFF = (0.005, 0.1)  # publish retry while the broker refuses for capacity
_DEPTH_REFRESH = 0.5
_ATTEMPTS_KEPT = 100_000

#: A message ready to send: (message, body bytes, properties).
_Frame = tuple[Message, bytes, Basic.Properties]


@dataclass
class _QueueState:
    """One declared queue: its broker name and arguments, and the cached depth."""

    spec: QueueSpec
    name: str
    opts: AmqpQueueOptions
    arguments: dict[str, Any]
    ready: int = 0  # the broker's message_count at the last refresh
    delta: int = 0  # own confirmed publishes minus deliveries here, since that refresh
    full: bool = False  # a publish was refused and no refresh has shown room since
    declared: bool = False


@dataclass
class _Subscription:
    """This process's ``basic.consume`` on one queue, and what it pushed here."""

    queue_id: str
    qos: int
    auto_ack: bool = False
    exclusive: bool = False
    consumer_tag: str = ""
    channel: Any = None  # aio_pika channel
    raw: Any = None  # its aiormq channel (deliveries' receipt.channel)
    tag: str = ""  # the consumer tag in use
    buffer: Inbox = field(default_factory=Inbox)
    unacked: dict[int, None] = field(default_factory=dict)  # outstanding delivery tags, in order
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    paused: bool = False  # auto_ack flow control: consumer cancelled while the buffer is full
    pausing: asyncio.Task[None] | None = None
    resuming: bool = False
    stopped: bool = False


class AmqpDriver(Driver):
    """RabbitMQ through aio-pika: see the module docstring for every semantic."""

    kind = "queue.driver.amqp"
    exact_depth = False
    fifo = True
    release_in_order = True
    durable = True

    def __init__(self, id: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(id, options)
        self.config = AmqpConfig.parse(self.options, entry=id)
        self._queues: dict[str, _QueueState] = {}
        self._subs: dict[str, _Subscription] = {}
        self._conn: Any = None
        self._pub: Any = None  # aiormq channel in confirm mode
        self._ctl: Any = None  # aio_pika channel for declares and passive declares
        self._ctl_raw: Any = None  # its aiormq channel
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = False
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: Outbox[_Frame] = Outbox(
            id, self.config.outbox_size, self._send_outbox, log, target=self.config.safe_url)
        self._attempts: collections.OrderedDict[str, int] = collections.OrderedDict()
        ttl = self.config.default_message_ttl
        self._default_expiration = None if ttl is None else int(round(ttl * 1000))
        self._depth_listeners: list[Callable[[], None]] = []
        #: Counters a test or a notebook can read.
        self.stats = collections.Counter[str]()

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def safe_url(self) -> str:
        return self.config.safe_url

    def _client_url(self) -> URL:
        cfg = self.config
        url = URL(cfg.url)
        if cfg.tls.enabled and url.scheme == "amqp":
            url = url.with_scheme("amqps")
            if url.explicit_port is None:
                url = url.with_port(5671)
        if cfg.vhost:
            url = url.with_path("/" + cfg.vhost.replace("%", "%25").replace("/", "%2F"), encoded=True)
        query: dict[str, str] = {"auth": cfg.auth_mechanism.lower()}
        if cfg.heartbeat is not None:
            query["heartbeat"] = str(int(round(cfg.heartbeat)))
        return url.update_query(query)

    async def _connect_once(self) -> None:
        cfg = self.config
        props = {"connection_name": cfg.connection_name} if cfg.connection_name else None
        ssl_context = cfg.tls.context() if self.config.tls_enabled else None
        conn = await asyncio.wait_for(
            aio_pika.connect(self._client_url(), timeout=cfg.connection_timeout,
                             ssl_context=ssl_context, client_properties=props),
            cfg.connection_timeout,
        )
        try:
            pub = await conn.channel(publisher_confirms=True, on_return_raises=False)
            ctl = await conn.channel(publisher_confirms=False)
            self._pub = await pub.get_underlay_channel()
            self._ctl, self._ctl_raw = ctl, await ctl.get_underlay_channel()
            self._conn = conn
            for state in self._queues.values():
                state.declared = False
                await self._declare_on_broker(state)
        except BaseException:
            await conn.close()
            raise
        conn.close_callbacks.add(self._on_connection_closed)

    def _on_connection_closed(self, _sender: Any, exc: BaseException | None = None) -> None:
        if self._closing:
            return
        log.warning("%s: connection to %s lost (%s); reconnecting", self.id, self.safe_url,
                    _reason(exc, self.config.url))
        self._connected.clear()
        self._lost.set()

    async def start(self) -> None:
        if self._started:
            return
        self._closing = False
        try:
            await self._connect_once()
        except ConfigError:
            raise
        except Exception as e:
            raise DriverUnavailable(
                f"{self.kind} {self.id}: cannot connect to {self.safe_url} within "
                f"connection_timeout {self.config.connection_timeout:g}s: {_reason(e, self.config.url)}"
            ) from None
        self._started = True
        self._connected.set()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._supervise(), name=f"{self.id}:reconnect"),
                       loop.create_task(self._refresh_depths(), name=f"{self.id}:depth")]
        self._outbox.start(loop)
        for sub in self._subs.values():
            await self._open_subscription(sub)

    async def stop(self) -> None:
        """Flush the outbox (up to ``publish_timeout``), then close the connection: the
        broker requeues every delivery not acked."""
        if not self._started:
            return
        undelivered = await self._outbox.close(self.config.publish_timeout)
        self._closing = True
        self._started = False
        await cancel_and_wait(self._tasks)
        self._tasks = []
        for sub in self._subs.values():
            sub.raw = sub.channel = None
            sub.buffer.clear()
            sub.unacked.clear()
            sub.paused = False
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception:  # already gone
                pass
        self._conn = self._pub = self._ctl = self._ctl_raw = None
        self._connected.clear()
        self._lost.clear()
        if undelivered:
            raise PublishError(
                f"{self.kind} {self.id}: {undelivered} message(s) accepted by publish_nowait could not be "
                f"published to {self.safe_url} within publish_timeout {self.config.publish_timeout:g}s"
            )

    async def _supervise(self) -> None:
        """Reconnect with backoff whenever the connection drops; restore queues and consumers."""
        cfg = self.config
        while True:
            await self._lost.wait()
            if cfg.reconnect_delay <= 0:
                log.error("%s: reconnect_delay is 0, not reconnecting to %s", self.id, self.safe_url)
                return
            delay = cfg.reconnect_delay
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._connect_once()
                    break
                except Exception as e:
                    log.warning("%s: reconnect to %s failed (%s); next try in %gs", self.id,
                                self.safe_url, _reason(e, cfg.url), min(delay * 2, cfg.reconnect_max_delay))
                    delay = min(delay * 2, cfg.reconnect_max_delay)
            self._lost.clear()
            self.stats["reconnects"] += 1
            self._connected.set()
            for sub in list(self._subs.values()):
                if sub.stopped:
                    continue
                if sub.raw is not None and sub.raw.is_closed:
                    self._reset_subscription(sub)
                await self._open_subscription(sub)  # no-op if already reopened

    async def _wait_connected(self, deadline: float, what: str,
                              error: type[Exception] = PublishError) -> None:
        """Wait for the connection until ``deadline`` (loop time), else raise ``error``."""
        remaining = deadline - asyncio.get_running_loop().time()
        if not self._connected.is_set():
            if remaining <= 0 or not self._started:
                raise error(
                    f"{self.kind} {self.id}: {what}: {self.safe_url} unreachable for "
                    f"publish_timeout {self.config.publish_timeout:g}s" if self._started else
                    f"{self.kind} {self.id}: {what}: driver not started"
                )
            try:
                await asyncio.wait_for(self._connected.wait(), remaining)
            except TimeoutError:
                raise error(
                    f"{self.kind} {self.id}: {what}: {self.safe_url} unreachable for "
                    f"publish_timeout {self.config.publish_timeout:g}s"
                ) from None

    # -- queues -------------------------------------------------------------------------
    async def declare(self, spec: QueueSpec) -> None:
        raw = spec.options.get("amqp", spec.options) if isinstance(spec.options, dict) else {}
        opts = AmqpQueueOptions.parse(raw, entry=spec.id)
        state = self._queues.get(spec.id)
        args = opts.arguments(spec.max_length, self.config)
        if state is not None:
            if state.arguments != args or state.opts != opts:
                log.warning("%s: queue %s redeclared with other arguments; the broker keeps the "
                            "first ones (delete the queue to change them)", self.id, state.name)
            state.spec = spec
            return
        state = self._queues[spec.id] = _QueueState(spec, spec.broker_name, opts, args)
        if self._connected.is_set():
            await self._declare_on_broker(state)

    async def _declare_on_broker(self, state: _QueueState) -> None:
        o = state.opts
        try:
            ok = await self._ctl_raw.queue_declare(
                state.name, durable=o.durable, auto_delete=o.auto_delete,
                arguments=state.arguments or None)
        except aiormq.exceptions.ChannelPreconditionFailed as e:
            await self._reopen_ctl()
            raise ConfigError(
                f"broker queue {state.name!r} exists with other arguments than this entry asks "
                f"for ({_reason(e, self.config.url)}); delete the queue or match them",
                entry=state.spec.id, field="driver_options.amqp",
            ) from None
        state.ready, state.delta, state.declared = ok.message_count, 0, True

    async def _reopen_ctl(self) -> None:
        """A failed (passive) declare closes its channel: open another."""
        self._ctl = await self._conn.channel(publisher_confirms=False)
        self._ctl_raw = await self._ctl.get_underlay_channel()

    def has_queue(self, queue_id: str) -> bool:
        return queue_id in self._queues

    def _state(self, queue_id: str) -> _QueueState:
        try:
            return self._queues[queue_id]
        except KeyError:
            raise QueueNotFound(f"queue not found: {queue_id}") from None

    # -- publishing ---------------------------------------------------------------------
    async def publish(self, queue_id: str, messages: Sequence[Message] | Message) -> None:
        if isinstance(messages, Message):
            messages = [messages]
        await self._publish(self._state(queue_id), list(messages), "publish")

    async def store(self, queue_id: str, messages: Sequence[Message]) -> None:
        """A confirmed publish; a dead-letter queue normally has no cap, and if it has one
        the driver retries while the broker refuses (RabbitMQ offers no way past it)."""
        await self._publish(self._state(queue_id), list(messages), "store")

    def _encode(self, state: _QueueState, messages: Sequence[Message], what: str) -> list[_Frame]:
        frames = []
        for m in messages:
            try:
                frames.append((m, *amqp_wire.encode(m, default_expiration_ms=self._default_expiration)))
            except ValueError as e:
                raise PublishError(f"{self.kind} {self.id}: {what} to {state.spec.id}: {e}") from None
        return frames

    async def _publish(self, state: _QueueState, messages: Sequence[Message], what: str) -> None:
        await self._publish_frames(state, self._encode(state, messages, what), what)

    async def _publish_frames(self, state: _QueueState, frames: list[_Frame], what: str, *,
                              refused_ids: set[str] | None = None) -> None:
        """Confirmed publishes, in order; retried while the broker refuses them for
        capacity (no time limit: that is backpressure) and while it is unreachable (up to
        ``publish_timeout``, then :class:`PublishError`). With ``refused_ids``, a refused
        message is not retried: its id is added there (a nack's fallback)."""
        loop = asyncio.get_running_loop()
        where = f"{what} to {state.spec.id}"
        deadline = loop.time() + self.config.publish_timeout
        backoff = _FULL_BACKOFF[0]
        while frames:
            await self._wait_connected(deadline, where)
            ch = self._pub
            # Counted when sent, taken back when not confirmed: the cached depth then errs
            # low, never high, when a confirm lands after a passive declare's answer.
            state.delta += len(frames)
            if len(frames) == 1:  # no gather (and no task) for one message
                _, body, props = frames[0]
                try:
                    results: list[Any] = [await ch.basic_publish(
                        body, routing_key=state.name, properties=props, mandatory=True)]
                except Exception as e:
                    results = [e]
            else:
                results = await asyncio.gather(
                    *(ch.basic_publish(body, routing_key=state.name, properties=props, mandatory=True)
                      for _, body, props in frames),
                    return_exceptions=True,
                )
            retry, refused, lost, unroutable = [], 0, 0, 0
            for frame, r in zip(frames, results, strict=True):
                if isinstance(r, Basic.Ack):
                    continue
                state.delta -= 1
                if isinstance(r, aiormq.exceptions.DeliveryError) and not isinstance(
                        r, aiormq.exceptions.PublishError):
                    refused += 1  # basic.nack: reject-publish, the queue is full
                    if refused_ids is not None:
                        refused_ids.add(frame[0].id)
                        continue
                elif isinstance(r, DeliveredMessage):
                    unroutable += 1  # basic.return: the queue is gone (deleted under us)
                elif isinstance(r, asyncio.CancelledError):
                    raise r
                elif isinstance(r, (*_LOST, TimeoutError)):
                    lost += 1
                elif isinstance(r, BaseException):
                    raise r
                retry.append(frame)
            if refused:
                state.full = True
                self.stats["refused"] += refused
            frames = retry
            if not frames:
                break
            if unroutable or lost:
                self.stats["unroutable"] += unroutable
                self.stats["publish_lost"] += lost
                if loop.time() > deadline:
                    why = (f"broker queue {state.name!r} does not exist" if unroutable else
                           f"{self.safe_url} unreachable for publish_timeout {self.config.publish_timeout:g}s")
                    raise PublishError(f"{self.kind} {self.id}: {where}: {why}")
                if self._connected.is_set() and self._pub is ch and ch.is_closed:
                    await self._reopen_publish_channel(ch)
                if unroutable:
                    await self._redeclare(state)
                await asyncio.sleep(0.02)
                continue
            deadline = loop.time() + self.config.publish_timeout  # full is not unreachable
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _FULL_BACKOFF[1])

    async def _redeclare(self, state: _QueueState) -> None:
        try:
            await self._declare_on_broker(state)
        except _LOST:
            pass

    async def _reopen_publish_channel(self, old: Any) -> None:
        try:
            ch = await self._conn.channel(publisher_confirms=True, on_return_raises=False)
            if self._pub is old:
                self._pub = await ch.get_underlay_channel()
        except _LOST:
            pass

    def publish_nowait(self, queue_id: str, message: Message) -> None:
        state = self._state(queue_id)
        cap = state.spec.max_length
        if cap is not None and (state.full or self.depth(queue_id) + self._outbox.pending(queue_id) >= cap):
            raise QueueFull(f"queue is full: {queue_id} holds max_length={cap} messages")
        self._outbox.put(queue_id, self._encode(state, [message], "publish_nowait")[0])

    async def _send_outbox(self, queue_id: str, frames: list[_Frame]) -> None:
        """The outbox's ``send``: confirmed publishes of one batch, in order."""
        await self._publish_frames(self._queues[queue_id], frames, "publish_nowait")

    # -- consuming ----------------------------------------------------------------------
    async def subscribe(self, queue_id: str, *, prefetch: int, concurrency: int, auto_ack: bool = False,
                        options: dict[str, Any] | None = None) -> None:
        """A consumer starts: ``basic.qos(prefetch + concurrency)`` (the driver entry's
        ``prefetch_count`` wins if set: Wippy's knob), then ``basic.consume`` (``no_ack``
        with ``auto_ack``). ``options`` is the consumer's ``driver_options.amqp``
        (``exclusive``, ``consumer_tag``). A second consumer entry on the same queue in
        this process shares the subscription and its QoS adds up."""
        await self._subscribe(queue_id, prefetch + concurrency, auto_ack=auto_ack, options=options)

    async def _subscribe(self, queue_id: str, qos: int, *, auto_ack: bool = False,
                         options: dict[str, Any] | None = None) -> None:
        self._state(queue_id)
        o = AmqpConsumerOptions.parse(options or {})
        exclusive, consumer_tag = o.exclusive, o.consumer_tag or None
        qos = self.config.prefetch_count or max(1, int(qos))
        sub = self._subs.get(queue_id)
        if sub is not None and sub.stopped:  # consuming again after unsubscribe
            sub.stopped, sub.qos, sub.auto_ack, sub.paused = False, qos, auto_ack, False
            sub.exclusive, sub.consumer_tag = exclusive, consumer_tag or ""
            if self._started and sub.raw is not None and not sub.raw.is_closed:
                if not auto_ack:
                    await sub.raw.basic_qos(prefetch_count=qos)
                await self._consume(sub, self._state(queue_id))
            elif self._started:
                await self._open_subscription(sub)
            return
        if sub is not None:
            sub.qos += qos
            if sub.raw is not None and not sub.raw.is_closed and not sub.auto_ack:
                await self._raise_qos(sub)
            return
        sub = self._subs[queue_id] = _Subscription(queue_id, qos, auto_ack, exclusive, consumer_tag or "")
        if self._started:
            await self._open_subscription(sub)

    async def _raise_qos(self, sub: _Subscription) -> None:
        """Apply a QoS that grew (a second consumer entry on this queue) to the broker.

        RabbitMQ fixes a consumer's prefetch (``basic.qos``, ``global=false``) when it
        starts consuming: a ``basic.qos`` sent later reaches only consumers started after
        it (measured on 3.10: 5 unacked stayed 5 after ``basic.qos(10)``). So the running
        consumer is cancelled and started again on the same channel, where its unacked
        deliveries stay valid (those read before ``cancel-ok`` still land in the buffer).
        ``global=true`` would apply at once, but quorum queues refuse it."""
        raw = sub.raw
        await raw.basic_qos(prefetch_count=sub.qos)
        if sub.tag and not sub.paused:
            await raw.basic_cancel(sub.tag)
            await asyncio.sleep(0)  # deliveries read before cancel-ok land in the buffer
            await self._consume(sub, self._state(sub.queue_id))

    async def unsubscribe(self, queue_id: str) -> None:
        """The consumer stops taking: ``basic.cancel``, then what the broker pushed here
        that no fetch returned is released (``basic.nack(requeue)``; republished with
        ``auto_ack``). Acks, nacks and releases of fetched messages still work."""
        sub = self._subs.get(queue_id)
        if sub is None or sub.stopped:
            return
        sub.stopped = True
        raw = sub.raw
        if raw is not None and not raw.is_closed and sub.tag and not sub.paused:
            try:
                await raw.basic_cancel(sub.tag)
            except _LOST:
                pass
        await asyncio.sleep(0)  # deliveries read before cancel-ok land in the buffer
        left = list(sub.buffer)
        sub.buffer.clear()
        if left:
            await self.release(queue_id, left)
        # The subscription stays: running handlers still ack through its channel.

    def _reset_subscription(self, sub: _Subscription) -> None:
        """The channel is gone: its deliveries are void (the broker requeued them)."""
        self.stats["voided"] += len(sub.buffer) if not sub.auto_ack else 0
        if not sub.auto_ack:
            sub.buffer.clear()
        sub.unacked.clear()
        sub.raw = sub.channel = None
        sub.paused = False

    async def _open_subscription(self, sub: _Subscription) -> None:
        async with sub.lock:
            if sub.stopped or (sub.raw is not None and not sub.raw.is_closed):
                return
            state = self._state(sub.queue_id)
            backoff = 0.05
            while True:
                if not self._connected.is_set():
                    return  # the supervisor reopens it once connected
                try:
                    channel = await self._conn.channel(publisher_confirms=False)
                    raw = await channel.get_underlay_channel()
                    if not sub.auto_ack:
                        await raw.basic_qos(prefetch_count=sub.qos)
                    sub.channel, sub.raw = channel, raw
                    await self._consume(sub, state)
                    break
                except _LOST as e:
                    if isinstance(e, aiormq.exceptions.ChannelAccessRefused):
                        raise DriverUnavailable(  # not ours to retry
                            f"{self.kind} {self.id}: cannot consume {state.spec.id} (broker queue "
                            f"{state.name!r}): {_reason(e, self.config.url)}") from None
                    if isinstance(e, aiormq.exceptions.ChannelNotFoundEntity):
                        await self._redeclare(state)  # deleted under us
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
            channel.close_callbacks.add(lambda _s, exc=None, sub=sub, raw=raw: self._on_sub_closed(sub, raw, exc))

    async def _consume(self, sub: _Subscription, state: _QueueState) -> None:
        raw = sub.raw
        loop = asyncio.get_running_loop()

        async def on_delivery(d: DeliveredMessage) -> None:
            if sub.raw is not raw:
                return  # a delivery of a channel given up on: the broker redelivers it
            m = amqp_wire.decode(d.header.properties, d.body)
            kept = self._attempts.pop(m.id, None)
            if kept is not None and kept > m.attempt:
                m.attempt = kept
            m.receipt = d
            m.redelivered = bool(d.delivery.redelivered)
            if not sub.auto_ack:
                sub.unacked[d.delivery.delivery_tag] = None
            if sub.stopped:  # arrived after unsubscribe handed the buffer back
                loop.create_task(self.release(sub.queue_id, [m]))
                return
            state.delta -= 1
            sub.buffer.append(m)
            sub.buffer.wake()
            if sub.auto_ack and not sub.paused and len(sub.buffer) > sub.qos:
                sub.paused = True
                self.stats["paused"] += 1
                sub.pausing = loop.create_task(self._pause(sub, raw))

        tag = sub.consumer_tag or ""
        if tag:
            tag = f"{tag}-{id(raw) & 0xFFFFFFFF:08x}"  # Wippy appends 8 hex digits too
        ok = await raw.basic_consume(state.name, on_delivery, no_ack=sub.auto_ack,
                                     exclusive=sub.exclusive, consumer_tag=tag or None)
        sub.tag = ok.consumer_tag

    async def _pause(self, sub: _Subscription, raw: Any) -> None:
        try:
            await raw.basic_cancel(sub.tag)
        except _LOST:
            pass

    async def _resume(self, sub: _Subscription) -> None:
        if sub.resuming:
            return
        sub.resuming = True
        try:
            if sub.pausing is not None:
                await sub.pausing  # cancel-ok first: the tag may be reused
            raw = sub.raw
            if raw is None or raw.is_closed or not sub.paused or sub.stopped:
                return
            sub.paused = False
            await self._consume(sub, self._state(sub.queue_id))
        except _LOST:
            pass
        finally:
            sub.resuming = False

    def _on_sub_closed(self, sub: _Subscription, raw: Any, exc: BaseException | None) -> None:
        if self._closing or sub.raw is not raw:
            return
        self._reset_subscription(sub)
        if sub.stopped:
            return
        log.warning("%s: consumer channel of %s closed (%s); reopening", self.id, sub.queue_id,
                    _reason(exc, self.config.url))
        if self._connected.is_set():
            asyncio.get_running_loop().create_task(self._open_subscription(sub))

    async def _subscription(self, queue_id: str, n: int) -> _Subscription:
        sub = self._subs.get(queue_id)
        if sub is None:  # fetch without subscribe: QoS = the first fetch's size
            await self._subscribe(queue_id, n)
            sub = self._subs[queue_id]
        return sub

    async def fetch(self, queue_id: str, max_messages: int) -> list[Message]:
        sub = await self._subscription(queue_id, max_messages)
        out = await sub.buffer.take(max_messages)
        if sub.paused and len(sub.buffer) <= sub.qos // 2:
            asyncio.get_running_loop().create_task(self._resume(sub))
        return out

    # -- settling -----------------------------------------------------------------------
    def _live(self, sub: _Subscription | None, m: Message) -> bool:
        """True if ``m`` was delivered on the subscription's current channel and is
        still outstanding (anything else is void: acking it would close the channel)."""
        r = getattr(m, "receipt", None)
        return (sub is not None and r is not None and r.channel is sub.raw and sub.raw is not None
                and not sub.raw.is_closed and r.delivery.delivery_tag in sub.unacked)

    async def _settle(self, sub: _Subscription, tags: list[int], *, requeue: bool | None) -> None:
        """``basic.ack`` (requeue None) or ``basic.nack(requeue=...)`` of ``tags``: one
        ``multiple`` frame when they are every outstanding tag up to the highest."""
        raw = sub.raw
        if not tags or raw is None:
            return
        if len(tags) == 1:  # the common case: one worker acks its message
            t = tags[0]
            sub.unacked.pop(t, None)
            try:
                if requeue is None:
                    await raw.basic_ack(t)
                else:
                    await raw.basic_nack(t, requeue=requeue)
            except _LOST:
                self.stats["dropped_settles"] += 1
            return
        tags.sort()
        top = tags[-1]
        below = 0
        for t in sub.unacked:
            if t > top:
                break
            below += 1
        for t in tags:
            sub.unacked.pop(t, None)
        try:
            if below == len(tags) and len(tags) > 1:
                if requeue is None:
                    await raw.basic_ack(top, multiple=True)
                else:
                    await raw.basic_nack(top, multiple=True, requeue=requeue)
                self.stats["multiple_frames"] += 1
                return
            for i, t in enumerate(tags):
                wait = i == len(tags) - 1
                if requeue is None:
                    await raw.basic_ack(t, wait=wait)
                else:
                    await raw.basic_nack(t, requeue=requeue, wait=wait)
        except _LOST:
            self.stats["dropped_settles"] += 1  # the broker requeued them with the channel

    async def ack(self, queue_id: str, messages: Sequence[Message]) -> None:
        sub = self._subs.get(queue_id)
        if sub is None or sub.auto_ack:
            return
        tags = [m.receipt.delivery.delivery_tag for m in messages if self._live(sub, m)]
        self.stats["stale_acks"] += len(messages) - len(tags)
        await self._settle(sub, tags, requeue=None)

    async def nack(self, queue_id: str, messages: Sequence[Message]) -> None:
        state = self._state(queue_id)
        sub = self._subs.get(queue_id)
        auto = sub is not None and sub.auto_ack
        live = [m for m in messages if auto or self._live(sub, m)]
        for m in messages:
            if not (auto or self._live(sub, m)):
                self._remember_attempt(m)  # its channel died: the broker redelivers it
        if not live:
            return
        copies = [Message(m.id, m.seq, m.body, m.headers, m.attempt) for m in live]
        if auto:
            await self._publish(state, copies, "nack")
            return
        refused: set[str] = set()
        await self._publish_frames(state, self._encode(state, copies, "nack"), "nack", refused_ids=refused)
        done = [m for m in live if m.id not in refused]
        back = [m for m in live if m.id in refused]
        for m in back:
            self._remember_attempt(m)
        self.stats["nack_requeued_full"] += len(back)
        assert sub is not None
        await self._settle(sub, [m.receipt.delivery.delivery_tag for m in done if self._live(sub, m)],
                           requeue=None)
        await self._settle(sub, [m.receipt.delivery.delivery_tag for m in back if self._live(sub, m)],
                           requeue=True)
        state.delta += len(back)

    def _remember_attempt(self, m: Message) -> None:
        a = self._attempts
        a[m.id] = max(m.attempt, a.get(m.id, 1))
        a.move_to_end(m.id)
        while len(a) > _ATTEMPTS_KEPT:
            a.popitem(last=False)

    async def release(self, queue_id: str, messages: Sequence[Message]) -> None:
        sub = self._subs.get(queue_id)
        if sub is not None and sub.auto_ack:
            # Already gone from the broker: republish (at the tail) rather than lose them.
            await self._publish(self._state(queue_id), list(messages), "release")
            return
        for m in messages:
            if m.attempt > 1:  # an attempt the wire may not carry (a nack kept by requeue)
                self._remember_attempt(m)
        live = [m for m in messages if self._live(sub, m)]
        if sub is None or not live:
            return
        await self._settle(sub, [m.receipt.delivery.delivery_tag for m in live], requeue=True)
        self._state(queue_id).delta += len(live)
        try:  # a round trip on that channel: returns once the broker processed the nacks
            await sub.raw.basic_qos(prefetch_count=sub.qos)
        except _LOST:
            pass

    # -- reading ------------------------------------------------------------------------
    def on_depth_drop(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever a refresh lowers a cached depth. The cache can
        over-report for up to one refresh (a confirm that arrives after the broker
        answered the passive declare); a ``drain()`` waiting on ``depth() == 0`` needs
        to hear when the figure catches up, since no consumer event follows."""
        self._depth_listeners.append(callback)

    def depth(self, queue_id: str) -> int:
        state = self._queues.get(queue_id)
        if state is None:
            return 0
        sub = self._subs.get(queue_id)
        local = len(sub.buffer) if sub is not None else 0
        return max(0, state.ready + state.delta) + local

    async def _passive(self, state: _QueueState) -> Any:
        if self._ctl_raw is None or self._ctl_raw.is_closed:
            await self._reopen_ctl()
        try:
            return await self._ctl_raw.queue_declare(state.name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            await self._reopen_ctl()
            await self._redeclare(state)
            return await self._ctl_raw.queue_declare(state.name, passive=True)

    async def _refresh_depths(self) -> None:
        while True:
            await asyncio.sleep(_DEPTH_REFRESH)
            if not self._connected.is_set():
                continue
            for state in list(self._queues.values()):
                try:
                    delta_before = state.delta
                    ok = await self._passive(state)
                except _LOST:
                    break
                except Exception as e:  # keep refreshing; say why this one failed
                    log.warning("%s: depth of %s: %s", self.id, state.spec.id, _reason(e, self.config.url))
                    continue
                before = self.depth(state.spec.id)
                state.ready = ok.message_count
                state.delta -= delta_before
                cap = state.spec.max_length
                if state.full and (cap is None or state.ready < cap):
                    state.full = False
                if self.depth(state.spec.id) < before:
                    for callback in self._depth_listeners:
                        callback()

    async def info(self, queue_id: str) -> dict[str, Any]:
        """``message_count``/``ready`` (the broker's ready count), ``consumers`` (the
        broker's), and ``in_flight``: deliveries to *this process* not settled yet,
        fetched or still in the driver's buffer (RabbitMQ's ``queue.declare`` does not
        report unacked messages, so other processes' are not in it)."""
        state = self._state(queue_id)
        await self._wait_connected(asyncio.get_running_loop().time() + self.config.publish_timeout,
                                   f"info of {queue_id}", DriverUnavailable)
        ok = await self._passive(state)
        state.ready, state.delta = ok.message_count, 0
        sub = self._subs.get(queue_id)
        held = (len(sub.unacked) if not sub.auto_ack else len(sub.buffer)) if sub else 0
        return {"message_count": ok.message_count, "ready": ok.message_count,
                "consumers": ok.consumer_count, "in_flight": held}

    async def settled(self, queue_id: str) -> bool:
        """For ``drain()``: the broker holds no ready message of ``queue_id``, nothing
        this process took from it is unsettled, and its outbox is empty. (Another
        process's unacked deliveries are invisible to ``queue.declare``.)"""
        self._state(queue_id)  # QueueNotFound
        sub = self._subs.get(queue_id)
        if self._outbox.pending(queue_id) or (sub is not None and (sub.unacked or sub.buffer)):
            return False
        info = await self.info(queue_id)
        return info["ready"] == 0 and not self._outbox.pending(queue_id) and not (
            sub is not None and (sub.unacked or sub.buffer))


def _reason(exc: BaseException | None, url: str) -> str:
    """An exception as one line, with the URL's password (if any) masked."""
    if exc is None:
        return "closed"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        from urllib.parse import urlsplit

        pw = urlsplit(url).password
    except ValueError:
        pw = None
    if pw:
        text = text.replace(pw, "***")
    return text.replace(url, safe_url(url))


DRIVER = AmqpDriver
