"""Faults an adversarial pass found in the consumer (issue 14) and Wippy-parity points of the
consumer (issue 12 §5, §6): each test failed on the code before its fix.

Timing-exact cases run on virtual time; the few that are about the real event loop (a
ticker's lag, threads) wait on conditions with deadlines and assert generous bounds.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time

import pytest
from _helpers import C, Q, app, history, virtual

import wqnb
from wqnb.consumer import UNWIND_TIMEOUT


def _rt(handler, offload=None, **kw) -> wqnb.Runtime:
    rt = wqnb.Runtime.from_yaml_string(app(**kw))
    rt.register_function("t:h", handler, offload=offload)
    return rt


async def _until(cond, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


# -- 4. a handler's own CancelledError must not freeze the loop -------------------------------------
def test_a_handler_raising_cancelled_error_in_a_loop_lets_the_loop_run():
    ticks = []

    async def poison(body):
        raise asyncio.CancelledError()  # raised by the handler itself: a failure, nacked

    async def main():
        rt = _rt(poison, concurrency=1, prefetch=1)
        await rt.start()
        await rt.publish(Q, "x")

        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        await _until(lambda: len(ticks) >= 50, 10.0, "the ticker to run while the message cycles")
        t.cancel()
        await rt.stop()
        return rt.timeline

    tl = asyncio.run(main())
    assert (tl.df["event"] == "nack").sum() >= 1


# -- 5. each consumer's sync handlers get a pool of their concurrency ----------------------------------
def test_sync_handlers_run_concurrency_at_once_and_do_not_starve_another_consumer():
    n = 20
    release, other_done = threading.Event(), threading.Event()
    lock = threading.Lock()
    running = [0]

    def blocked(body):
        with lock:
            running[0] += 1
        release.wait(30)  # held until the test has seen all n running at once

    def other(body):
        other_done.set()

    async def main():
        rt = wqnb.Runtime.from_yaml_string("""
namespace: app
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: a, kind: queue.queue, driver: mem}
  - {name: b, kind: queue.queue, driver: mem}
  - {name: ca, kind: queue.consumer, queue: a, func: fa, concurrency: 20, prefetch: 1, lifecycle: {auto_start: true}}
  - {name: cb, kind: queue.consumer, queue: b, func: fb, concurrency: 1, prefetch: 1, lifecycle: {auto_start: true}}
