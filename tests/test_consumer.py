"""The consumer (DESIGN §3): prefetch and workers, backpressure, settle, requeue, dead
letters, handler timeouts and graceful stop; all on virtual time, with exact timestamps."""

from __future__ import annotations

import asyncio
import threading

import pytest
from _helpers import (
    DEAD,
    C,
    Q,
    check_gauges,
    check_nack_followed,
    event_counts,
    frame,
    history,
    now,
    rows,
    runtime,
    sleep_until,
    virtual,
)

import wqnb


async def publish_all(rt: wqnb.Runtime, n: int, start: int = 0) -> list[str]:
    return [await rt.publish(Q, i) for i in range(start, start + n)]


# -- prefetch, workers, backpressure ---------------------------------------------------------------------
def test_both_limits_hold_on_every_row_and_are_reached_under_a_slow_handler():
    async def main():
        rt = runtime(lambda b: asyncio.sleep(1), concurrency=3, prefetch=5)
        await rt.start()
        await publish_all(rt, 50)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    df = rt.timeline.df
    check_gauges(df, {C: (3, 5)})
    f = frame(df)
    mine = f[f["consumer"] == C]
    assert mine["busy"].max() == 3
    assert mine["buffered"].max() == 5
    assert mine["unsettled"].max() == 8
    # the backpressure state itself: buffer full while every worker is busy
    assert ((mine["buffered"] == 5) & (mine["busy"] == 3)).any()
    # no manual settles here: what is unsettled is exactly what is held
    assert (mine["unsettled"] == mine["buffered"] + mine["busy"]).all()
    # 3 workers, 1 s each: 50 messages end at t = 17 (ceil(50 / 3))
    acks = rows(df, "ack")
    assert len(acks) == 50 and acks["t"].max() == 17.0
    assert acks.groupby("t").size().to_dict() == {float(t): 3 for t in range(1, 17)} | {17.0: 2}


@pytest.mark.parametrize("concurrency,prefetch", [(1, 1), (4, 1), (1, 10), (7, 3)])
def test_limits_for_other_shapes(concurrency, prefetch):
    async def main():
        rt = runtime(lambda b: asyncio.sleep(0.5), concurrency=concurrency, prefetch=prefetch, max_length=5)
        await rt.start()
        await publish_all(rt, 40)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    check_gauges(rt.timeline.df, {C: (concurrency, prefetch)})
    mine = frame(rt.timeline.df).query("consumer == @C")
    assert mine["busy"].max() == concurrency
    assert mine["buffered"].max() == prefetch
    assert mine["unsettled"].max() == concurrency + prefetch
    s = rt.timeline.summary()
    assert (s["acked"], s["max_busy"], s["max_buffered"]) == (40, concurrency, prefetch)


def test_workers_start_the_buffer_in_fifo_order():
    started = []

    async def handler(body):
        started.append(int(body))
        await asyncio.sleep(1)

    async def main():
        rt = runtime(handler, concurrency=2, prefetch=3)
        await rt.start()
        await publish_all(rt, 12)
        await rt.drain()
        await rt.stop()

    virtual(main)
    assert started == list(range(12))


def test_auto_start_false_consumer_waits_for_an_explicit_start():
    got = []

    async def main():
        rt = runtime(got.append, auto_start=False)
        await rt.start()
        await publish_all(rt, 3)
        await asyncio.sleep(5)
        assert got == [] and rt.queue_info(Q)["ready"] == 3
        await rt.start(C)
        await rt.drain()
        await rt.stop()
        with pytest.raises(wqnb.ConfigError, match=r"^no such entry: t:nope$"):
            await rt.start("t:nope")

    virtual(main)
    assert got == ["0", "1", "2"]


# -- handlers ------------------------------------------------------------------------------------------------
def test_handler_gets_the_body_as_json_text_and_may_ask_for_the_delivery():
    seen = []

    def sync_one_arg(body):
        seen.append(("sync", body))

    async def main():
        rt = runtime(sync_one_arg)
        await rt.start()
        await rt.publish(Q, {"id": 1})
        await rt.drain()
        await rt.stop()

    virtual(main)
    assert seen == [("sync", '{"id":1}')]

    async def with_delivery(body, delivery):
        seen.append((body, delivery.id, delivery.attempt, delivery.queue, delivery.consumer, delivery.header("k")))

    async def main2():
        rt = runtime(with_delivery)
        await rt.start()
        mid = await rt.publish(Q, "x", headers={"k": "v"})
        await rt.drain()
        await rt.stop()
        return mid

    mid = virtual(main2)
    assert seen[-1] == ("x", mid, 1, Q, C, "v")


