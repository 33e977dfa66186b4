"""Virtual time (wqnb.clock): sleeps cost no wall time, timestamps are exact, runs are
deterministic, and a run can start from inside a running loop."""

from __future__ import annotations

import asyncio
import heapq
import random
import selectors
import threading
import time

import pytest

import wqnb
from wqnb.clock import VirtualTimeLoop, in_running_loop, is_virtual


def test_an_hour_of_sleep_costs_no_wall_time():
    async def main():
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3600)
        return loop.time(), is_virtual(), isinstance(loop, VirtualTimeLoop)

    t0 = time.perf_counter()
    assert wqnb.run_virtual(main()) == (3600.0, True, True)
    assert time.perf_counter() - t0 < 2.0


def test_concurrent_sleepers_wake_in_time_order_at_exact_times():
    woke = []

    async def sleeper(name, s):
        await asyncio.sleep(s)
        woke.append((name, asyncio.get_running_loop().time()))

    async def main():
        await asyncio.gather(sleeper("c", 3.0), sleeper("a", 0.25), sleeper("b", 1.5), sleeper("a2", 0.25))

    wqnb.run_virtual(main())
    assert woke == [("a", 0.25), ("a2", 0.25), ("b", 1.5), ("c", 3.0)]


def test_start_offset_call_later_and_timeout_are_exact():
    async def main():
        loop = asyncio.get_running_loop()
        assert loop.time() == 100.0
        fired = []
        loop.call_later(2.5, lambda: fired.append(loop.time()))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(4):
                await asyncio.sleep(10)
        return fired, loop.time()

    assert wqnb.run_virtual(main(), start=100.0) == ([102.5], 104.0)


def test_waiting_on_nothing_is_a_deadlock_not_a_hang():
    async def main():
        await asyncio.get_running_loop().create_future()

    with pytest.raises(wqnb.VirtualTimeDeadlock, match=r"^virtual time cannot move"):
        wqnb.run_virtual(main())


def test_threads_take_no_virtual_time():
    async def main():
        loop = asyncio.get_running_loop()
        ev = threading.Event()
        threading.Timer(0.05, ev.set).start()
        got = await loop.run_in_executor(None, lambda: ev.wait(5) and threading.current_thread().name)
        return got, loop.time()

    name, t = wqnb.run_virtual(main())
    assert name != threading.current_thread().name and t == 0.0


def test_exceptions_propagate_and_leftover_tasks_are_cancelled():
    cancelled = []

    async def forever():
        try:
            await asyncio.sleep(1e9)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        asyncio.create_task(forever())
        await asyncio.sleep(1)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        wqnb.run_virtual(main())
    assert cancelled == [True]


def test_run_virtual_from_inside_a_running_loop():
    async def inner():
        await asyncio.sleep(7)
        return asyncio.get_running_loop().time()

    async def cell():
        outer = asyncio.get_running_loop()
        assert in_running_loop() and not is_virtual()
        result = wqnb.run_virtual(inner())  # a sync call in a coroutine, as a notebook cell does
        assert asyncio.get_running_loop() is outer
        return result

    assert asyncio.run(cell()) == 7.0
    assert not in_running_loop()


def test_runs_are_deterministic():
    import random

    def trace():
        out = []

        async def worker(i, rng):
            for _ in range(20):
                await asyncio.sleep(rng.random())
                out.append((i, asyncio.get_running_loop().time()))

        async def main():
            await asyncio.gather(*(worker(i, random.Random(i)) for i in range(5)))

        wqnb.run_virtual(main())
        return out

    assert trace() == trace()


# -- the virtual loop runs callbacks in exactly the order asyncio's own loop would ----------
class _JumpSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """A selector that, asked to wait, moves the reference loop's clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: _StockVirtualLoop | None = None

    def select(self, timeout=None):  # noqa: ANN001
        if timeout is None:
            raise RuntimeError("reference loop: nothing scheduled")
        if timeout > 0:
            self.loop.now += timeout
        return super().select(0)


class _FifoTimer(asyncio.TimerHandle):
    """asyncio orders timers by time alone, so timers due at one instant come off its heap
    in whatever order the heap holds them; wqnb's loop runs them in the order they were
    scheduled. The reference breaks ties the same way, and is otherwise asyncio's own."""

    __slots__ = ("seq",)

    def __lt__(self, other: _FifoTimer) -> bool:  # type: ignore[override]
        return (self._when, self.seq) < (other._when, other.seq)


