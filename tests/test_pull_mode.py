"""The broker path: a driver that cannot push (Redis, AMQP) is pulled by a fetcher task.

``PullDriver`` is the reference driver (``tests/_reference_driver.py``: wire-form
messages, receipts, in-flight until settled, no in-process fast paths), so the consumer's
pull intake (batched ``fetch``) and the runtime's awaited ``publish`` run exactly as they
do for a broker, with the same guarantees.
"""

from __future__ import annotations

import asyncio

import pytest

import wqnb
import wqnb.registry
from _reference_driver import ReferenceDriver
from wqnb.runtime import DRIVERS


class PullDriver(ReferenceDriver):
    """The reference driver, counting its fetches."""

    def __init__(self, id, options=None):
        super().__init__(id, options)
        self.takes: list[int] = []

    async def fetch(self, queue_id, max_messages):
        got = await super().fetch(queue_id, max_messages)
        self.takes.append(len(got))
        return got

    @property
    def acked(self) -> int:
        return sum(1 for op, _, _ in self.frames if op == "ack")


APP = """
namespace: t
entries:
  - {name: d, kind: queue.driver.reference, lifecycle: {auto_start: true}}
  - {name: q, kind: queue.queue, driver: t:d, options: {max_length: 20}}
  - name: c
    kind: queue.consumer
    queue: t:q
    func: t:f
    concurrency: 3
    prefetch: 5
    lifecycle: {auto_start: true, stop_timeout: 1}
"""


@pytest.fixture
def pull_driver(monkeypatch):
    monkeypatch.setattr(wqnb.registry, "DRIVER_KINDS", (*wqnb.registry.DRIVER_KINDS, PullDriver.kind))
    monkeypatch.setitem(DRIVERS, PullDriver.kind, PullDriver)
    return PullDriver


def test_pull_mode_delivers_every_message_within_the_limits(pull_driver):
    async def handler(body):
        await asyncio.sleep(0.01)

    tl = wqnb.simulate(app=APP, queue="t:q", handlers={"t:f": handler}, messages=200, arrival_rate=None)
    df = tl.df
    assert (df["event"] == "ack").sum() == 200
    assert (df["busy"].dropna() <= 3).all() and (df["unsettled"].dropna() <= 8).all()
    assert df["unsettled"].max() == 8  # buffer full while every worker is busy
    first = df.groupby("msg_id", observed=True)["event"].first()
    assert set(first.astype(str)) == {"publish"}


def test_pull_mode_fetches_in_batches_and_acks_through_the_driver(pull_driver):
    seen = {}

    async def main():
        rt = wqnb.Runtime.from_yaml_string(APP)
        rt.register_function("t:f", lambda body: None, offload=False)
        await rt.start("t:d")  # the broker connection first (queues are declared on it)
        for i in range(12):  # published before the consumer starts: the first fetch is a batch
            await rt.publish("t:q", i)
        await rt.start()
        await rt.drain()
        await rt.stop()
        seen["driver"] = rt.drivers["t:d"]
        return rt.timeline

    tl = wqnb.run_virtual(main())
    driver = seen["driver"]
    assert driver.acked == 12
    assert max(driver.takes) == 5  # up to the prefetch buffer's free room at once
    assert (tl.df["event"] == "ack").sum() == 12


def test_pull_mode_stop_hands_buffered_messages_back_in_order(pull_driver):
    async def main():
        rt = wqnb.Runtime.from_yaml_string(APP)
        gate = asyncio.Event()

        async def blocked(body):
            await gate.wait()

        rt.register_function("t:f", blocked)
        await rt.start("t:d")
        for i in range(10):
            await rt.publish("t:q", f"m{i}")
        await rt.start()
        await asyncio.sleep(1)
        with pytest.raises(wqnb.StopTimeout, match="t:c"):
            await rt.stop()
        return [w.body for w in rt.drivers["t:d"].queues["t:q"].ready]

    order = wqnb.run_virtual(main())
    assert order == [f"m{i}" for i in range(10)]  # interrupted m0-m2 first, then buffered m3-m7
