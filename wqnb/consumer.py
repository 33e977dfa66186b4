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

from .clock import VirtualTimeLoop
from .durations import format_duration
from .errors import VirtualTimeDeadlock
from .message import Delivery, Message
from .timeline import EV_ACK, EV_DELIVER, EV_START

if TYPE_CHECKING:
    from .drivers.base import LocalQueue
    from .handlers.base import Handler
    from .registry import ConsumerEntry
    from .routes import ConsumerHost, Route

__all__ = ["Consumer"]

log = logging.getLogger("wqnb.consumer")

#: On virtual time, nacks of one message at one instant before the run is declared stuck.
SPIN_LIMIT = 1000

#: On real time, the longest a worker runs handlers back to back before it lets the loop
#: run (besides every 64 deliveries): handlers that never suspend (Lua, ``offload=False``)
#: would otherwise hold the notebook, a ticker or the other consumers for whole batches.
YIELD_AFTER = 0.005

#: After stop cancels the handlers still running, how long it waits for them to unwind
#: (an ``await`` in a ``finally``) before it requeues their messages anyway.
UNWIND_TIMEOUT = 1.0

#: A message nacked this many times gets a warning (logger ``wqnb.consumer``), and so on.
POISON_MARKS = frozenset({10, 100, 1000, 10_000, 100_000, 1_000_000})