def test_sync_handler_on_real_time_does_not_freeze_the_loop():
    """A blocking sync handler runs off the loop: here it blocks until a coroutine on the
    loop lets it go, which could never happen if it ran on the loop itself."""
    release = threading.Event()
    threads = []

    def blocking(body):
        threads.append(threading.current_thread())
        assert release.wait(10), "the loop was frozen"

    async def main():
        rt = runtime(blocking)
        await rt.start()
        await rt.publish(Q, 1)
        while not threads:  # the handler has started (in its thread)
            await asyncio.sleep(0)
        release.set()
        await rt.drain(timeout=10)
        await rt.stop()
        return threading.current_thread(), rt

    loop_thread, rt = asyncio.run(main())
    assert threads[0] is not loop_thread
    assert event_counts(rt.timeline.df)["ack"] == 1


def test_error_column_holds_str_of_the_exception_and_nack_is_followed_by_requeue():
    async def handler(body, d):
        if d.attempt == 1:
            raise ValueError(f"boom {body}")

    async def main():
        rt = runtime(handler)
        await rt.start()
        await publish_all(rt, 2)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    df = rt.timeline.df
    nacks = rows(df, "nack")
    assert list(nacks["error"]) == ["boom 0", "boom 1"]
    assert list(nacks["attempt"]) == [1, 1]
    requeues = rows(df, "requeue")
    assert list(requeues["attempt"]) == [2, 2]  # a requeue row carries the next delivery
    acks = rows(df, "ack")
    assert list(acks["attempt"]) == [2, 2]
    check_nack_followed(df)
    assert rows(df, "ack")["error"].isna().all()


def test_nack_requeues_at_the_tail():
    """Wippy's NackRedeliveryAfterPublishingSeveralMessages: m1 nacked, then order m1 m2 m3 m1."""
    order = []

    async def handler(body, d):
        order.append((int(body), d.attempt))
        if body == "0" and d.attempt == 1:
            raise RuntimeError("again")

    async def main():
        rt = runtime(handler, concurrency=1, prefetch=1)
        await publish_all(rt, 3)
        await rt.start()
        await rt.drain()
        await rt.stop()
        return rt

    virtual(main)
    assert order == [(0, 1), (1, 1), (2, 1), (0, 2)]


def test_nack_to_a_full_queue_still_requeues():
    async def handler(body, d):
        await asyncio.sleep(1)
        if d.attempt == 1:
            raise RuntimeError("fail once")

    async def main():
        rt = runtime(handler, concurrency=1, prefetch=1, max_length=1)
        await rt.start()
        await publish_all(rt, 5)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    df = rt.timeline.df
    f = frame(df)
    assert (f.loc[f["event"] == "requeue", "depth"] >= 1).all()
    assert f.loc[f["event"] == "requeue", "depth"].max() == 2  # over max_length: capacity bounds publishers only
    assert event_counts(df)["ack"] == 5 and rows(df, "ack")["m"].is_unique


def test_requeue_delay_is_exact():
    async def handler(body, d):
        await asyncio.sleep(1)
        if d.attempt < 3:
            raise RuntimeError("later")

    async def main():
        rt = runtime(handler, requeue_delay="200ms")
        await rt.start()
        await rt.publish(Q, 1)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    f = frame(rt.timeline.df)
    assert list(zip(f["event"], f["attempt"], strict=True)) == [
        ("publish", 1), ("deliver", 1), ("start", 1), ("nack", 1),
        ("requeue", 2), ("deliver", 2), ("start", 2), ("nack", 2),
        ("requeue", 3), ("deliver", 3), ("start", 3), ("ack", 3),
    ]
    # exact: the loop's clock adds the same floats (1.2 + 1.0 + 0.2 is 2.4000000000000004)
    assert list(f["t"]) == [0.0, 0.0, 0.0, 1.0, 1.2, 1.2, 1.2, 2.2, 1.2 + 1.0 + 0.2, 1.2 + 1.0 + 0.2,
                            1.2 + 1.0 + 0.2, 1.2 + 1.0 + 0.2 + 1.0]