class _StockVirtualLoop(asyncio.SelectorEventLoop):
    """The reference: asyncio's own ``_run_once``, whose waits jump a fake clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.seq = 0
        selector = _JumpSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self.now

    def call_at(self, when, callback, *args, context=None):  # noqa: ANN001
        self.seq += 1
        timer = _FifoTimer(when, callback, args, self, context)
        timer.seq = self.seq
        heapq.heappush(self._scheduled, timer)
        timer._scheduled = True
        return timer


def _scenario(seed: int, use_wqnb_sleep: bool):
    """Tasks that sleep, call_soon, call_later, cancel and wake each other; every step logged.

    Times are multiples of 0.25 s (exact in binary), so many things happen at one instant."""
    from wqnb.clock import sleep as wqnb_sleep

    rng = random.Random(seed)
    log: list[tuple] = []

    async def main():
        loop = asyncio.get_running_loop()
        nap = wqnb_sleep if use_wqnb_sleep else asyncio.sleep
        waiters: list[asyncio.Future] = []

        def note(*what):
            log.append((loop.time(), *what))

        async def actor(name: str):
            for step in range(12):
                r = rng.random()
                if r < 0.45:
                    await nap(rng.choice([0, 0.25, 0.25, 0.5, 1.0]))
                elif r < 0.55:
                    await asyncio.sleep(0)
                elif r < 0.65:
                    loop.call_soon(note, name, step, "soon")
                elif r < 0.75:
                    h = loop.call_later(rng.choice([0.25, 0.5]), note, name, step, "later")
                    if rng.random() < 0.3:
                        h.cancel()
                elif r < 0.85:
                    fut = loop.create_future()
                    waiters.append(fut)
                    await asyncio.wait([fut], timeout=rng.choice([0.25, 0.75]))
                else:
                    while waiters:
                        w = waiters.pop(0)
                        if not w.done():
                            w.set_result(name)
                            break
                note(name, step)

        tasks = [asyncio.ensure_future(actor(f"a{i}")) for i in range(6)]
        victim = asyncio.ensure_future(nap(0.5))
        loop.call_later(0.25, victim.cancel)
        await asyncio.gather(*tasks)
        await asyncio.gather(victim, return_exceptions=True)
        note("end")

    return main, log


def _run_reference(coro) -> None:
    loop = _StockVirtualLoop()
    try:
        loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("use_wqnb_sleep", [False, True])
def test_same_order_of_events_as_asyncios_own_loop(seed, use_wqnb_sleep):
    main, expected = _scenario(seed, use_wqnb_sleep=False)
    _run_reference(main())
    main, got = _scenario(seed, use_wqnb_sleep=use_wqnb_sleep)
    wqnb.run_virtual(main())
    assert len(expected) > 50
    assert got == expected


def test_call_soon_handles_cancel_and_report_it():
    async def main():
        loop = asyncio.get_running_loop()
        ran = []
        h1 = loop.call_soon(ran.append, 1)
        h2 = loop.call_soon(ran.append, 2)
        h2.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return ran, h1.cancelled(), h2.cancelled(), loop.get_debug(), loop.create_future().get_loop() is loop

    assert wqnb.run_virtual(main()) == ([1], False, True, False, True)


def test_wqnb_sleep_is_asyncio_sleep_off_the_virtual_loop():
    from wqnb.clock import sleep as wqnb_sleep

    async def main():
        t0 = time.perf_counter()
        await wqnb_sleep(0.01)
        return time.perf_counter() - t0

    assert asyncio.run(main()) >= 0.009


def test_a_loop_stopped_by_one_done_callback_of_a_sleep_keeps_the_others():
    # the virtual loop runs a lone sleep's callbacks itself; if the first stops the loop,
    # the second must still run (on the next run), as with asyncio's own loop
    for make in (VirtualTimeLoop, asyncio.new_event_loop):
        loop = make()
        try:
            log: list[str] = []
            sleep = loop.sleep_future(0.001) if isinstance(loop, VirtualTimeLoop) else loop.create_future()
            if not isinstance(loop, VirtualTimeLoop):
                loop.call_later(0.001, sleep.set_result, None)
            sleep.add_done_callback(lambda f: (log.append("a"), loop.stop()))
            sleep.add_done_callback(lambda f: log.append("b"))
            loop.run_forever()
            loop.run_until_complete(asyncio.sleep(0))
            assert log == ["a", "b"], (make, log)
        finally:
            loop.close()