""")
        rt.register_function("app:fa", blocked)
        rt.register_function("app:fb", other)
        await rt.start()
        for i in range(n):
            await rt.publish("app:a", str(i))
        try:
            # asyncio's shared pool (6 threads here) would run 6 while busy said 20
            await _until(lambda: running[0] == n, 10.0, "20 sync handlers running at once")
            assert rt.consumers["app:ca"].busy == n
            await rt.publish("app:b", "while a's workers are all blocked")
            await _until(other_done.is_set, 10.0, "the other consumer's sync handler")
        finally:
            release.set()
        await rt.drain(timeout=30)
        await rt.stop()
        return rt.timeline

    tl = asyncio.run(main())
    assert (tl.df["event"] == "ack").sum() == n + 1


# -- 6. a worker running handlers that never suspend lets the loop run by elapsed time ---------------
def test_handlers_that_never_suspend_do_not_hold_the_loop_for_long():
    gaps: list[float] = []

    def busy(body):
        time.sleep(0.02)  # on the loop thread (offload=False), as a Lua handler runs

    async def main():
        rt = _rt(busy, offload=False, concurrency=1, prefetch=100, max_length=100)
        await rt.start()
        stop = asyncio.Event()

        async def ticker():
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        t = asyncio.create_task(ticker())
        for i in range(70):
            await rt.publish(Q, str(i))
        await rt.drain(timeout=60)
        stop.set()
        await t
        await rt.stop()

    asyncio.run(main())
    # Before: one yield every 64 deliveries, so a 64 x 20 ms = 1.3 s stall. Now: at most two
    # handlers back to back (the check runs between messages), plus scheduling noise.
    assert max(gaps) < 0.5, max(gaps)


# -- 7. start() during stop() --------------------------------------------------------------------------
def test_start_during_stop_waits_for_the_stop_then_runs_again():
    handled = []

    async def handler(body):
        await asyncio.sleep(1)
        handled.append(body)

    async def main():
        rt = _rt(handler, stop_timeout=5)
        await rt.start()
        await rt.publish(Q, "first")
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(rt.stop())
        await asyncio.sleep(0)
        assert rt.state == "stopping"
        await rt.start()  # waits for the stop (first finishes at t = 1), then starts
        assert stopping.done() and rt.state == "running"
        await rt.publish(Q, "second")
        await rt.drain()
        await rt.stop()

    virtual(main)
    assert handled == ["first", "second"]


# -- 8. sys.exit() in a handler is a failure, not the end of the loop --------------------------------
@pytest.mark.parametrize("how", ["thread", "inline", "async"])
def test_sys_exit_in_a_handler_is_a_nack(how):
    def sync_exit(body, message):
        if message.attempt == 1:
            sys.exit(3)

    async def async_exit(body, message):
        if message.attempt == 1:
            sys.exit(3)

    fn = async_exit if how == "async" else sync_exit

    async def main():
        rt = _rt(fn, offload={"thread": True, "inline": False, "async": None}[how])
        await rt.start()
        await rt.publish(Q, "x")
        await rt.drain(timeout=10)
        await rt.stop()
        return rt.timeline

    tl = asyncio.run(main())
    nack = tl.df[tl.df["event"] == "nack"]
    assert len(nack) == 1
    assert "sys.exit(3)" in str(nack["error"].iloc[0])
    assert (tl.df["event"] == "ack").sum() == 1


# -- 13. a handler that unwinds slowly does not hold stop() -------------------------------------------
def test_stop_bounds_the_wait_after_cancelling_and_names_the_stuck_worker():
    second_round = []

    async def slow_unwind(body):
        try:
            await asyncio.sleep(100)
        finally:
            await asyncio.sleep(30)  # an await in finally: 30 s to unwind

    async def record(body, message):
        second_round.append((body, message.attempt))

    async def main():
        rt = _rt(slow_unwind, stop_timeout=0.5)
        await rt.start()
        await rt.publish(Q, "stuck")
        await asyncio.sleep(0.1)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(wqnb.StopTimeout, match="worker 0 did not unwind") as err:
            await rt.stop()
        took = asyncio.get_running_loop().time() - t0
        rt.register_function("t:h", record)
        await rt.start()
        await rt.drain()
        await rt.stop()
        return took, err.value, rt.timeline

    took, err, tl = virtual(main)
    assert took == pytest.approx(0.5 + UNWIND_TIMEOUT)
    assert err.unwound == {C: [0]}
    assert second_round == [("stuck", 2)]  # requeued anyway: nothing lost
    check = tl.df[tl.df["consumer"] == C][["busy", "unsettled"]].dropna()
    assert (check >= 0).all().all()


# -- 14. a cancelled waiting publish says what became of its message -----------------------------------
def test_simulate_until_ends_a_waiting_publish_with_publish_cancelled():
    tl = wqnb.simulate(concurrency=1, prefetch=1, messages=50, arrival_rate=None, service_time=1.0,
                       max_length=2, until=5.0, seed=1)
    last = {m: evs[-1] for m, evs in history(tl.df).items()}
    assert "publish_cancelled" in set(last.values())
    assert set(last.values()) <= {"ack", "dead_letter", "requeue", "publish", "publish_cancelled"}
    assert list(last.values()).count("publish_cancelled") == 1  # the one publisher was waiting


# -- issue 12 §5: a nack requeues an independent copy ---------------------------------------------------
def test_a_nack_requeues_a_copy_and_the_handler_keeps_its_own_view():
    seen = []

    async def handler(body, message):
        seen.append((message.attempt, dict(message.headers)))
        if message.attempt == 1:
            await message.nack("again")
            message.headers["changed_after_nack"] = True  # must not reach the redelivery
            seen.append(("after nack", message.attempt))

    async def main():
        rt = _rt(handler)
        await rt.start()
        await rt.publish(Q, "x", headers={"k": 1})
        await rt.drain()
        await rt.stop()

    virtual(main)
    assert seen[1] == ("after nack", 1)  # the nacked handler still reads its own attempt
    attempt, headers = seen[2]
    assert attempt == 2 and "changed_after_nack" not in headers and headers["k"] == 1


def test_the_dead_letter_copy_leaves_the_handlers_view_alone():
    views = []

    async def handler(body, message):
        try:
            raise RuntimeError("no")
        finally:
            views.append(dict(message.headers))

    async def main():
        rt = wqnb.Runtime.from_yaml_string(app(max_attempts=1))
        rt.register_function("t:h", handler)
        await rt.start()
        await rt.publish(Q, "x")
        await rt.drain()
        await rt.stop()

    virtual(main)
    assert not any(k.startswith("x_") for k in views[0])


# -- issue 12 §6: poison messages are seen --------------------------------------------------------------
def test_a_poison_message_is_warned_about_and_named_by_a_drain_timeout(caplog):
    async def poison(body):
        if body == "bad":
            raise ValueError("cannot parse bad")

    async def main():
        rt = _rt(poison, requeue_delay="100ms")
        await rt.start()
        await rt.publish(Q, "good")
        await rt.publish(Q, "bad")
        with pytest.raises(TimeoutError) as err:
            await rt.drain(timeout=5)
        await rt.stop()
        return str(err.value), rt.timeline

    with caplog.at_level(logging.WARNING, logger="wqnb.consumer"):
        text, tl = virtual(main)
    warned = [r for r in caplog.records if "has failed 10 times" in r.getMessage()]
    assert len(warned) == 1 and "cannot parse bad" in warned[0].getMessage()
    assert "messages still cycling" in text and "cannot parse bad" in text and "attempt" in text
    assert tl.summary()["poison_messages"] == 1


# -- issue 12 §3: publisher ids and batch publish ---------------------------------------------------
def test_a_publisher_set_id_is_kept_and_publish_many_returns_ids_in_order():
    seen = []

    async def handler(body, message):
        seen.append((message.id, body))

    async def main():
        rt = _rt(handler, max_length=3)
        await rt.start()
        a = await rt.publish(Q, "mine", id="order-42")
        b = await rt.publish(Q, "fresh", id="")  # empty: a fresh one (Wippy)
        many = await rt.publish_many(Q, [f"m{i}" for i in range(6)])  # waits while full (max 3)
        with pytest.raises(TypeError):
            await rt.publish(Q, "x", id=7)
        await rt.drain()
        await rt.stop()
        return a, b, many, rt.timeline

    a, b, many, tl = virtual(main)
    assert a == "order-42" and b and b != a and len(set(many)) == 6
    assert seen == [("order-42", "mine"), (b, "fresh"), *zip(many, [f"m{i}" for i in range(6)])]
    pubs = tl.df[tl.df["event"] == "publish"]
    assert list(pubs["msg_id"].astype(str)) == [a, b, *many]


# -- issue 12 §4: change a running consumer -------------------------------------------------------------
def test_update_consumer_adds_and_retires_workers_and_shrinks_the_buffer():
    gate = asyncio.Event()
    marks = {}

    async def handler(body):
        await gate.wait()

    async def main():
        rt = _rt(handler, concurrency=2, prefetch=6, max_length=100, stop_timeout=5)
        await rt.start()
        for i in range(20):
            await rt.publish(Q, f"m{i}")
        await asyncio.sleep(1)
        c = rt.consumers[C]
        assert (c.busy, len(c.buffer)) == (2, 6)
        await rt.update_consumer(C, concurrency=5)
        await asyncio.sleep(0)
        assert c.busy == 5  # three more workers took from the buffer at once
        await rt.update_consumer(C, prefetch=2)
        assert len(c.buffer) <= 2  # the excess went back to the head of the queue, at once
        await rt.update_consumer(C, concurrency=1)
        assert c.busy == 5  # running handlers finish their message first
        marks["gate"] = len(rt.recorder)
        gate.set()
        await asyncio.sleep(0)
        await rt.drain()
        with pytest.raises(ValueError, match="concurrency must be a whole number from 1 to 1000"):
            await rt.update_consumer(C, concurrency=0)
        await rt.stop()
        return rt.timeline, c

    tl, c = virtual(main)
    df = tl.df
    assert (df["event"] == "ack").sum() == 20 and df[df["event"] == "ack"]["msg_id"].is_unique
    after = df.iloc[marks["gate"]:]
    fifth_ack = after[after["event"] == "ack"].index[4]
    late = after[(after.index > fifth_ack) & (after["event"] == "start")]
    assert len(late) and (late["busy"] <= 1).all()  # once the running five finished: one at a time
    assert (after["buffered"].dropna() <= 2).all()  # the lowered prefetch holds from then on
    requeued = df[df["event"] == "requeue"]
    assert len(requeued) >= 1  # the handed-back excess is recorded
    assert [ch[1:] for ch in tl.consumers[C].changes] == [(5, 6), (5, 2), (1, 2)]


# -- issue 12 §5 (docs): one Lua runtime per consumer ---------------------------------------------------
def test_two_consumers_of_one_lua_function_keep_their_own_globals():
    pytest.importorskip("lupa")

    async def main():
        rt = wqnb.Runtime.from_yaml_string("""