class Consumer:
    """Runs one ``queue.consumer`` entry. The runtime creates, starts and stops it."""

    def __init__(self, entry: ConsumerEntry, route: Route, handler: Handler, host: ConsumerHost) -> None:
        self.entry = entry
        self.id = entry.id
        self.route = route
        self.handler = handler
        self.host = host
        self.concurrency = entry.concurrency
        self.prefetch = entry.prefetch
        rec = self._rec = host.recorder
        self._ci = rec.consumer_index(entry.id)
        self._write = rec.write
        self.buffer: deque[Message] = deque()
        self.busy = 0
        self.unsettled = 0
        self.running = False
        self._closing = False
        self._local: LocalQueue | None = None
        self._idle: deque[asyncio.Future[None]] = deque()
        self._room_waiter: asyncio.Future[None] | None = None
        self._fetcher: asyncio.Task[None] | None = None
        self._workers: dict[int, asyncio.Task[None]] = {}  # by worker number
        self._limit = [entry.prefetch]  # the buffer bound, in a cell the intake closures read
        self._retire = [0]  # workers still to retire after an update lowered concurrency
        self._delayed: dict[Message, asyncio.TimerHandle] = {}  # waiting out requeue_delay
        self._landing: set[asyncio.Task[None]] = set()  # delayed nacks on their way to a broker
        self._now: Callable[[], float] = time_unset
        self._watching = False
        self._virtual: VirtualTimeLoop | None = None
        self._starts = 0
        self._interrupted: list[tuple[int, int, Message]] = []
        self._current: list[Message | None] = []  # the message each worker holds (stop's backstop)
        self._abandoned: set[int] = set()  # workers whose message stop requeued without them
        self.unwound: list[int] = []  # workers whose handler did not unwind at the last stop
        #: messages nacked and not yet acked or dead-lettered: id -> (attempt, last error)
        self.cycling: dict[str, tuple[int, str]] = {}
        self._admit: Callable[..., None] = _not_started  # the intake closure (start makes it)
        self._on_ready: Callable[[], None] = _nothing  # the push callback (in-process queues)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        if self.running:
            return
        loop = asyncio.get_running_loop()
        self._now = self.host.clock()
        self._virtual = loop if isinstance(loop, VirtualTimeLoop) else None
        self._closing = False
        self._watching = False
        route = self.route
        self._local = route.local
        self._admit = self._make_intake()
        if self._local is not None:
            self._on_ready = self._admit
        else:
            named = {"consumer": self.id} if getattr(route.driver, "names_consumers", False) else {}
            await route.driver.subscribe(
                route.queue_id, prefetch=self.prefetch, concurrency=self.concurrency,
                auto_ack=getattr(self.entry, "auto_ack", False),
                options=getattr(self.entry, "driver_options", {}).get(_driver_key(route.driver.kind)) or {},
                **named,
            )
        self.running = True
        self._top_up()
        if self._local is None:
            self._fetcher = loop.create_task(self._fetch_loop(), name=f"{self.id}:fetch")
        self._current = [None] * self.concurrency
        self._abandoned = set()
        self._retire[0] = 0
        self._limit[0] = self.prefetch
        self._workers = {w: self._spawn(loop, w) for w in range(self.concurrency)}
        log.info("consumer started", extra={"consumer": self.id, "queue": route.queue_id})

    async def stop(self, timeout: float | None = None) -> bool:
        """Stop as DESIGN §3 says. Returns False if handlers had to be interrupted."""
        if not self.running:
            return True
        timeout = self.entry.lifecycle.stop_timeout if timeout is None else timeout
        self._closing = True
        route = self.route
        # 1. no more intake
        if self._watching and self._local is not None:
            self._local.cancel_notify(self._on_ready)
            self._watching = False
        if self._fetcher is not None:
            self._fetcher.cancel()
            await asyncio.gather(self._fetcher, return_exceptions=True)
            self._fetcher = None
        if self._local is None:
            await route.driver.unsubscribe(route.queue_id)
        # 2. buffered messages that no worker started: back to the head, in order
        await self._return_buffered()
        # 3. idle workers leave; delayed requeues land now
        while self._idle:
            w = self._idle.popleft()
            if not w.done():
                w.set_result(None)
        await self._flush_delayed()
        # 4. running handlers may finish within the stop timeout
        clean = True
        self.unwound = []
        pending = [w for w in self._workers.values() if not w.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                clean = False
                for task in still:
                    task.cancel()
                _, stuck = await asyncio.wait(still, timeout=UNWIND_TIMEOUT)
                self._abandon(stuck)
                # ahead of the buffered ones (handed back above): they were delivered first
                interrupted, self._interrupted = sorted(self._interrupted), []
                await self._requeue_head([m for _, _, m in interrupted], [w for _, w, _ in interrupted])
        await self._flush_delayed()
        self._workers = {}
        self.running = False
        close = getattr(self.handler, "close", None)
        if close is not None:
            close()
        self.host.settled()
        log.info("consumer stopped", extra={"consumer": self.id, "clean": clean})
        return clean

    def _spawn(self, loop: asyncio.AbstractEventLoop, w: int) -> asyncio.Task[None]:
        task = loop.create_task(self._work(w), name=f"{self.id}:worker-{w}")
        task.add_done_callback(lambda t, w=w: self._workers.pop(w, None) if self._workers.get(w) is t
                               and not self._closing else None)
        return task

    async def update(self, *, concurrency: int | None = None, prefetch: int | None = None) -> None:
        """Change a running consumer (Wippy's consumer manager applies an update).

        More workers start at once; fewer: idle workers leave now and busy ones after the
        message they hold (so ``busy`` may exceed the new concurrency only until those
        handlers finish). A lower prefetch hands the excess of the buffer back to the
        head of the queue at once, in order, so ``buffered ≤ prefetch`` when this returns.
        """
        loop = asyncio.get_running_loop()
        if prefetch is not None and prefetch != self.prefetch:
            self.prefetch = self._limit[0] = prefetch
            excess = len(self.buffer) - prefetch
            if excess > 0 and self.running:
                back = [self.buffer.pop() for _ in range(excess)][::-1]  # the newest, in order
                self.unsettled -= len(back)
                await self._requeue_head(back, [-1] * len(back))
            if self.running:
                self._top_up()
        if concurrency is not None and concurrency != self.concurrency:
            change = concurrency - self.concurrency
            self.concurrency = concurrency
            if self.running:
                if change > 0:
                    cancel = min(change, self._retire[0])  # undo retirements not yet done
                    self._retire[0] -= cancel
                    for _ in range(change - cancel):
                        w = len(self._current)
                        self._current.append(None)
                        self._workers[w] = self._spawn(loop, w)
                else:
                    self._retire[0] += -change
                    idle = self._idle
                    while idle and self._retire[0]:  # idle workers leave now
                        f = idle.popleft()
                        if not f.done():
                            f.set_result(None)
        info = self._rec.consumers.get(self.id)
        if info is not None:
            t = self._now() - (self._rec.t0 or 0.0) if self.running else float("nan")
            info.changes.append((t, self.concurrency, self.prefetch))
            info.concurrency, info.prefetch = max(info.concurrency, self.concurrency), max(info.prefetch, self.prefetch)
        self.host.settled()

    def _abandon(self, stuck: set[asyncio.Task[None]]) -> None:
        """Handlers that did not unwind within ``UNWIND_TIMEOUT`` of their cancel: their
        messages are requeued now (nothing lost, the stop ends), and the workers, when they
        do unwind, leave them alone. ``self.unwound`` names them for the stop's error."""
        numbers = {task: w for w, task in self._workers.items()}
        for task in stuck:
            w = numbers[task]
            msg = self._current[w]
            self._abandoned.add(w)
            self.unwound.append(w)
            log.warning("handler did not unwind after its cancel", extra={"consumer": self.id, "worker": w})
            if msg is None:
                continue
            self._current[w] = None
            self.busy -= 1
            self.unsettled -= 1
            self._interrupted.append((self._starts + 1 + w, w, msg.next_attempt() if self._local else msg))

    # -- intake ---------------------------------------------------------------------------
    def _make_intake(self) -> Callable[..., None]:
        """The one intake routine: free room → take → deliver → wake.

        ``intake()`` (an in-process queue's push callback, and what a worker calls when it
        frees a slot and sees a backlog) takes what fits from the local queue itself;
        ``intake(got)`` (the fetcher task, brokers) admits what a fetch returned. Either
        way each message enters the buffer with one ``deliver`` row (the gauges after
        it), idle workers are woken, and an in-process queue is watched again or its
        signal passed on.

        A closure over what it reads: in a busy pipeline it runs for every message, and
        local names cost less than ``self.`` lookups (the buffer bound is a one-cell list,
        so that ``update(prefetch=)`` reaches it)."""
        buffer, idle, ready, write, now = self.buffer, self._idle, self.route.ready, self._write, self._now
        limit = self._limit
        pk = self._rec.packer(EV_DELIVER, self.route.qi, self._ci)
        pk_again = self._rec.packer(EV_DELIVER, self.route.qi, self._ci, redelivered=True)
        local = self._local
        broker = local is None  # only broker messages carry ``redelivered``
        take, notify, wake = (local.take_nowait, local.notify, local.wake) if local is not None else (None, None, None)

        def intake(got: list[Message] | None = None) -> None:
            room = 0
            if got is None:  # an in-process queue: take what fits now
                self._watching = False
                if self._closing:
                    return
                room = limit[0] - len(buffer)
                if room <= 0:
                    return
                got = take(room)  # type: ignore[misc]
            if got:
                t = now()
                if len(got) == 1 and not broker:  # the commonest case in a busy pipeline, written out
                    m = got[0]
                    buffer.append(m)
                    self.unsettled += 1
                    write(pk(t, m.seq, m.attempt, len(ready), len(buffer), self.busy, self.unsettled))
                    while idle:
                        f = idle.popleft()
                        if not f.done():
                            f.set_result(None)
                            break
                else:
                    depth = len(ready) + len(got)
                    for m in got:
                        buffer.append(m)
                        self.unsettled += 1
                        depth -= 1
                        write((pk_again if broker and m.redelivered else pk)(
                            t, m.seq, m.attempt, depth, len(buffer), self.busy, self.unsettled))
                    n = len(got)
                    while idle and n:
                        f = idle.popleft()
                        if not f.done():
                            f.set_result(None)
                            n -= 1
            if room:  # after our rows, so that rows and depths stay in order
                if len(got) < room:
                    self._watching = True
                    notify(intake)  # type: ignore[misc]
                elif ready:
                    wake()  # type: ignore[misc]  # messages left: another waiting consumer may take them
        return intake

    def _top_up(self) -> None:
        """A slot is free: take from an in-process queue now (or watch it), or tell the fetcher."""
        if self._closing:
            return
        if self._local is not None:
            if self._watching:
                return
            if self.route.ready:
                self._on_ready()
            else:
                self._watching = True
                self._local.notify(self._on_ready)
        else:
            waiter = self._room_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _fetch_loop(self) -> None:
        """Brokers: wait for messages, fetch a batch of up to the buffer's free room."""
        loop = asyncio.get_running_loop()
        route = self.route
        fetch, intern, admit = route.driver.fetch, self.host.intern, self._admit
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
            got = await fetch(route.queue_id, room)
            for m in got:
                intern(m)
            admit(got)

    # -- work -------------------------------------------------------------------------------
    async def _work(self, w: int) -> None:
        loop = asyncio.get_running_loop()
        buffer = self.buffer
        route = self.route
        qi, ci = route.qi, self._ci
        ready = route.ready
        write, now = self._write, self._now
        start_pk = self._rec.packer(EV_START, qi, ci, w)
        ack_pk = self._rec.packer(EV_ACK, qi, ci, w)
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
        local = self._local is not None  # in-process: an ack is nothing to send
        draining, settled = self.host.drain_waiters, self.host.settled
        idle = self._idle
        top_up, on_ready = self._top_up, self._on_ready
        notify = self._local.notify if self._local is not None else None
        current, abandoned, retire, cycling = self._current, self._abandoned, self._retire, self.cycling
        yield_after = float("inf") if self._virtual else YIELD_AFTER
        last_yield = now()
        me = asyncio.current_task()
        assert me is not None
        while True:
            if retire[0]:  # an update lowered concurrency: this worker leaves
                retire[0] -= 1
                current[w] = None
                return
            if not buffer:
                if self._closing:
                    return
                current[w] = None
                fut = loop.create_future()
                idle.append(fut)
                await fut
                continue
            if self._closing:
                return
            msg = buffer.popleft()
            current[w] = msg
            self.busy += 1
            self._starts += 1
            started = self._starts
            t = now()
            write(start_pk(t, msg.seq, msg.attempt, len(ready), len(buffer), self.busy, self.unsettled))
            if not self._watching:  # take what fits, or ask to hear when the queue has more
                if not local:
                    top_up()
                elif ready:
                    on_ready()  # what the queue would call (written out: once per message)
                else:
                    self._watching = True
                    notify(on_ready)  # type: ignore[misc]
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
                if w in abandoned:  # stop gave up waiting and requeued the message itself
                    if d is not None:
                        d.released = True
                    raise
                # stop() cancelled this worker: the handler was interrupted. stop() requeues
                # the interrupted messages at the head together, in the order they started.
                self.busy -= 1
                if d is not None:
                    d.released = True
                    if d.settled is not None:
                        raise
                    d.settled = "interrupted"
                self.unsettled -= 1
                # the next delivery; a broker counts only nacks (it marks the release redelivered)
                self._interrupted.append((started, w, msg.next_attempt() if local else msg))
                raise
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - any handler failure is a nack
                if abandoned and w in abandoned:
                    return
                await self._failed(msg, d, w, exc)
            else:
                if abandoned and w in abandoned:  # it swallowed its cancel: stop requeued the message
                    return
                self.busy -= 1
                done = None
                if d is not None:
                    d.released = True
                    done = d.settled
                    if done is None:
                        d.settled = "ack"
                if done is None:
                    if local:  # the common case, without a coroutine call
                        self.unsettled -= 1
                        write(ack_pk(now(), msg.seq, msg.attempt, len(ready), len(buffer), self.busy,
                                     self.unsettled))
                        if not self.unsettled and draining:
                            settled()
                        if cycling:
                            cycling.pop(msg.id, None)
                    else:
                        await self._ack_msg(msg, w)
            if not started & 63 or t - last_yield > yield_after:
                # Let others run now and then, even if no handler ever suspends: a worker
                # must not starve the notebook, other consumers or the publisher: every 64
                # deliveries, and on real time once YIELD_AFTER has passed. (Here, with no
                # message in hand, a cancellation loses nothing.)
                current[w] = None
                await asyncio.sleep(0)
                last_yield = now()

    async def _failed(self, msg: Message, d: Delivery | None, worker: int, exc: BaseException) -> None:
        """The handler raised: nack, unless it settled the delivery itself first."""
        self.busy -= 1
        if d is not None:
            d.released = True
        if d is None or d.settled is None:
            if d is not None:
                d.settled = "nack"
            await self._nack_msg(msg, worker, _error_text(exc))
        # A failing handler must not hold the loop: one that fails at once, again and
        # again, would otherwise cycle through nacks without ever letting others run.
        await asyncio.sleep(0)

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
        if self._local is None:
            await route.driver.ack(route.queue_id, [msg])
        self._rec.event(EV_ACK, self._now(), route.qi, self._ci, worker, msg.seq, msg.attempt,
                        route.depth(), len(self.buffer), self.busy, self.unsettled)
        if self.cycling:
            self.cycling.pop(msg.id, None)
        if self.unsettled == 0:
            self.host.settled()

    async def _nack_msg(self, msg: Message, worker: int, error: str) -> None:
        route = self.route
        self.unsettled -= 1
        now = self._now()
        self._rec.nack(now, route.qi, self._ci, worker, msg.seq, msg.attempt, error,
                       route.depth(), len(self.buffer), self.busy, self.unsettled)
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
            self.cycling.pop(msg.id, None)
            await self._dead_letter(msg, error, worker)
        else:
            self._note_cycling(msg, error)
            again = msg.next_attempt()  # a copy: the handler keeps the view of its own delivery
            if self.entry.requeue_delay > 0 and not self._closing:
                self._delayed[again] = asyncio.get_running_loop().call_later(
                    self.entry.requeue_delay, self._land_delayed, again)
            else:
                await self._requeue_tail([again], worker)
        if self.unsettled == 0:
            self.host.settled()

    def _note_cycling(self, msg: Message, error: str) -> None:
        """A message goes round again: remember it (``drain`` names those still cycling)
        and warn once its deliveries reach 10, 100, 1000… (Wippy sets no limit, and a
        poison message would otherwise loop forever unseen)."""
        self.cycling[msg.id] = (msg.attempt, error)
        if msg.attempt in POISON_MARKS:
            log.warning(
                "message %s on %s has failed %d times (last error: %s); it goes round until it is "
                "acked: give the queue a dead_letter {queue, max_attempts} to set it aside",
                msg.id, self.route.queue_id, msg.attempt, error,
                extra={"consumer": self.id, "queue": self.route.queue_id, "msg_id": msg.id,
                       "attempts": msg.attempt, "error": error},
            )

    async def _dead_letter(self, msg: Message, error: str, worker: int) -> None:
        """Store a copy in the dead-letter queue (attempt 1, with the four ``x_*`` headers
        and ``attempts``), then ack the original: a crash in between is a duplicate."""
        route = self.route
        dl = route.dead_letter
        assert dl is not None
        copy = Message(msg.id, msg.seq, msg.body, {
            **msg.headers,
            "attempts": msg.attempt,
            "x_original_queue": route.queue_id,
            "x_dead_letter_reason": error,
            "x_dead_letter_time": self.host.unix_time(),
        })
        self._rec.dead_letter(self._now(), dl.qi, self._ci, worker, msg.seq, dl.depth() + 1,
                              len(self.buffer), self.busy, self.unsettled)
        if dl.local is not None:
            dl.local.requeue([copy], front=False)
        else:
            await dl.driver.store(dl.queue_id, [copy])
        if self._local is None:
            await route.driver.ack(route.queue_id, [msg])

    def _record_requeues(self, messages: list[Message], workers: list[int], *, from_buffer: bool = False) -> None:
        """One ``requeue`` row each, with the gauges after its own event: the depth grows
        by one a row, and messages handed back from the buffer leave it one by one."""
        route, rec = self.route, self._rec
        now = self._now()
        depth = route.depth()
        n = len(messages)
        for i, (m, w) in enumerate(zip(messages, workers, strict=True)):
            depth += 1
            left = n - i - 1 if from_buffer else 0  # still to hand back after this one
            rec.requeue(now, route.qi, self._ci, w, m.seq, m.attempt, depth, len(self.buffer) + left, self.busy,
                        self.unsettled + left)

    async def _requeue_tail(self, messages: list[Message], worker: int = -1) -> None:
        """A nack: recorded, then back at the tail (a requeue may wake a consumer that
        delivers at once, so the row comes first). ``attempt`` is already the next one."""
        self._record_requeues(messages, [worker] * len(messages))
        route = self.route
        if self._local is not None:
            self._local.requeue(messages, front=False)
        else:
            await route.driver.nack(route.queue_id, messages)

    async def _requeue_head(self, messages: list[Message], workers: list[int], *, from_buffer: bool = False) -> None:
        """A stop: recorded, then back at the head in order (a broker's ``release``)."""
        if not messages:
            return
        self._record_requeues(messages, workers, from_buffer=from_buffer)
        route = self.route
        if self._local is not None:
            self._local.requeue(messages, front=True)
        else:
            await route.driver.release(route.queue_id, messages)

    def _land_delayed(self, msg: Message) -> None:
        """``requeue_delay`` is over: the message goes back (a timer callback)."""
        del self._delayed[msg]
        if self._local is not None:
            self._record_requeues([msg], [-1])
            self._local.requeue([msg], front=False)
            self.host.settled()
            return
        task = asyncio.get_running_loop().create_task(self._requeue_tail([msg]))
        self._landing.add(task)
        task.add_done_callback(self._landed)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._landing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delayed requeue failed", exc_info=task.exception(), extra={"consumer": self.id})
        self.host.settled()

    async def _flush_delayed(self) -> None:
        """Stop: messages waiting out their ``requeue_delay`` are requeued right away."""
        delayed, self._delayed = self._delayed, {}
        for handle in delayed.values():
            handle.cancel()
        if delayed:
            await self._requeue_tail(list(delayed))
        if self._landing:
            await asyncio.gather(*self._landing, return_exceptions=True)

    async def _return_buffered(self) -> None:
        """Stop: messages no worker started go back to the head, in order, same attempt."""
        if not self.buffer:
            return
        messages = list(self.buffer)
        self.buffer.clear()
        self.unsettled -= len(messages)
        await self._requeue_head(messages, [-1] * len(messages), from_buffer=True)

    # -- gauges ---------------------------------------------------------------------------------
    @property
    def delayed(self) -> int:
        return len(self._delayed) + len(self._landing)

    def idle(self) -> bool:
        """Nothing in hand: no unsettled delivery and no delayed requeue pending."""
        return self.unsettled == 0 and not self._delayed and not self._landing

    def __repr__(self) -> str:
        return (
            f"<Consumer {self.id} concurrency={self.concurrency} prefetch={self.prefetch} "
            f"buffered={len(self.buffer)} busy={self.busy} unsettled={self.unsettled}>"
        )


def time_unset() -> float:
    raise RuntimeError("consumer not started")


def _not_started(messages: list[Message] | None = None) -> None:
    raise RuntimeError("consumer not started")


def _nothing() -> None:
    return None


def _driver_key(kind: str) -> str:
    """``queue.driver.amqp`` → ``amqp``: the key of a consumer's ``driver_options``."""
    return kind.rpartition(".")[2]


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        code = "" if exc.code is None else repr(exc.code)
        return f"handler called sys.exit({code}): a handler cannot stop the process"
    text = str(exc)
    return text if text else type(exc).__name__
