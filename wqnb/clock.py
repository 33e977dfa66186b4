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
import selectors
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .errors import VirtualTimeDeadlock

__all__ = ["VirtualTimeLoop", "run_virtual", "in_running_loop", "is_virtual"]

T = TypeVar("T")


class _AutojumpSelector(selectors.DefaultSelector):
    """A real selector whose waits become jumps of the virtual clock.

    ``BaseEventLoop._run_once`` asks the selector to wait ``timeout`` seconds, the time
    until its earliest timer. We poll real file descriptors without waiting (the loop's
    self-pipe, which threads use to wake it), and if nothing is ready we move the
    clock to that timer instead of sleeping.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        loop = self.loop
        assert loop is not None
        if loop._threads_pending:
            # Work handed to threads takes no virtual time: wait for it in real time.
            ready = super().select(None if timeout is None else 0.05)
            if ready or timeout is None:
                return ready
            return []
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        scheduled = loop._scheduled
        if not scheduled:
            raise VirtualTimeDeadlock(
                "virtual time cannot move: every task is waiting and no timer is scheduled "
                "(a handler or publisher is waiting for something that never happens)"
            )
        when = scheduled[0]._when
        if when > loop._now:
            loop._now = when
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time: ``time()`` starts at ``start`` and jumps to timers."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _AutojumpSelector()
        self._now = float(start)
        self._threads_pending = 0
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._now

    def run_in_executor(self, executor, func, *args):  # type: ignore[override]
        """Threads take no virtual time: the clock waits for them instead of jumping."""
        fut = super().run_in_executor(executor, func, *args)
        self._threads_pending += 1

        def _done(_: asyncio.Future) -> None:
            self._threads_pending -= 1

        fut.add_done_callback(_done)
        return fut


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
            return loop.run_until_complete(task)
        finally:
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


_local = threading.local()