def test_requeue_delay_does_not_block_the_worker():
    async def handler(body, d):
        if body == "0" and d.attempt == 1:
            raise RuntimeError("later")
        await asyncio.sleep(1)

    async def main():
        rt = runtime(handler, requeue_delay=5)
        await rt.start()
        await publish_all(rt, 3)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    acks = rows(rt.timeline.df, "ack").set_index("m")["t"].to_dict()
    # m0 fails at t=0, comes back at t=5; m1 and m2 run meanwhile (t=0..1, 1..2)
    assert acks == {1: 1.0, 2: 2.0, 0: 6.0}


# -- dead letters ----------------------------------------------------------------------------------------------
def test_dead_letter_after_max_attempts_deliveries():
    dead_seen = []

    async def always_fails(body):
        await asyncio.sleep(1)
        raise RuntimeError("nope")

    async def dead_handler(body, d):
        dead_seen.append((body, dict(d.headers), d.attempt))

    async def main():
        rt = runtime(always_fails, max_attempts=3, dead_consumer=True)
        rt.register_function("t:dead_h", dead_handler)
        await rt.start()
        await rt.publish(Q, {"id": 7}, headers={"trace": "x"})
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    df = rt.timeline.df
    f = frame(df)
    on_tasks = f[f["queue"] == Q]
    assert list(on_tasks["event"]) == [
        "publish", "deliver", "start", "nack", "requeue",
        "deliver", "start", "nack", "requeue",
        "deliver", "start", "nack",
    ]
    assert list(on_tasks.loc[on_tasks["event"] == "nack", "attempt"]) == [1, 2, 3]
    assert list(on_tasks.loc[on_tasks["event"] == "nack", "t"]) == [1.0, 2.0, 3.0]
    dl = rows(df, "dead_letter")
    assert len(dl) == 1
    assert (dl.loc[0, "queue"], dl.loc[0, "t"], dl.loc[0, "attempt"], dl.loc[0, "consumer"]) == (DEAD, 3.0, 1, C)
    check_nack_followed(df)
    assert history(df)[dl.loc[0, "msg_id"]][-1] == "ack"  # the dead-letter consumer took it
    body, headers, attempt = dead_seen[0]
    assert body == '{"id":7}' and attempt == 1
    assert headers["x_original_queue"] == Q
    assert headers["attempts"] == 3
    assert headers["trace"] == "x" and headers["timestamp"] == 1767225600
    assert headers["x_dead_letter_reason"] == "nope"


def test_max_attempts_1_dead_letters_on_the_first_nack_and_drain_ignores_an_unread_dead_queue():
    async def main():
        rt = runtime(lambda b: 1 / 0, max_attempts=1)
        await rt.start()
        await publish_all(rt, 4)
        await rt.drain()  # t:dead has no consumer: not waited for
        await rt.stop()
        return rt

    rt = virtual(main)
    df = rt.timeline.df
    c = event_counts(df)
    assert (c["nack"], c["dead_letter"], c["requeue"], c["ack"]) == (4, 4, 0, 0)
    assert rt.queue_info(DEAD)["ready"] == 4
    assert set(rows(df, "nack")["error"]) == {"division by zero"}
    assert list(rows(df, "dead_letter")["depth"]) == [1, 2, 3, 4]


# -- handler timeout --------------------------------------------------------------------------------------------
def test_handler_timeout_nacks_with_a_clear_error():
    async def slow(body, d):
        await asyncio.sleep(10 if d.attempt == 1 else 0.1)

    async def main():
        rt = runtime(slow, timeout="500ms")
        await rt.start()
        await rt.publish(Q, 1)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    df = rt.timeline.df
    nack = rows(df, "nack")
    assert list(nack["t"]) == [0.5]
    assert list(nack["error"]) == ["handler timed out after 500ms"]
    assert list(rows(df, "requeue")["t"]) == [0.5]
    assert list(rows(df, "ack")["t"]) == [0.6]
    check_nack_followed(df)


def test_handler_timeout_then_dead_letter_is_exact():
    async def main():
        rt = runtime(lambda b: asyncio.sleep(100), timeout=2, max_attempts=2)
        await rt.start()
        await rt.publish(Q, 1)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    df = rt.timeline.df
    assert list(rows(df, "nack")["t"]) == [2.0, 4.0]
    assert list(rows(df, "dead_letter")["t"]) == [4.0]
    assert set(rows(df, "nack")["error"]) == {"handler timed out after 2s"}


