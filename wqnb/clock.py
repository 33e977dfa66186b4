"""Real and virtual time: one runtime, two clocks (as SimPy's ``Environment`` and ``rt``).

The runtime never reads a clock of its own: it asks the running event loop
(``loop.time()``, ``asyncio.sleep``, ``loop.call_later``). So the same code runs

* on **real time**, in any asyncio loop (a Jupyter kernel's, ``asyncio.run``'s), and
* on **virtual time**, in a :class:`VirtualTimeLoop`: when every task is waiting, the
  loop jumps straight to the next timer instead of sleeping (trio's autojump clock).
  A run is deterministic (same inputs, same order of events, same timestamps) and
  costs no wall time for the sleeps in it.

:func:`run_virtual` runs a coroutine on a fresh virtual loop; called from a thread whose
loop is already running (a notebook cell), it runs in a worker thread, so it never needs
``nest_asyncio`` and never blocks on the caller's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import heapq
import selectors
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .errors import VirtualTimeDeadlock

__all__ = ["VirtualTimeLoop", "clock_fn", "run_virtual", "in_running_loop", "is_virtual", "sleep"]

T = TypeVar("T")


class _Soon(list):
    """What ``call_soon`` returns on the virtual loop: ``[callback, args, context]``.

    A list built in C instead of an ``asyncio.Handle`` built in Python: the loop makes one
    for every task wakeup, so its cost is paid per event. ``cancel()`` blanks the callback.
    """

    __slots__ = ()

    def cancel(self) -> None:
        self[0] = None
        self[1] = ()

    def cancelled(self) -> bool:
        return self[0] is None

    def get_context(self) -> contextvars.Context:
        return self[2]

    def __repr__(self) -> str:
        return f"<Handle {self[0]!r}{' cancelled' if self[0] is None else ''}>"


class _Timer(asyncio.TimerHandle):
    """An ``asyncio.TimerHandle`` without the debug bookkeeping (the virtual loop never debugs)."""

    __slots__ = ()

    def __init__(self, when, callback, args, loop, context=None):  # noqa: ANN001 - asyncio's signature
        self._context = context if context is not None else contextvars.copy_context()
        self._loop = loop
        self._callback = callback
        self._args = args
        self._cancelled = False
        self._repr = None
        self._source_traceback = None
        self._when = when
        self._scheduled = True


_FUTURE = asyncio.Future
_SET_RESULT = asyncio.futures._set_result_unless_cancelled
_copy_context = contextvars.copy_context


class _SleepTimer:
    """What ``call_later`` returns for an ``asyncio.sleep``: its ``cancel()`` has nothing to do."""

    __slots__ = ()

    def cancel(self) -> None:
        pass

    def cancelled(self) -> bool:
        return False


_SLEEP_TIMER = _SleepTimer()


def _is_dead(entry: object) -> bool:
    if entry.__class__ is _FUTURE:
        return entry.done()  # type: ignore[attr-defined]
    return entry._cancelled  # type: ignore[attr-defined]


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time: ``time()`` starts at ``start`` and jumps to timers.

    It replaces ``BaseEventLoop._run_once`` (the one CPython method it leans on) with a
    lean loop that returns only when the loop stops: timers live in a heap of
    ``(when, seq, handle)`` tuples (compared in C, not through ``TimerHandle.__lt__``),
    ``call_soon`` makes a list instead of a ``Handle``, an ``asyncio.sleep`` puts its
    future on the heap itself, every callback that becomes ready at the current instant
    runs in one pass, and real file descriptors are polled only when a thread may wake
    the loop. When nothing is ready the clock jumps to the next timer; when nothing is
    scheduled either, :class:`~wqnb.errors.VirtualTimeDeadlock` is raised.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._threads_pending = 0
        self._timers: list[tuple[float, int, Any]] = []
        self._timer_seq = 0
        self._failure: BaseException | None = None
        super().__init__(selectors.DefaultSelector())
        # Every new future asks its loop get_debug(); answer from C, not a Python method.
        self.get_debug = False.__bool__  # type: ignore[method-assign]
        self.create_future = functools.partial(_FUTURE, loop=self)  # type: ignore[method-assign]

    def set_debug(self, enabled: bool) -> None:
        """The virtual loop never runs in debug mode (its handles skip the bookkeeping)."""
        self._debug = False

    def time(self) -> float:
        return self._now

    def fail(self, exc: BaseException) -> None:
        """End the run: stop the loop now; :func:`run_virtual` raises ``exc``."""
        if self._failure is None:
            self._failure = exc
        self._stopping = True

    # -- scheduling: lighter handles, a tuple heap ------------------------------------------
    def call_soon(self, callback, *args, context=None):  # noqa: ANN001
        if self._closed:
            raise RuntimeError("Event loop is closed")
        handle = _Soon((callback, args, context if context is not None else _copy_context()))
        self._ready.append(handle)
        return handle

    def call_at(self, when, callback, *args, context=None):  # noqa: ANN001
        if self._closed:
            raise RuntimeError("Event loop is closed")
        self._timer_seq += 1
        if callback is _SET_RESULT and len(args) == 2 and args[1] is None:
            # asyncio.sleep(): put its future itself on the heap; no handle, no callback.
            # A cancelled sleep leaves a done future, skipped when it reaches the top.
            heapq.heappush(self._timers, (when, self._timer_seq, args[0]))
            return _SLEEP_TIMER
        timer = _Timer(when, callback, args, self, context)
        heapq.heappush(self._timers, (when, self._timer_seq, timer))
        return timer

    def call_later(self, delay, callback, *args, context=None):  # noqa: ANN001
        return self.call_at(self._now + delay, callback, *args, context=context)

    def sleep_future(self, delay: float) -> asyncio.Future[None]:
        """A future that completes ``delay`` virtual seconds from now: ``asyncio.sleep``
        without its coroutine (see :func:`sleep`). A ``delay`` of 0 is a timer due now: it
        completes once everything ready at this instant has run."""
        fut = _FUTURE(loop=self)
        self._timer_seq += 1
        heapq.heappush(self._timers, (self._now + (delay if delay > 0 else 0), self._timer_seq, fut))
        return fut

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass  # cancelled timers are skipped when they reach the top of the heap

    def close(self) -> None:
        self._timers.clear()
        super().close()

    def run_in_executor(self, executor, func, *args):  # type: ignore[override]
        """Threads take no virtual time: the clock waits for them instead of jumping."""
        fut = super().run_in_executor(executor, func, *args)
        self._threads_pending += 1

        def _done(_: asyncio.Future) -> None:
            self._threads_pending -= 1

        fut.add_done_callback(_done)
        return fut

    # -- the loop -------------------------------------------------------------------------
    def _next_instant(self) -> None:
        """Nothing is ready: wait for threads, or jump the clock to the next live timer."""
        ready = self._ready
        timers = self._timers
        while timers and _is_dead(timers[0][2]):
            heapq.heappop(timers)
        if self._threads_pending:
            # Work handed to a thread: wait for it in real time (it costs no virtual time).
            wait = 0 if (ready or self._stopping) else (0.05 if timers else None)
            self._process_events(self._selector.select(wait))
            if not ready and timers and not self._threads_pending:
                self._now = max(self._now, timers[0][0])
        elif timers:
            when = timers[0][0]
            if when > self._now:
                self._now = when
        else:
            self._process_events(self._selector.select(0))
            if not ready:
                raise VirtualTimeDeadlock(
                    "virtual time cannot move: every task is waiting and no timer is "
                    "scheduled (a handler or publisher waits for something that never happens)"
                )

    def _run_once(self) -> None:
        """Run until the loop stops (``run_forever`` calls this until ``_stopping``)."""
        ready = self._ready
        timers = self._timers
        popleft = ready.popleft
        heappop = heapq.heappop
        while not self._stopping:
            if not ready and timers and not self._threads_pending:
                when, _, timer = timers[0]
                if timer.__class__ is _FUTURE:  # the next event is the end of a sleep
                    heappop(timers)
                    if timer.done():  # a cancelled sleep
                        continue
                    if when > self._now:
                        self._now = when  # jump to it
                    if timers and timers[0][0] <= when:
                        ready.append(timer)  # not alone at this instant: the general path
                    else:
                        # Alone at this instant: it would run next, and so would the
                        # callbacks its set_result() queued. Run them now, skipping the
                        # queue (the commonest step of a simulation; the order is the same).
                        callbacks = timer._callbacks
                        if callbacks:
                            for callback, _ in callbacks:
                                timer.remove_done_callback(callback)
                        timer.set_result(None)
                        if callbacks:
                            pending = iter(callbacks)
                            for callback, context in pending:
                                try:
                                    context.run(callback, timer)
                                except (SystemExit, KeyboardInterrupt):
                                    raise
                                except BaseException as exc:
                                    self.call_exception_handler({
                                        "message": f"Exception in callback {callback!r}",
                                        "exception": exc, "future": timer,
                                    })
                                if self._stopping:  # the rest wait in the queue, as set_result left them
                                    ready.extend(_Soon((cb, (timer,), ctx)) for cb, ctx in pending)
                                    break
                        continue
            if self._threads_pending or not timers:
                if not ready or self._threads_pending:
                    self._next_instant()
            elif not ready:
                top = timers[0]
                if top[2]._cancelled:  # (a future on top was handled above)
                    self._next_instant()  # drops dead timers first
                elif top[0] > self._now:
                    self._now = top[0]  # jump to the next timer
            now = self._now
            while timers and timers[0][0] <= now:
                timer = heappop(timers)[2]
                if timer.__class__ is not _FUTURE:
                    timer._scheduled = False
                ready.append(timer)
            if self._stopping:
                break
            # Run what is ready now, and what becomes ready at this same instant, in FIFO
            # order: what successive stock iterations would run, minus their overhead
            # (tests/test_clock.py checks it against asyncio's own loop). Timers due at one
            # instant run in the order they were scheduled; asyncio leaves that to its heap.
            while ready:
                handle = popleft()
                cls = handle.__class__
                if cls is _Soon:
                    callback, args, context = handle
                    if callback is None:
                        continue
                elif cls is _FUTURE:  # a sleep ends
                    if not handle.done():
                        handle.set_result(None)
                    continue
                else:  # a timer, or a Handle from asyncio's own code (call_soon_threadsafe)
                    if handle._cancelled:
                        continue
                    callback, args, context = handle._callback, handle._args, handle._context
                try:
                    context.run(callback, *args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self.call_exception_handler(
                        {"message": f"Exception in callback {callback!r}", "exception": exc, "handle": handle}
                    )
                if self._stopping:
                    break


def sleep(delay: float) -> Awaitable[None]:
    """``await sleep(delay)``: ``asyncio.sleep``, cheaper on virtual time.

    On a :class:`VirtualTimeLoop` it returns a future the loop completes ``delay`` seconds
    later (no coroutine, no timer handle); elsewhere it is ``asyncio.sleep(delay)``.
    """
    loop = asyncio.get_running_loop()
    if loop.__class__ is VirtualTimeLoop and delay > 0:
        return loop.sleep_future(delay)
    return asyncio.sleep(delay)  # sleep(0) is a bare yield, not a timer: keep its order


def clock_fn(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """The cheapest callable that reads ``loop``'s clock (it is read for every event)."""
    if isinstance(loop, VirtualTimeLoop):
        return functools.partial(getattr, loop, "_now")  # C calls only
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic  # what BaseEventLoop.time returns, without the method call
    return loop.time


def is_virtual(loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """True when the (running) loop runs on virtual time."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
    return isinstance(loop, VirtualTimeLoop)


def in_running_loop() -> bool:
    """True inside a running event loop (a Jupyter cell, a coroutine)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_here(coro: Coroutine[Any, Any, T], start: float) -> T:
    loop = VirtualTimeLoop(start)
    try:
        asyncio.set_event_loop(loop)
        task = loop.create_task(coro)
        try:
            try:
                return loop.run_until_complete(task)
            except RuntimeError:
                if loop._failure is not None:  # stopped by fail(): say why
                    raise loop._failure from None
                raise
        finally:
            loop._failure = None
            _cancel_all(loop)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


def run_virtual(coro: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run ``coro`` to completion on a fresh virtual-time loop and return its result.

    From inside a running loop (a notebook cell) the virtual loop runs in a worker
    thread and this call blocks until it is done: virtual runs are CPU-bound and short,
    and the caller's loop is left untouched.
    """
    if not in_running_loop():
        return _run_here(coro, start)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wqnb-virtual") as ex:
        return ex.submit(_run_here, coro, start).result()