namespace: app
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: a, kind: queue.queue, driver: mem}
  - {name: b, kind: queue.queue, driver: mem}
  - {name: out, kind: queue.queue, driver: mem}
  - name: count
    kind: function.lua
    modules: [queue]
    source: |
      local queue = require("queue")
      return function(body)
        n = (n or 0) + 1  -- a global: kept between deliveries of one runtime
        queue.publish("app:out", body .. "=" .. n)
      end
  - {name: ca, kind: queue.consumer, queue: a, func: count, lifecycle: {auto_start: true}}
  - {name: cb, kind: queue.consumer, queue: b, func: count, lifecycle: {auto_start: true}}
""")
        await rt.start()
        for q, k in (("app:a", 3), ("app:b", 2)):
            for i in range(k):
                await rt.publish(q, f"{q[-1]}{i}")
        await rt.drain()
        await rt.stop()
        return [m.body for m in rt.drivers["app:mem"].local("app:out").ready]

    out = virtual(main)
    # each consumer counts its own deliveries: one runtime (and one set of globals) each
    assert sorted(out) == ["a0=1", "a1=2", "a2=3", "b0=1", "b1=2"]


# -- issue 13 §5: an interrupted drain says the runtime is still running, and how to stop it ---------
def test_an_interrupted_drain_says_how_to_stop_the_runtime(caplog):
    async def slow(body):
        await asyncio.sleep(10)

    async def main():
        rt = _rt(slow)
        await rt.start()
        await rt.publish(Q, "x")
        cell = asyncio.create_task(rt.drain())
        await asyncio.sleep(1)
        cell.cancel()  # what Jupyter's interrupt does to the awaiting cell
        with pytest.raises(asyncio.CancelledError):
            await cell
        state = rt.state
        await rt.stop()
        return state

    with caplog.at_level(logging.WARNING, logger="wqnb.runtime"):
        state = virtual(main)
    assert state == "running"
    [rec] = [r for r in caplog.records if "drain() was interrupted" in r.getMessage()]
    assert "await rt.stop()" in rec.getMessage() and "1 unsettled" in rec.getMessage()