# -- manual settle ------------------------------------------------------------------------------------------------
def test_manual_ack_is_single_shot_and_wins_over_a_later_exception():
    # No pytest.raises in a handler: its failure is a BaseException that would escape the
    # consumer's ``except Exception`` and kill the worker. Record, then assert outside.
    outcomes = []

    async def handler(body, d):
        await d.ack()
        try:
            await d.ack()
        except wqnb.AlreadySettled as e:
            outcomes.append(("ack refused", str(e)))
        try:
            await d.nack("too late")
        except wqnb.AlreadySettled:
            outcomes.append("nack refused")
        outcomes.append("ok")
        raise RuntimeError("after ack: ignored")

    async def main():
        rt = runtime(handler)
        await rt.start()
        await rt.publish(Q, 1)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    c = event_counts(rt.timeline.df)
    assert outcomes == [("ack refused", "queue.Message already settled"), "nack refused", "ok"]
    assert (c["ack"], c["nack"], c["requeue"]) == (1, 0, 0)


def test_manual_nack_wins_over_a_normal_return_and_its_reason_is_recorded():
    seen = []  # recorded in the handler, asserted outside (no pytest.raises in a handler)

    async def handler(body, d):
        if d.attempt == 1:
            await d.nack("not yet")
            try:
                await d.ack()
            except wqnb.AlreadySettled:
                seen.append("refused")
        return "returned normally"

    async def main():
        rt = runtime(handler)
        await rt.start()
        await rt.publish(Q, 1)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    df = rt.timeline.df
    assert list(frame(df)["event"]) == ["publish", "deliver", "start", "nack", "requeue", "deliver", "start", "ack"]
    assert list(rows(df, "nack")["error"]) == ["not yet"]
    assert seen == ["refused"]


def test_early_ack_settles_at_its_own_time_and_frees_unsettled():
    async def handler(body, d):
        await asyncio.sleep(1)
        await d.ack()
        await asyncio.sleep(2)

    async def main():
        rt = runtime(handler)
        await rt.start()
        await rt.publish(Q, 1)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    ack = rows(rt.timeline.df, "ack")
    assert list(ack["t"]) == [1.0]
    assert (ack.loc[0, "busy"], ack.loc[0, "unsettled"]) == (1, 0)


def test_delivery_is_released_after_the_handler_returns():
    kept = []

    async def handler(body, d):
        kept.append(d)

    async def main():
        rt = runtime(handler)
        await rt.start()
        await rt.publish(Q, 1)
        await rt.drain()
        await rt.stop()

    virtual(main)
    d = kept[0]
    for touch in (lambda: d.id, lambda: d.headers, lambda: d.body, lambda: d.attempt):
        with pytest.raises(wqnb.MessageReleased, match=r"^queue.Message released$"):
            touch()
    with pytest.raises(wqnb.MessageReleased):
        asyncio.run(d.ack())
    assert repr(d) == "queue.Message{released}"


# -- graceful stop -------------------------------------------------------------------------------------------------
def test_stop_returns_buffered_messages_to_the_head_in_order():
    started = []

    async def handler(body):
        started.append(int(body))
        await asyncio.sleep(1)

    async def main():
        rt = runtime(handler, concurrency=1, prefetch=5)
        await rt.start()
        await publish_all(rt, 10)
        await sleep_until(0.5)
        await rt.stop()  # m0 finishes at t = 1 (within stop_timeout)
        stopped_at = now()
        ready = rt.queue_info(Q)["ready"]
        await rt.start()
        await rt.drain()
        await rt.stop()
        return rt, stopped_at, ready

    rt, stopped_at, ready = virtual(main)
    assert stopped_at == 1.0 and ready == 9
    assert started == list(range(10))  # after restart m1..m9, in publish order
    df = rt.timeline.df
    returned = rows(df, "requeue")
    assert list(returned["m"]) == [1, 2, 3, 4, 5]
    assert set(returned["t"]) == {0.5}
    assert returned["worker"].isna().all()
    # each row has the gauges after its own event: the buffer empties one message at a time
    assert list(returned["buffered"]) == [4, 3, 2, 1, 0]
    assert list(returned["unsettled"]) == [5, 4, 3, 2, 1]  # (m0 still running)
    assert list(returned["attempt"]) == [1] * 5  # never started: the next delivery is still the first
    assert list(returned["depth"]) == [5, 6, 7, 8, 9]
    acks = rows(df, "ack")
    assert acks["m"].is_unique and len(acks) == 10
    assert rows(df, "ack", m=0)["t"].tolist() == [1.0]


