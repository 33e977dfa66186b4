"""The shared publish_nowait outbox (wqnb/drivers/_outbox.py), on virtual time: batches
of one queue, order kept across failed sends, QueueFull, the bug path, close's count."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests._helpers import now, virtual
from wqnb.drivers._outbox import BATCH, Outbox
from wqnb.errors import PublishError, QueueFull

log = logging.getLogger("test.outbox")


class Broker:
    """A ``send`` that records batches and fails while ``down``."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.down = False
        self.failures = 0

    async def send(self, queue_id: str, items: list[int]) -> None:
        await asyncio.sleep(0.001)
        if self.down:
            self.failures += 1
            raise PublishError("unreachable")
        self.batches.append((queue_id, list(items)))


async def until(cond, what: str, limit: float = 60.0) -> None:
    deadline = now() + limit
    while not cond():
        assert now() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_batches_consecutive_items_of_one_queue_up_to_the_limit() -> None:
    async def main() -> None:
        b = Broker()
        ob: Outbox[int] = Outbox("d", 10_000, b.send, log)
        for i in range(BATCH + 10):
            ob.put("a", i)
        ob.put("b", -1)
        ob.put("a", -2)
        assert (ob.pending("a"), ob.pending("b"), len(ob)) == (BATCH + 11, 1, BATCH + 12)
        ob.start()
        assert await ob.close(5.0) == 0
        assert [(q, len(x)) for q, x in b.batches] == [("a", BATCH), ("a", 10), ("b", 1), ("a", 1)]
        assert [i for q, x in b.batches if q == "a" for i in x] == [*range(BATCH + 10), -2]
        assert ob.pending("a") == 0
    virtual(main)


def test_a_failed_send_keeps_the_batch_and_its_order_until_the_broker_is_back() -> None:
    async def main() -> None:
        b = Broker()
        b.down = True
        ob: Outbox[int] = Outbox("d", 100, b.send, log)
        ob.start()
        for i in range(5):
            ob.put("a", i)
        await until(lambda: b.failures >= 3, "three failed sends")
        ob.put("a", 5)
        assert ob.pending("a") == 6
        b.down = False
        await until(lambda: ob.pending("a") == 0, "the outbox to flush")
        assert [i for _, x in b.batches for i in x] == list(range(6))
        assert await ob.close(1.0) == 0
    virtual(main)


def test_full_outbox_raises_queue_full_and_close_counts_what_it_could_not_send() -> None:
    async def main() -> None:
        b = Broker()
        b.down = True
        ob: Outbox[int] = Outbox("d", 3, b.send, log, target="redis://h:1/0")
        ob.start()
        for i in range(3):
            ob.put("a", i)
        await until(lambda: b.failures >= 1, "a failed send")  # the batch of 3 is in flight
        for i in range(3):
            ob.put("a", 10 + i)
        with pytest.raises(QueueFull, match=r"outbox of 3 messages waiting for redis://h:1/0"):
            ob.put("a", 99)
        t0 = now()
        assert await ob.close(2.0) == 6
        assert now() - t0 == pytest.approx(2.0, abs=0.1)
        assert (len(ob), ob.pending("a")) == (0, 0)
    virtual(main)


def test_a_bug_in_send_stops_the_flusher_and_every_later_put_says_so() -> None:
    async def main() -> None:
        async def send(queue_id: str, items: list[int]) -> None:
            raise KeyError("no such queue state")

        ob: Outbox[int] = Outbox("d", 10, send, log)
        ob.start()
        ob.put("a", 1)
        await until(lambda: ob.error is not None, "the flusher to fail")
        with pytest.raises(PublishError, match="outbox stopped"):
            ob.put("a", 2)
        assert await ob.close(0.1) == 1
    virtual(main)


def test_cancel_and_wait_stops_a_task_that_swallows_its_first_cancellation() -> None:
    """What Python 3.11 does to a cancel that meets an expired asyncio.timeout: the task
    sees TimeoutError, a retry loop catches it and goes on."""
    from wqnb.drivers._tasks import cancel_and_wait

    async def main() -> None:
        swallowed = 0

        async def retry_loop() -> None:
            nonlocal swallowed
            while True:
                try:
                    await asyncio.sleep(1)
                except asyncio.CancelledError:
                    if swallowed:
                        raise
                    swallowed += 1  # as if it had come out as a connection error

        t = asyncio.get_running_loop().create_task(retry_loop())
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_and_wait([t]), 5)
        assert t.cancelled() and swallowed == 1
    virtual(main)
