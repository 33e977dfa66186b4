"""Consumer edge cases: a handler that raises CancelledError itself, several consumers
woken by one hand-back, many delayed requeues at once."""

from __future__ import annotations

import asyncio

import pytest
from _helpers import Q, rows, runtime, virtual

import wqnb


def test_a_handler_raising_cancelled_error_itself_is_a_failure_not_a_stop():
    # awaiting a future someone else cancelled raises CancelledError inside the handler;
    # the worker is not being stopped, so this is a nack like any other exception
    async def handler(body):
        if body == "bad":
            fut = asyncio.get_running_loop().create_future()
            fut.cancel()
            await fut

    async def main():
        rt = runtime(handler, max_attempts=2, concurrency=2, prefetch=2)
        await rt.start()
        for body in ("ok", "bad", "ok2"):
            await rt.publish(Q, body)
        await rt.drain()  # used to hang: the message was neither settled nor requeued
        await rt.stop()
        return rt.timeline.df

    df = virtual(main)
    assert rows(df, "nack")["error"].tolist() == ["CancelledError", "CancelledError"]
    assert len(rows(df, "dead_letter")) == 1 and len(rows(df, "ack")) == 2
    assert df.groupby("msg_id", observed=True)["event"].last().astype(str).tolist().count("ack") == 2


HAND_BACK_APP = """\
namespace: t
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: tasks, kind: queue.queue, driver: t:mem}
  - {name: big, kind: queue.consumer, queue: t:tasks, func: t:h, concurrency: 1, prefetch: 8}
  - {name: a, kind: queue.consumer, queue: t:tasks, func: t:h, concurrency: 1, prefetch: 3}
  - {name: b, kind: queue.consumer, queue: t:tasks, func: t:h, concurrency: 1, prefetch: 3}
"""


def test_consumers_woken_by_one_hand_back_record_in_order_with_true_depths():
    async def slow(body):
        await asyncio.sleep(10)

    async def main():
        rt = wqnb.Runtime.from_yaml_string(HAND_BACK_APP)
        rt.register_function("t:h", slow)
        await rt.start("t:big")
        for i in range(8):
            await rt.publish(Q, str(i))  # big's buffer: eight (its worker has not run yet)
        await rt.start("t:a", "t:b")  # the queue is empty: both wait to be pushed to
        await rt.publish(Q, "8")  # a (first in line) takes it: one slot of its three used
        mark = len(rt.recorder)
        await rt.consumers["t:big"].stop(timeout=0)  # its eight go back to the head at once
        df = rt.timeline.df.iloc[mark:]
        await rt.stop()
        return df

    df = virtual(main)
    assert df["event"].astype(str).tolist()[:8] == ["requeue"] * 8
    delivered = rows(df.iloc[8:13], "deliver")
    # b (first in line: a re-queued itself behind b after taking "8") takes three, then a
    # is woken and fills its two free slots: each row in turn, each with the depth after it
    # (a's rows used to come first, before b had recorded, with depths that skipped b's)
    assert delivered["consumer"].astype(str).tolist() == ["t:b"] * 3 + ["t:a"] * 2
    assert delivered["depth"].tolist() == [7, 6, 5, 4, 3]


def test_many_delayed_requeues_land_each_once():
    async def fail_first(body, message):
        if message.attempt == 1:
            raise RuntimeError("once")

    async def main():
        rt = runtime(fail_first, concurrency=50, prefetch=50, requeue_delay="1s")
        await rt.start()
        for i in range(2_000):
            await rt.publish(Q, str(i))
        await rt.drain()
        await rt.stop()
        return rt.timeline.df

    df = virtual(main)
    assert len(rows(df, "requeue")) == 2_000 and len(rows(df, "ack")) == 2_000


# -- simulate(until=...) and its parameters -----------------------------------------------------
def test_until_with_handlers_longer_than_stop_timeout_cuts_them_off_and_loses_nothing():
    # used to raise StopTimeout out of simulate()
    tl = wqnb.simulate(messages=5, arrival_rate=None, service_time=30, concurrency=2, prefetch=1, until=1)
    df = tl.df
    requeues = rows(df, "requeue")
    assert requeues["t"].tolist() == [1.0, 11.0, 11.0]  # the buffered one at the stop; then the
    # two running handlers, after their 10 s stop_timeout
    last = df.groupby("msg_id", observed=True)["event"].last().astype(str)
    assert sorted(last) == ["publish"] * 2 + ["requeue"] * 3


def test_until_still_reports_a_publisher_that_failed():
    with pytest.raises(wqnb.QueueNotFound, match="sim:nope"):
        wqnb.simulate(app=APP_ONE, queue="sim:nope", handlers={"t:h": _noop}, messages=3, until=1)


APP_ONE = """\
namespace: t
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: tasks, kind: queue.queue, driver: t:mem}
  - {name: c, kind: queue.consumer, queue: t:tasks, func: t:h, lifecycle: {auto_start: true}}
"""


async def _noop(body):
    return None


@pytest.mark.parametrize("kwargs,text", [
    ({"arrival_rate": float("nan")}, "arrival_rate must be > 0"),
    ({"arrival_rate": float("inf")}, "arrival_rate must be > 0"),
    ({"service_time": float("nan")}, "service_time must be a finite number of seconds"),
    ({"service_time": wqnb.Constant(0.1), "messages": 10.0}, "messages must be a whole number"),
    ({"until": "3"}, "until must be a finite number"),
])
def test_simulate_names_the_bad_parameter(kwargs, text):
    with pytest.raises(ValueError, match=text):
        wqnb.simulate(**kwargs)


def test_exponential_of_infinite_mean_is_refused():
    with pytest.raises(ValueError, match="Exponential mean must be a finite number"):
        wqnb.Exponential(float("inf"))


def test_lognormal_sampler_draws_what_sample_draws():
    import random

    from wqnb.sim import LogNormal, sampler

    d = LogNormal(0.05, 1.5)
    draw, rng = sampler(d, random.Random(2)), random.Random(2)
    assert [draw() for _ in range(20)] == [d.sample(rng) for _ in range(20)]
