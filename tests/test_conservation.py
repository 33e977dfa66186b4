"""Nothing is lost, nothing is acked twice (DESIGN §3, §5), over random workloads.

Hypothesis draws the app (concurrency, prefetch, capacity, requeue delay, dead letters,
handler timeout, stop timeout), each message's fate per attempt (ok, raise, manual nack,
manual ack then raise, hang past the handler timeout) and its service time, arrival
gaps, and stops with restarts in the middle of the run, possibly ending on a stop with
messages still queued. Everything runs on virtual time, so each example is exact and
takes milliseconds.

Checked after every run:

* published = acked + dead-lettered + still queued (as sets, disjoint);
* no message acked twice, none dead-lettered twice, no handler completed a message twice;
* every message's last event is ``ack``, ``dead_letter``, ``requeue`` or ``publish``;
* every ``nack`` is followed by that message's ``requeue`` or ``dead_letter``;
* ``busy ≤ concurrency`` and ``unsettled ≤ prefetch + concurrency`` on every row.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from _helpers import (
    DEAD,
    C,
    Q,
    check_gauges,
    check_nack_followed,
    frame,
    history,
    runtime,
    sleep_until,
    virtual,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wqnb

FATES = ("ok", "raise", "nack", "ack_raise", "hang")
HANDLER_TIMEOUT = 2.0


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 25))
    return {
        "concurrency": draw(st.integers(1, 4)),
        "prefetch": draw(st.integers(1, 5)),
        "max_length": draw(st.integers(1, 8)),
        "requeue_delay": draw(st.sampled_from([None, 0.5, 3])),
        "max_attempts": draw(st.sampled_from([None, 1, 2, 3])),
        "stop_timeout": draw(st.sampled_from([0.5, 1, 10])),
        "timeout": draw(st.booleans()),
        # per message: the fate of attempts 1, 2, 3 (attempt 4 on is always ok) and a service time
        "fates": draw(st.lists(st.lists(st.sampled_from(FATES), min_size=3, max_size=3), min_size=n, max_size=n)),
        "service": draw(st.lists(st.sampled_from([0.0, 0.25, 1.0, 1.5]), min_size=n, max_size=n)),
        "gaps": draw(st.lists(st.sampled_from([0.0, 0.1, 0.7]), min_size=n, max_size=n)),
        "stops": sorted(draw(st.lists(st.floats(0.05, 12, allow_nan=False), max_size=3))),
        "restart_after": draw(st.sampled_from([0.0, 0.3, 2.0])),
        "end_with_stop": draw(st.booleans()),
    }


def run(sc: dict) -> tuple[wqnb.Runtime, Counter, int]:
    completed: Counter = Counter()  # handler returned normally (or acked) per message
    timeout = HANDLER_TIMEOUT if sc["timeout"] else None
    fates = [[f if (f != "hang" or timeout) else "raise" for f in fs] for fs in sc["fates"]]

    async def handler(body, d):
        i = int(body)
        fate = fates[i][d.attempt - 1] if d.attempt <= 3 else "ok"
        await asyncio.sleep(sc["service"][i])
        if fate == "ok":
            completed[i] += 1
            return
        if fate == "raise":
            raise RuntimeError(f"fail {i}/{d.attempt}")
        if fate == "nack":
            await d.nack(f"nack {i}")
            return
        if fate == "ack_raise":
            await d.ack()
            completed[i] += 1
            raise RuntimeError("after ack")
        await asyncio.sleep(1000)  # hang: the handler timeout ends it

    async def main():
        rt = runtime(
            handler,
            concurrency=sc["concurrency"],
            prefetch=sc["prefetch"],
            max_length=sc["max_length"],
            requeue_delay=sc["requeue_delay"],
            max_attempts=sc["max_attempts"],
            stop_timeout=sc["stop_timeout"],
            timeout=timeout,
        )
        await rt.start()

        async def publisher():
            for i, gap in enumerate(sc["gaps"]):
                await asyncio.sleep(gap)
                await rt.publish(Q, i)

        pub = asyncio.create_task(publisher())
        for t in sc["stops"]:
            await sleep_until(t)
            try:
                await rt.stop()
            except wqnb.StopTimeout:
                pass
            await asyncio.sleep(sc["restart_after"])
            await rt.start()
        await pub  # every message gets published
        if sc["end_with_stop"]:
            await asyncio.sleep(0.5)
        else:
            await asyncio.wait_for(rt.drain(), 10_000)
        try:
            await rt.stop()
        except wqnb.StopTimeout:
            pass
        return rt

    rt = virtual(main)
    return rt, completed, len(sc["fates"])


def check(rt: wqnb.Runtime, completed: Counter, n: int, drained: bool, concurrency: int, prefetch: int) -> None:
    df = rt.timeline.df
    f = frame(df)
    on_tasks = f[f["queue"] == Q]
    published = set(on_tasks.loc[on_tasks["event"] == "publish", "msg_id"])
    assert len(published) == n
    assert on_tasks.loc[on_tasks["event"] == "publish", "msg_id"].is_unique

    acks = f.loc[f["event"] == "ack", "msg_id"]
    assert acks.is_unique, "a message was acked twice"
    acked = set(acks)
    dls = f.loc[f["event"] == "dead_letter", "msg_id"]
    assert dls.is_unique, "a message was dead-lettered twice"
    dead = set(dls)
    assert not (acked & dead)
    assert all(v == 1 for v in completed.values()), f"handled twice: {completed}"
    assert len(completed) == len(acked)

    queued = published - acked - dead
    assert rt.queue_info(Q)["ready"] == len(queued)
    assert rt.queue_info(Q)["unsettled"] == 0
    if DEAD in rt.routes:
        assert rt.queue_info(DEAD)["ready"] == len(dead)
    else:
        assert not dead
    assert len(published) == len(acked) + len(dead) + len(queued)
    if drained:
        assert not queued

    for mid, evs in history(df).items():
        last = evs[-1]
        assert last in ("ack", "dead_letter", "requeue", "publish"), (mid, evs)
        if last in ("requeue", "publish"):
            assert mid in queued, (mid, evs)
    check_nack_followed(df)
    check_gauges(df, {C: (concurrency, prefetch)})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_nothing_lost_nothing_acked_twice(sc):
    rt, completed, n = run(sc)
    check(rt, completed, n, not sc["end_with_stop"], sc["concurrency"], sc["prefetch"])


def test_a_hand_picked_scenario_with_every_fate_and_two_stops():
    sc = {
        "concurrency": 2, "prefetch": 3, "max_length": 4, "requeue_delay": 0.5, "max_attempts": 3,
        "stop_timeout": 0.5, "timeout": True,
        "fates": [["ok"] * 3, ["raise"] * 3, ["nack", "ok", "ok"], ["ack_raise"] * 3, ["hang", "hang", "ok"],
                  ["raise", "nack", "hang"], ["ok"] * 3, ["raise", "ok", "ok"]] * 2,
        "service": [1.0, 0.25, 1.5, 0.0] * 4,
        "gaps": [0.0, 0.1, 0.7, 0.0] * 4,
        "stops": [0.9, 3.3],
        "restart_after": 0.3,
        "end_with_stop": False,
    }
    rt, completed, n = run(sc)
    check(rt, completed, n, True, 2, 3)
    c = Counter(rt.timeline.df["event"].astype(str))
    # messages 1, 5 (and 9, 13) fail three times and go to the dead-letter queue
    assert c["dead_letter"] == 4
    assert c["ack"] == 12
    assert c["publish"] == 16
