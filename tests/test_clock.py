"""Virtual time (wqnb.clock): sleeps cost no wall time, timestamps are exact, runs are
deterministic, and a run can start from inside a running loop."""

from __future__ import annotations

import asyncio
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
