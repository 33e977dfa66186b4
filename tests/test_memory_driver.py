"""``queue.driver.memory`` (DESIGN §3): FIFO, capacity, waiting publishers, requeues that
ignore capacity, shared drivers, competing consumers; directly and through the runtime."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, deque

import pytest
from _helpers import Q, app, frame, now, rows, runtime, sleep_until, virtual
from hypothesis import given, settings
from hypothesis import strategies as st

import wqnb
from wqnb.drivers.base import QueueSpec
from wqnb.drivers.memory import MemoryDriver
from wqnb.message import Message


def msg(i: int) -> Message:
    return Message(f"id-{i}", i, str(i), {"timestamp": 0})


def driver(*specs: QueueSpec) -> MemoryDriver:
    d = MemoryDriver("t:mem")
    for s in specs or (QueueSpec("q", 3),):
        d.declare_now(s)
    return d


def room(d: MemoryDriver, queue_id: str) -> bool:
    """True when a publish would not wait now."""
    q = d.local(queue_id)
    return len(q.ready) < q.capacity


def seqs(messages) -> list[int]:
    return [m.seq for m in messages]


# -- the driver alone --------------------------------------------------------------------------------
def test_fifo():
    d = driver(QueueSpec("q", 10))
    for i in range(5):
        d.publish_nowait("q", msg(i))
    assert d.depth("q") == 5
    assert seqs(d.local("q").take_nowait(2)) == [0, 1]
    assert seqs(d.local("q").take_nowait(10)) == [2, 3, 4]
    assert d.local("q").take_nowait(10) == []


def test_capacity_and_publish_nowait_raises_queue_full():
    d = driver(QueueSpec("q", 3))
    for i in range(3):
        d.publish_nowait("q", msg(i))
    assert room(d, "q") is False
    with pytest.raises(wqnb.QueueFull, match=r"^queue is full: q holds max_length=3 messages$"):
        d.publish_nowait("q", msg(3))
    assert d.depth("q") == 3
    d.local("q").take_nowait(1)
    assert room(d, "q") is True


def test_requeue_ignores_capacity_and_keeps_order():
    d = driver(QueueSpec("q", 2))
    d.publish_nowait("q", msg(0))
    d.publish_nowait("q", msg(1))
    d.local("q").requeue([msg(7), msg(8)], front=True)
    d.local("q").requeue([msg(9)], front=False)
    assert d.depth("q") == 5
    assert seqs(d.local("q").take_nowait(10)) == [7, 8, 0, 1, 9]


def test_publish_waits_while_full_exactly_until_room():
    async def main():
        d = driver(QueueSpec("q", 1))
        d.publish_nowait("q", msg(0))
        waited_at = []

        async def publisher():
            t = now()
            waited = not room(d, "q")
            await d.publish("q", [msg(1)])
            waited_at.append((t, now(), waited))

        task = asyncio.create_task(publisher())
        await asyncio.sleep(5)
        assert not task.done() and d.depth("q") == 1
        assert seqs(d.local("q").take_nowait(1)) == [0]  # room appears at t = 5
        await task
        assert waited_at == [(0.0, 5.0, True)]
        assert seqs(d.local("q").take_nowait(1)) == [1]
        t = now()
        await d.publish("q", [msg(2)])  # room: no wait
        assert now() == t

    virtual(main)


def test_waiting_publishers_go_in_order():
    async def main():
        d = driver(QueueSpec("q", 1))
        d.publish_nowait("q", msg(0))
        tasks = [asyncio.create_task(d.publish("q", [msg(i)])) for i in (1, 2, 3)]
        await asyncio.sleep(1)
        got = []
        for _ in range(4):
            got += seqs(await d.fetch("q", 10))
            await asyncio.sleep(1)
        await asyncio.gather(*tasks)
        assert got == [0, 1, 2, 3]

    virtual(main)


def test_take_waits_and_a_cancelled_taker_loses_nothing():
    async def main():
        d = driver(QueueSpec("q", 10))
        taker = asyncio.create_task(d.fetch("q", 5))
        await asyncio.sleep(1)
        assert not taker.done()
        taker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await taker
        d.publish_nowait("q", msg(0))
        second = asyncio.create_task(d.fetch("q", 5))
        assert seqs(await second) == [0]

    virtual(main)


def test_take_wakes_when_a_message_arrives_at_an_exact_time():
    async def main():
        d = driver(QueueSpec("q", 10))

        async def later():
            await asyncio.sleep(2.5)
            d.publish_nowait("q", msg(0))

        asyncio.create_task(later())
        got = await d.fetch("q", 5)
        assert (seqs(got), now()) == ([0], 2.5)

    virtual(main)


def test_several_queues_share_a_driver():
    d = driver(QueueSpec("a", 2), QueueSpec("b", 5))
    d.publish_nowait("a", msg(0))
    d.publish_nowait("a", msg(1))
    for i in range(2, 6):
        d.publish_nowait("b", msg(i))
    with pytest.raises(wqnb.QueueFull):
        d.publish_nowait("a", msg(9))
    d.publish_nowait("b", msg(6))  # b has its own capacity
    assert (d.depth("a"), d.depth("b")) == (2, 5)
    assert seqs(d.local("b").take_nowait(10)) == [2, 3, 4, 5, 6]
    assert seqs(d.local("a").take_nowait(10)) == [0, 1]


def test_info_shape_and_unknown_queue():
    d = driver(QueueSpec("q", 10))
    assert asyncio.run(d.info("q")) == {"message_count": 0, "ready": 0}
    d.publish_nowait("q", msg(0))
    d.publish_nowait("q", msg(1))
    assert asyncio.run(d.info("q")) == {"message_count": 2, "ready": 2}
    assert d.has_queue("q") and not d.has_queue("x")
    with pytest.raises(wqnb.QueueNotFound, match=r"^queue not found: x$"):
        d.publish_nowait("x", msg(0))
    with pytest.raises(wqnb.QueueNotFound, match=r"^queue not found: x$"):
        d.depth("x")


def test_redeclare_keeps_the_backlog():
    d = driver(QueueSpec("q", 2))
    d.publish_nowait("q", msg(0))
    d.declare_now(QueueSpec("q", 5))
    assert d.depth("q") == 1


class _Model:
    """A deque with a capacity: what the memory driver must behave like."""

    def __init__(self, cap: int) -> None:
        self.cap, self.q = cap, deque()


@settings(max_examples=150)
@given(
    cap=st.integers(1, 5),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("publish"), st.integers(0, 0)),
            st.tuples(st.just("take"), st.integers(1, 4)),
            st.tuples(st.just("requeue_front"), st.integers(1, 3)),
            st.tuples(st.just("requeue_tail"), st.integers(1, 3)),
        ),
        max_size=40,
    ),
)
def test_driver_matches_a_bounded_deque(cap, ops):
    d = driver(QueueSpec("q", cap))
    model = _Model(cap)
    nxt = 0
    for op, n in ops:
        if op == "publish":
            m = msg(nxt)
            nxt += 1
            if len(model.q) >= cap:
                with pytest.raises(wqnb.QueueFull):
                    d.publish_nowait("q", m)
            else:
                d.publish_nowait("q", m)
                model.q.append(m.seq)
        elif op == "take":
            got = seqs(d.local("q").take_nowait(n))
            want = [model.q.popleft() for _ in range(min(n, len(model.q)))]
            assert got == want
        else:
            ms = [msg(nxt + i) for i in range(n)]
            nxt += n
            d.local("q").requeue(ms, front=op == "requeue_front")
            if op == "requeue_front":
                model.q.extendleft(reversed([m.seq for m in ms]))
            else:
                model.q.extend(m.seq for m in ms)
        assert d.depth("q") == len(model.q)
        assert room(d, "q") == (len(model.q) < cap)


# -- through the runtime --------------------------------------------------------------------------------
def test_default_max_length_is_1000():
    async def main():
        rt = runtime(lambda body: None, max_length=None, auto_start=False)
        for i in range(1000):
            rt.publish_nowait(Q, i)
        with pytest.raises(wqnb.QueueFull, match=r"^queue is full: t:tasks holds max_length=1000 messages$"):
            rt.publish_nowait(Q, "one too many")
        assert rt.queue_info(Q)["ready"] == 1000

    virtual(main)


def test_publish_nowait_raises_and_records_nothing():
    async def main():
        rt = runtime(lambda body: None, max_length=2, auto_start=False)
        rt.publish_nowait(Q, 1)
        rt.publish_nowait(Q, 2)
        with pytest.raises(wqnb.QueueFull):
            rt.publish_nowait(Q, 3)
        return rt

    rt = virtual(main)
    assert list(rt.timeline.df["event"].astype(str)) == ["publish", "publish"]
    assert list(rt.timeline.df["depth"]) == [1, 2]


def test_message_ids_headers_and_bodies():
    seen = []

    async def handler(body, delivery):
        seen.append((body, delivery.id, dict(delivery.headers), delivery.attempt))

    async def main():
        rt = runtime(handler)
        await rt.start()
        ids = [
            await rt.publish(Q, {"id": 1, "name": "ñ"}),
            await rt.publish(Q, "plain text"),
            await rt.publish(Q, b"\x00bytes"),
            await rt.publish(Q, 42, headers={"trace": "abc"}),
            await rt.publish(Q, [1, None, True]),
        ]
        await rt.drain()
        await rt.stop()
        return ids

    ids = virtual(main)
    assert len(set(ids)) == 5
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
    assert [s[0] for s in seen] == ['{"id":1,"name":"ñ"}', "plain text", b"\x00bytes", "42", "[1,null,true]"]
    assert [s[1] for s in seen] == ids
    # virtual runs start at 2026-01-01T00:00:00Z
    assert seen[0][2] == {"timestamp": 1767225600}
    assert seen[3][2] == {"timestamp": 1767225600, "trace": "abc"}
    assert {s[3] for s in seen} == {1}


def test_publish_before_start_is_kept_and_consumed_after_start():
    got = []

    async def main():
        rt = runtime(got.append)
        await rt.publish(Q, 1)
        rt.publish_nowait(Q, 2)
        assert rt.queue_info(Q)["ready"] == 2
        await asyncio.sleep(3)
        await rt.start()
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    assert got == ["1", "2"]
    acks = rows(rt.timeline.df, "ack")
    assert list(acks["t"]) == [3.0, 3.0]


def test_publish_to_unknown_queue():
    async def main():
        rt = runtime(lambda b: None)
        with pytest.raises(wqnb.QueueNotFound, match=r"^queue not found: t:nope \(declared queues: t:tasks\)$"):
            await rt.publish("t:nope", 1)
        with pytest.raises(wqnb.QueueNotFound, match=r"^queue not found: t:nope"):
            rt.publish_nowait("t:nope", 1)
        with pytest.raises(wqnb.QueueNotFound):
            rt.queue_info("t:nope")

    virtual(main)


def test_queue_info_through_the_runtime():
    async def main():
        rt = runtime(lambda b: asyncio.sleep(10), concurrency=2, prefetch=3)
        await rt.start()
        for i in range(10):
            await rt.publish(Q, i)
        await asyncio.sleep(1)
        info = rt.queue_info(Q)
        await rt.stop()
        return info, rt.queue_info(Q)

    running, stopped = virtual(main)
    # 2 in the workers, 3 in the buffer, 5 ready
    assert running == {"message_count": 5, "ready": 5, "unsettled": 5, "consumers": 1}
    assert stopped == {"message_count": 8, "ready": 8, "unsettled": 0, "consumers": 0}


def test_two_queues_share_the_seed_driver():
    text = app().replace(
        "  - name: c\n",
        "  - {name: other, kind: queue.queue, driver: t:mem, options: {max_length: 1}}\n  - name: c\n",
    )
    got = []

    async def main():
        rt = wqnb.Runtime.from_yaml_string(text)
        rt.register_function("t:h", got.append)
        await rt.start()
        await rt.publish("t:other", "o")
        with pytest.raises(wqnb.QueueFull):
            rt.publish_nowait("t:other", "full")
        await rt.publish(Q, "a")  # its own capacity
        await rt.drain()  # t:other has no consumer: not waited for
        await rt.stop()
        return rt

    rt = virtual(main)
    assert got == ["a"]
    assert rt.queue_info("t:other")["ready"] == 1
    assert len(rt.drivers) == 1 and set(rt.drivers["t:mem"].queues) == {Q, "t:other"}


def test_competing_consumers_get_each_message_exactly_once():
    by_consumer: Counter = Counter()
    seen: list[str] = []

    async def handler(body, delivery):
        seen.append(body)
        by_consumer[delivery.consumer] += 1
        await asyncio.sleep(1)

    async def main():
        rt = runtime(handler, consumers=3, concurrency=2, prefetch=4)
        await rt.start()
        for i in range(300):
            await rt.publish(Q, i)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    assert sorted(seen, key=int) == [str(i) for i in range(300)]
    assert set(by_consumer) == {"t:c1", "t:c2", "t:c3"} and all(n > 0 for n in by_consumer.values())
    f = frame(rt.timeline.df)
    acks = f[f["event"] == "ack"]
    assert acks["m"].is_unique and len(acks) == 300
    delivers = f[f["event"] == "deliver"]
    assert delivers["m"].is_unique  # each message went to one consumer only
    # six workers in all, one second each: 300 messages take 50 s
    assert acks["t"].max() == 50.0


def test_publishers_wait_when_the_queue_is_full_exact_trace():
    """max_length 2, one worker, prefetch 1, handler 1 s, six messages published at t = 0.

    The queue holds 2 and the consumer 2 (one running, one buffered), so m0..m3 are in by
    t = 0, and m4, m5 each wait for the next ack to make room: published at t = 1 and 2."""

    async def main():
        rt = runtime(lambda b: asyncio.sleep(1), max_length=2)
        await rt.start()
        for i in range(6):
            await rt.publish(Q, i)
        published_by = now()
        await rt.drain()
        await rt.stop()
        return rt, published_by

    rt, published_by = virtual(main)
    df = rt.timeline.df
    f = frame(df)
    waits = rows(df, "publish_wait")
    pubs = rows(df, "publish").set_index("m")["t"]
    assert pubs.to_dict() == {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 2.0}
    assert published_by == 2.0
    # one of m2/m3 waited an instant at t = 0 (which depends on when the consumer takes);
    # m4 and m5 waited for room
    assert len(waits) == 3 and {4, 5} <= set(waits["m"]) and set(waits["m"]) <= {2, 3, 4, 5}
    assert (waits["depth"] == 2).all()  # each waited on a full queue
    assert waits.set_index("m")["t"].to_dict()[5] == 1.0  # m5 queued behind m4's wait
    assert (f.loc[f["event"] == "publish", "depth"] <= 2).all()
    # each wait ends at the instant a message leaves the queue (a deliver at that time)
    for m in waits["m"]:
        t = pubs[m]
        assert ((f["event"] == "deliver") & (f["t"] == t)).any()
        assert t >= waits.set_index("m")["t"][m]
    assert list(rows(df, "ack")["t"]) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_every_message_is_published_before_it_is_delivered():
    """A message's ``publish`` row comes before its first ``deliver`` (DESIGN §5: the
    timeline is the order of events; views compute queue waits from it)."""

    async def main():
        rt = runtime(lambda b: asyncio.sleep(1), concurrency=2, prefetch=2, max_length=3)
        await rt.start()
        for i in range(8):
            await rt.publish(Q, i)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    f = frame(rt.timeline.df)
    first_publish = f[f["event"] == "publish"].groupby("m").apply(lambda g: g.index[0])
    first_deliver = f[f["event"] == "deliver"].groupby("m").apply(lambda g: g.index[0])
    assert (first_publish < first_deliver).all(), f.head(12).to_string()
    m = rt.timeline.messages()
    assert (m["queue_wait"] >= 0).all()


def test_sleep_until_helper_is_exact():
    async def main():
        await sleep_until(2.5)
        return now()

    assert virtual(main) == 2.5
