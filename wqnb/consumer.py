"""A consumer: a prefetch buffer filled from one queue, and a pool of workers emptying it.

::

    driver ──take──► buffer (≤ prefetch) ──► worker 0..concurrency-1 ──► handler
                                                     │
                                        ack / nack ◄─┘ (requeue · dead_letter)

* A *fetcher* task waits on the queue when it is empty and moves up to the buffer's free
  room into it (a batched fetch). When the queue has a backlog, a worker that frees a
  slot tops the buffer up itself (``take_nowait``): no task switch per message.
* Invariant, on every driver: ``buffered ≤ prefetch``, ``busy ≤ concurrency``, so
  ``unsettled ≤ prefetch + concurrency``.
* Settle is single-shot (:class:`~wqnb.message.Delivery`). Nack requeues at the tail with
  ``attempt + 1``, after ``requeue_delay`` if set, or moves the message to the queue's
  ``dead_letter`` queue once ``max_attempts`` deliveries have failed.
* Stop: no more intake; buffered messages go back to the head of the queue in order;
  running handlers get ``stop_timeout`` to finish, then are cancelled and their messages
  requeued at the head. Nothing is lost, and every step is recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .clock import VirtualTimeLoop, clock_fn
from .durations import format_duration
from .errors import VirtualTimeDeadlock
from .message import Delivery, Message
from .timeline import (
    EV_ACK,
    EV_DEAD_LETTER,
    EV_DELIVER,
    EV_NACK,
    EV_PUBLISH,
    EV_REQUEUE,
    EV_START,
    Recorder,
)

if TYPE_CHECKING:
    from .drivers.base import Driver
    from .handlers.base import Handler
    from .registry import ConsumerEntry
    from .runtime import Runtime

__all__ = ["Consumer"]

log = logging.getLogger("wqnb.consumer")

#: On virtual time, nacks of one message at one instant before the run is declared stuck.
SPIN_LIMIT = 1000


class _Route:
    """Where a queue lives: its driver and its index in the recorder's name table.

    ``len(route.ready)`` is the queue's depth (``driver.ready_view``: for the memory
    driver, its deque itself), read for every recorded event."""

    __slots__ = ("queue_id", "driver", "qi", "ready", "put", "wake", "wait_room", "take", "notify", "dead_letter",
                 "max_attempts", "publish_head")

    def __init__(self, queue_id: str, driver: Driver, qi: int) -> None:
        self.queue_id = queue_id
        self.driver = driver
        self.qi = qi
        self.ready = driver.ready_view(queue_id)
        self.put = driver.putter(queue_id)
        self.wake = driver.waker(queue_id)
        self.wait_room = driver.room_waiter(queue_id)
        self.take = driver.taker(queue_id)
        self.notify = driver.notifier(queue_id)
        self.dead_letter: _Route | None = None
        self.max_attempts: int | None = None
        self.publish_head = Recorder.head(EV_PUBLISH, qi, -1, -1)  # see Recorder.pack_fast

    def depth(self) -> int:
        return len(self.ready)


class Consumer:
    """Runs one ``queue.consumer`` entry. The runtime creates, starts and stops it."""

    def __init__(self, entry: ConsumerEntry, route: _Route, handler: Handler, runtime: Runtime) -> None:
        self.entry = entry
        self.id = entry.id
        self.route = route
        self.handler = handler
        self.runtime = runtime
        self.concurrency = entry.concurrency
        self.prefetch = entry.prefetch
        rec = runtime.recorder
        self._ci = rec.consumer_index(entry.id)
        self._rec = rec
        self._w = rec.buf.extend  # record an event: self._w(self._pack(t, event, ...))
        self._pack = rec.pack
        self._fast = rec.pack_fast
        self._deliver_head = rec.head(EV_DELIVER, route.qi, self._ci, -1)
        self.buffer: deque[Message] = deque()
        self.busy = 0
        self.unsettled = 0
        self.running = False
        self._closing = False
        self._idle: deque[asyncio.Future[None]] = deque()
        self._room_waiter: asyncio.Future[None] | None = None
        self._fetcher: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._delayed: dict[Message, asyncio.TimerHandle] = {}  # waiting out requeue_delay
        self._now: Callable[[], float] = time_unset
        self._push = True
        self._watching = False
        self._virtual: VirtualTimeLoop | None = None
        self._starts = 0
        self._interrupted: list[tuple[int, int, Message]] = []
        self._on_ready: Callable[[], None] | None = None  # the push callback (start makes it, stop withdraws it)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        if self.running:
            return
        loop = asyncio.get_running_loop()
        self._now = clock_fn(loop)
        self._virtual = loop if isinstance(loop, VirtualTimeLoop) else None
        self._closing = False
        self.running = True
        self._watching = False
        # Push mode (in-process drivers): the queue calls us when a message is ready.
        # Pull mode (brokers): a fetcher task awaits batched takes.
        self._push = self.route.notify is not None
        self._on_ready = self._push_callback() if self._push else None
        self._fill()
        if not self._push:
            self._fetcher = loop.create_task(self._fetch_loop(), name=f"{self.id}:fetch")
        self._workers = [
            loop.create_task(self._work(w), name=f"{self.id}:worker-{w}") for w in range(self.concurrency)
        ]
        log.info("consumer started", extra={"consumer": self.id, "queue": self.route.queue_id})

    async def stop(self, timeout: float | None = None) -> bool:
        """Stop as DESIGN §3 says. Returns False if handlers had to be interrupted."""
        if not self.running:
            return True
        timeout = self.entry.lifecycle.stop_timeout if timeout is None else timeout
        self._closing = True
        # 1. no more intake
        if self._watching:
            self.route.driver.cancel_notify(self.route.queue_id, self._on_ready)
            self._watching = False
        if self._fetcher is not None:
            self._fetcher.cancel()
            await asyncio.gather(self._fetcher, return_exceptions=True)
            self._fetcher = None
        # 2. buffered messages that no worker started: back to the head, in order
        self._return_buffered()
        # 3. idle workers leave; delayed requeues land now
        while self._idle:
            w = self._idle.popleft()
            if not w.done():
                w.set_result(None)
        self._flush_delayed()
        # 4. running handlers may finish within the stop timeout
        clean = True
        pending = [w for w in self._workers if not w.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                clean = False
                for task in still:
                    task.cancel()
                await asyncio.gather(*still, return_exceptions=True)
                # ahead of the buffered ones (handed back above): they were delivered first
                interrupted, self._interrupted = sorted(self._interrupted), []
                self._requeue_interrupted([(w, msg) for _, w, msg in interrupted])
        self._flush_delayed()
        self._workers = []
        self.running = False
        self.runtime._notify_settled()
        log.info("consumer stopped", extra={"consumer": self.id, "clean": clean})
        return clean

    # -- intake ---------------------------------------------------------------------------
    def _fill(self) -> None:
        """Top the buffer up from the queue without waiting; if the queue runs dry,
        ask to hear when it is not (push) or wake the fetcher (pull).

        Workers call it only when no push callback is registered (``_watching`` is False)."""
        if self._closing:
            return
        room = self.prefetch - len(self.buffer)
        if room <= 0:
            return
        route = self.route
        if route.ready:  # (a local count: skip the take when the queue is empty)
            got = route.take(room)
            if got:
                self._deliver(got)
                if len(got) == room:
                    if route.ready:
                        route.wake()  # messages left: another waiting consumer may take them
                    return
        if self._push:
            self._watching = True
            route.notify(self._on_ready)  # type: ignore[misc]
        else:
            waiter = self._room_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _push_callback(self) -> Callable[[], None]:
        """The callback the queue calls, once, when messages are ready (push mode).

        It is ``_fill`` for a queue known not to be empty, with the delivery of the
        commonest case (one message) written out, as a closure over what it reads: in a
        busy pipeline it runs for every message, and local names cost less than ``self.``
        lookups. ``start`` makes it; workers call it too when they see a backlog."""
        buffer, route, prefetch, idle = self.buffer, self.route, self.prefetch, self._idle
        w, fast, now, head, ready, take, notify, wake = (self._w, self._fast, self._now, self._deliver_head,
                                                         route.ready, route.take, route.notify, route.wake)

        def on_push() -> None:
            self._watching = False
            if self._closing:
                return
            room = prefetch - len(buffer)
            if room <= 0:
                return
            got = take(room)
            if len(got) == 1:
                m = got[0]
                buffer.append(m)
                self.unsettled += 1
                w(fast(now(), head, m.seq, m.attempt, 0, len(ready), len(buffer), self.busy, self.unsettled))
                while idle:
                    f = idle.popleft()
                    if not f.done():
                        f.set_result(None)
                        break
            elif got:
                self._deliver(got)
            if len(got) < room:
                self._watching = True
                notify(on_push)  # type: ignore[misc]
            elif ready:
                wake()  # messages left: another waiting consumer may take them
        return on_push

    async def _fetch_loop(self) -> None:
        """Pull mode: wait for messages, take a batch of up to the buffer's free room."""
        loop = asyncio.get_running_loop()
        route = self.route
        take = route.driver.take
        buffer = self.buffer
        while not self._closing:
            room = self.prefetch - len(buffer)
            if room <= 0:
                fut = self._room_waiter = loop.create_future()
                try:
                    await fut
                finally:
                    self._room_waiter = None
                continue
            messages = await take(route.queue_id, room)
            self._deliver(messages)
            if route.ready:
                route.wake()  # messages left: another waiting consumer may take them

    def _deliver(self, messages: list[Message]) -> None:
        """Messages taken from the queue enter the buffer: one ``deliver`` row each. (The
        caller then wakes another consumer if the queue still has messages: after these rows.)"""
        buffer = self.buffer
        w, fast, head = self._w, self._fast, self._deliver_head
        now = self._now()
        depth = len(self.route.ready) + len(messages)
        for m in messages:
            buffer.append(m)
            self.unsettled += 1
            depth -= 1
            w(fast(now, head, m.seq, m.attempt, 0, depth, len(buffer), self.busy, self.unsettled))
        idle = self._idle
        for _ in messages:
            if not idle:
                break
            f = idle.popleft()
            if not f.done():
                f.set_result(None)

    # -- work -------------------------------------------------------------------------------
    async def _work(self, w: int) -> None:
        loop = asyncio.get_running_loop()
        buffer = self.buffer
        route = self.route
        qi, ci = route.qi, self._ci
        ready = route.ready
        record, fast, now = self._w, self._fast, self._now
        start_head = self._rec.head(EV_START, qi, ci, w)
        ack_head = self._rec.head(EV_ACK, qi, ci, w)
        handler = self.handler
        # A handler that never needs the Delivery (a Python ``fn(body)``, a Lua handler
        # without the queue module) is called with the body alone: no Delivery object, no
        # wrapper coroutine. It returns an awaitable, or None when it is already done.
        direct: Callable[[Any], Any] | None = getattr(handler, "body_fn", None)
        # A handler that usually ends without waiting (Lua) runs up to its first wait in a
        # plain call: begin(d) returns None when it is done, or an awaitable to finish.
        begin: Callable[[Delivery], Any] | None = getattr(handler, "begin", None)
        timeout = self.entry.timeout
        queue_id, consumer_id = route.queue_id, self.id
        ack_inline = route.driver.ack_is_noop
        runtime = self.runtime
        idle = self._idle
        push, notify, on_ready = self._push, route.notify, self._on_ready
        me = asyncio.current_task()
        assert me is not None
        while True:
            if not buffer:
                if self._closing:
                    return
                fut = loop.create_future()
                idle.append(fut)
                await fut
                continue
            if self._closing:
                return
            msg = buffer.popleft()
            self.busy += 1
            self._starts += 1
            started = self._starts
            record(fast(now(), start_head, msg.seq, msg.attempt, 0, len(ready), len(buffer), self.busy, self.unsettled))
            if not self._watching:  # top the buffer up, or ask to hear when the queue has more
                if not push:
                    self._fill()
                elif ready:
                    on_ready()  # what the queue would call: take what fits, then watch
                else:
                    self._watching = True
                    notify(on_ready)
            d = None if direct is not None else Delivery(msg, queue_id, consumer_id, w, self)
            try:
                if timeout is not None:
                    await self._timed(direct(msg.body) if d is None else handler(d), timeout, d)  # type: ignore[misc]
                elif d is None:
                    pending = direct(msg.body)  # type: ignore[misc]
                    if pending is not None:
                        await pending
                elif begin is not None:
                    pending = begin(d)
                    if pending is not None:
                        await pending
                else:
                    await handler(d)
            except asyncio.CancelledError as exc:
                if not me.cancelling():  # the handler raised it itself: a failure like any other
                    await self._failed(msg, d, w, exc)
                    continue
                # stop() cancelled this worker: the handler was interrupted. stop() requeues
                # the interrupted messages at the head together, in the order they started.
                self.busy -= 1
                if d is not None:
                    d.released = True
                    if d.settled is not None:
                        raise
                    d.settled = "interrupted"
                self.unsettled -= 1
                msg.attempt += 1
                self._interrupted.append((started, w, msg))
                raise
            except Exception as exc:  # noqa: BLE001 - any handler failure is a nack
                await self._failed(msg, d, w, exc)
            else:
                self.busy -= 1
                settled = None
                if d is not None:
                    d.released = True
                    settled = d.settled
                    if settled is None:
                        d.settled = "ack"
                if settled is None:
                    if ack_inline:  # the common case, without a coroutine call
                        self.unsettled -= 1
                        record(fast(now(), ack_head, msg.seq, msg.attempt, 0, len(ready), len(buffer),
                                    self.busy, self.unsettled))
                        if not self.unsettled and runtime._drain_waiters:
                            runtime._notify_settled()
                    else:
                        await self._ack_msg(msg, w)
            if not started & 63:
                # Let others run now and then, even if no handler ever suspends: a worker
                # must not starve the notebook, other consumers or the publisher. (Here, with
                # no message in hand, a cancellation loses nothing.)
                await asyncio.sleep(0)

    async def _failed(self, msg: Message, d: Delivery | None, worker: int, exc: BaseException) -> None:
        """The handler raised: nack, unless it settled the delivery itself first."""
        self.busy -= 1
        if d is not None:
            d.released = True
        if d is None or d.settled is None:
            if d is not None:
                d.settled = "nack"
            await self._nack_msg(msg, worker, _error_text(exc))

    @staticmethod
    async def _timed(coro: Any, timeout: float, d: Delivery | None) -> None:
        if coro is None:  # a body_fn that finished in its call
            return
        try:
            async with asyncio.timeout(timeout):
                await coro
        except TimeoutError as e:
            if d is None or d.settled is None:
                raise TimeoutError(f"handler timed out after {format_duration(timeout)}") from e
            raise

    # -- settling (Delivery calls _ack / _nack) --------------------------------------------------
    async def _ack(self, d: Delivery) -> None:
        await self._ack_msg(d.message, d.worker)

    async def _nack(self, d: Delivery, error: str) -> None:
        await self._nack_msg(d.message, d.worker, error)

    async def _ack_msg(self, msg: Message, worker: int) -> None:
        route = self.route
        self.unsettled -= 1
        if not route.driver.ack_is_noop:
            await route.driver.ack(route.queue_id, [msg])
        self._w(self._pack(
            self._now(), EV_ACK, route.qi, self._ci, worker, msg.seq, msg.attempt, 0,
             route.depth(), len(self.buffer), self.busy, self.unsettled)
        )
        if self.unsettled == 0:
            self.runtime._notify_settled()

    async def _nack_msg(self, msg: Message, worker: int, error: str) -> None:
        route = self.route
        self.unsettled -= 1
        rec = self._rec
        now = self._now()
        self._w(self._pack(
            now, EV_NACK, route.qi, self._ci, worker, msg.seq, msg.attempt, rec.error_index(error),
             route.depth(), len(self.buffer), self.busy, self.unsettled)
        )
        if getattr(msg, "nacked_at", None) == now:
            msg.spins += 1
            if msg.spins >= SPIN_LIMIT and self._virtual:
                self._virtual.fail(VirtualTimeDeadlock(
                    f"virtual time is stuck at t={now - (self._rec.t0 or 0):g}: message {msg.id} on "
                    f"{route.queue_id} was nacked {SPIN_LIMIT} times without time passing (last "
                    f"error: {error}). Give the consumer a requeue_delay or the queue a dead_letter."
                ))
        else:
            msg.nacked_at = now
            msg.spins = 0
        dl = route.dead_letter
        if dl is not None and route.max_attempts is not None and msg.attempt >= route.max_attempts:
            self._dead_letter(msg, error, worker)
        elif self.entry.requeue_delay > 0 and not self._closing:
            msg.attempt += 1
            self._delayed[msg] = asyncio.get_running_loop().call_later(self.entry.requeue_delay, self._land_delayed, msg)
        else:
            msg.attempt += 1
            self._requeue([msg], front=False, worker=worker)
        if self.unsettled == 0:
            self.runtime._notify_settled()

    def _dead_letter(self, msg: Message, error: str, worker: int) -> None:
        route = self.route
        dl = route.dead_letter
        assert dl is not None
        msg.headers = {
            **msg.headers,
            "attempts": msg.attempt,
            "x_original_queue": route.queue_id,
            "x_dead_letter_reason": error,
            "x_dead_letter_time": self.runtime.unix_time(),
        }
        msg.attempt = 1
        self._w(self._pack(
            self._now(), EV_DEAD_LETTER, dl.qi, self._ci, worker, msg.seq, 1, 0,
             dl.depth() + 1, len(self.buffer), self.busy, self.unsettled)
        )
        dl.driver.requeue(dl.queue_id, [msg], front=False)

    def _requeue(self, messages: list[Message], *, front: bool, worker: int = -1,
                 workers: list[int] | None = None) -> None:
        """Record, then hand back (a requeue may wake a consumer that delivers at once)."""
        route = self.route
        w, pack = self._w, self._pack
        now = self._now()
        depth = route.depth()
        for i, m in enumerate(messages):
            depth += 1
            w(pack(now, EV_REQUEUE, route.qi, self._ci, workers[i] if workers else worker, m.seq,
                   m.attempt, 0, depth, len(self.buffer), self.busy, self.unsettled))
        route.driver.requeue(route.queue_id, messages, front=front)

    def _requeue_interrupted(self, items: list[tuple[int, Message]]) -> None:
        """Handlers cut off by the stop timeout: their messages go to the head, in the
        order they started (ahead of the buffered ones, which were delivered later)."""
        self._requeue([m for _, m in items], front=True, workers=[w for w, _ in items])

    def _land_delayed(self, msg: Message) -> None:
        del self._delayed[msg]
        self._requeue([msg], front=False)
        self.runtime._notify_settled()

    def _flush_delayed(self) -> None:
        """Stop: messages waiting out their ``requeue_delay`` are requeued right away."""
        delayed, self._delayed = self._delayed, {}
        for msg, handle in delayed.items():
            handle.cancel()
            self._requeue([msg], front=False)

    def _return_buffered(self) -> None:
        """Stop: messages no worker started go back to the head, in order, same attempt."""
        if not self.buffer:
            return
        messages = list(self.buffer)
        self.buffer.clear()
        self.unsettled -= len(messages)
        self._requeue(messages, front=True)

    # -- gauges ---------------------------------------------------------------------------------
    @property
    def delayed(self) -> int:
        return len(self._delayed)

    def idle(self) -> bool:
        """Nothing in hand: no unsettled delivery and no delayed requeue pending."""
        return self.unsettled == 0 and not self._delayed

    def __repr__(self) -> str:
        return (
            f"<Consumer {self.id} concurrency={self.concurrency} prefetch={self.prefetch} "
            f"buffered={len(self.buffer)} busy={self.busy} unsettled={self.unsettled}>"
        )


def time_unset() -> float:
    raise RuntimeError("consumer not started")


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__