def test_stop_timeout_cancels_requeues_at_the_head_and_names_the_consumer():
    async def handler(body):
        await asyncio.sleep(100 if body == "0" else 1)

    async def main():
        rt = runtime(handler, concurrency=1, prefetch=2, stop_timeout="2s")
        await rt.start()
        await publish_all(rt, 4)
        await sleep_until(1)
        with pytest.raises(
            wqnb.StopTimeout,
            match=r"^consumer stop timed out: t:c \(stop_timeout 2s\); the interrupted messages were requeued",
        ) as ei:
            await rt.stop()
        assert ei.value.consumers == [C] and isinstance(ei.value, TimeoutError)
        stopped_at = now()
        order = [m.body for m in rt.drivers["t:mem"].queues[Q].ready]
        return rt, stopped_at, order

    rt, stopped_at, order = virtual(main)
    assert stopped_at == 3.0
    assert order == ["0", "1", "2", "3"]  # the interrupted message first, then the buffered ones
    df = rt.timeline.df
    f = frame(df)
    interrupted = f[(f["event"] == "requeue") & (f["m"] == 0)]
    assert list(interrupted["t"]) == [3.0] and list(interrupted["worker"]) == [0]
    assert list(interrupted["attempt"]) == [2]
    assert history(df)[f.loc[f["m"] == 0, "msg_id"].iloc[0]] == ["publish", "deliver", "start", "requeue"]
    last = f.groupby("m")["event"].last()
    assert set(last) == {"requeue", "publish"}


def test_stop_timeout_with_several_interrupted_handlers_keeps_their_order():
    async def main():
        rt = runtime(lambda b: asyncio.sleep(100), concurrency=3, prefetch=2, stop_timeout=1)
        await rt.start()
        await publish_all(rt, 8)
        await sleep_until(1)
        with pytest.raises(wqnb.StopTimeout):
            await rt.stop()
        return [m.body for m in rt.drivers["t:mem"].queues[Q].ready]

    assert virtual(main) == [str(i) for i in range(8)]


def test_restart_after_stop_timeout_delivers_everything_once():
    calls = []

    async def handler(body, d):
        calls.append((int(body), d.attempt))
        await asyncio.sleep(5 if d.attempt == 1 and body in ("0", "1") else 1)

    async def main():
        rt = runtime(handler, concurrency=2, prefetch=3, stop_timeout=1)
        await rt.start()
        await publish_all(rt, 10)
        await sleep_until(0.5)
        with pytest.raises(wqnb.StopTimeout):
            await rt.stop()
        assert now() == 1.5
        await rt.start()
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    df = rt.timeline.df
    acks = rows(df, "ack")
    assert sorted(acks["m"]) == list(range(10))
    assert dict(zip(acks["m"], acks["attempt"], strict=True))[0] == 2
    assert {(m, a) for m, a in calls if m in (0, 1)} == {(0, 1), (1, 1), (0, 2), (1, 2)}
    check_gauges(df, {C: (2, 3)})


def test_stop_flushes_delayed_requeues_and_nothing_is_lost():
    async def handler(body, d):
        if d.attempt == 1:
            raise RuntimeError("later")

    async def main():
        rt = runtime(handler, concurrency=2, prefetch=2, requeue_delay=60)
        await rt.start()
        await publish_all(rt, 3)
        await sleep_until(1)
        assert rt.queue_info(Q)["ready"] == 0
        await rt.stop()
        assert now() == 1.0
        assert rt.queue_info(Q)["ready"] == 3
        await rt.start()
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    df = rt.timeline.df
    req = rows(df, "requeue")
    assert list(req["t"]) == [1.0, 1.0, 1.0] and list(req["attempt"]) == [2, 2, 2]
    assert sorted(rows(df, "ack")["m"]) == [0, 1, 2]
    check_nack_followed(df)


def test_stop_is_idempotent_and_an_idle_stop_takes_no_time():
    async def main():
        rt = runtime(lambda b: None)
        await rt.start()
        await asyncio.sleep(1)
        await rt.stop()
        await rt.stop()
        assert rt.state == "stopped" and now() == 1.0

    virtual(main)


def test_drain_waits_for_delayed_requeues():
    async def handler(body, d):
        if d.attempt == 1:
            raise RuntimeError("later")

    async def main():
        rt = runtime(handler, requeue_delay=3)
        await rt.start()
        await rt.publish(Q, 1)
        await rt.drain()
        t = now()
        await rt.stop()
        return t, rt

    t, rt = virtual(main)
    assert t == 3.0
    assert event_counts(rt.timeline.df)["ack"] == 1
