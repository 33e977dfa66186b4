"""The public API (DESIGN §4): the seed app end to end, on virtual and real time, from a
running loop as a notebook cell does, and through the blocking ``rt.sync()`` facade."""

from __future__ import annotations

import asyncio
import json

import pytest
from _helpers import SEED_APP, C, Q, event_counts, frame, history, now, rows, runtime, virtual

import wqnb

SEED_Q = "app.queue:tasks"


def seed_runtime(seen: list) -> wqnb.Runtime:
    rt = wqnb.Runtime.from_yaml_string(SEED_APP)

    async def task_handler(body):  # stands in for the seed's Lua handler
        data = json.loads(body)  # json.decode(body)
        seen.append(data["id"])
        await asyncio.sleep(0.05)
        return {"ok": True}

    rt.register_function("app.queue:task_handler", task_handler)
    return rt


def check_seed_run(rt: wqnb.Runtime, ids: list[str], n: int) -> None:
    df = rt.timeline.df
    c = event_counts(df)
    assert (c["publish"], c["deliver"], c["start"], c["ack"], c["nack"]) == (n, n, n, n, 0)
    h = history(df)
    assert set(h) == set(ids)
    assert all(evs == ["publish", "deliver", "start", "ack"] for evs in h.values())
    f = frame(df)
    mine = f[f["consumer"] == "app.queue:task_consumer"]
    assert mine["busy"].max() <= 4 and mine["unsettled"].max() <= 24


def test_seed_app_publish_to_ack_on_virtual_time():
    seen: list = []

    async def main():
        rt = seed_runtime(seen)
        await rt.start()
        ids = [await rt.publish(SEED_Q, {"id": f"task-{i}", "action": "process"}) for i in range(30)]
        await rt.drain()
        await rt.stop()
        return rt, ids

    rt, ids = virtual(main)
    assert sorted(seen) == sorted(f"task-{i}" for i in range(30))
    check_seed_run(rt, ids, 30)
    s = rt.timeline.summary()
    # concurrency 4, 0.05 s each: 30 messages need 8 rounds
    assert s["max_busy"] == 4 and s["max_buffered"] == 20
    assert rows(rt.timeline.df, "ack")["t"].max() == pytest.approx(0.4, abs=1e-12)


def test_seed_app_inside_asyncio_run_on_real_time():
    """The async API from inside a running loop: what a notebook cell's top-level await does."""
    seen: list = []

    async def cell():
        rt = seed_runtime(seen)
        await rt.start()
        ids = [await rt.publish(SEED_Q, {"id": i}) for i in range(10)]
        await rt.drain(timeout=30)
        assert rt.state == "running"  # keeps running between cells until stopped
        await rt.stop()
        return rt, ids

    rt, ids = asyncio.run(cell())
    assert sorted(seen) == list(range(10))
    check_seed_run(rt, ids, 10)


def test_runtime_survives_across_cells_on_one_loop():
    async def session():
        rt = runtime(lambda b: None)
        await rt.start()  # cell 1
        await rt.publish(Q, 1)  # cell 2
        await asyncio.sleep(0)
        await rt.drain(timeout=10)  # cell 3
        rt.publish_nowait(Q, 2)  # a widget callback
        await rt.drain(timeout=10)
        await rt.stop()
        return rt

    rt = asyncio.run(session())
    assert event_counts(rt.timeline.df)["ack"] == 2


def test_async_context_manager():
    async def main():
        async with runtime(lambda b: None) as rt:
            await rt.publish(Q, 1)
            await rt.drain()
            assert rt.state == "running"
        assert rt.state == "stopped"
        return rt

    assert event_counts(virtual(main).timeline.df)["ack"] == 1


def test_sync_facade_from_plain_code():
    got = []
    rt = runtime(got.append)
    with rt.sync() as app:
        mid = app.publish(Q, {"id": 1})
        app.drain(timeout=10)
    assert got == ['{"id":1}']
    assert rt.state == "stopped"
    assert history(app.timeline.df)[mid] == ["publish", "deliver", "start", "ack"]


def test_sync_facade_from_inside_a_running_loop():
    """A notebook cell without await: blocking calls on a loop that is running must not deadlock."""
    got = []

    async def cell():
        rt = runtime(got.append)
        app = rt.sync().open()
        try:
            app.publish(Q, 1)
            app.publish(Q, 2)
            app.drain(timeout=10)
        finally:
            app.close()
        return rt

    rt = asyncio.run(cell())
    assert got == ["1", "2"] and rt.state == "stopped"


@pytest.mark.filterwarnings("ignore:coroutine 'Runtime.publish' was never awaited")
def test_sync_facade_must_be_opened():
    app = runtime(lambda b: None).sync()
    with pytest.raises(wqnb.RuntimeStateError, match=r"^SyncRuntime is not open"):
        app.publish(Q, 1)


def test_sync_facade_refusal_leaves_no_unawaited_coroutine():
    import gc
    import warnings

    app = runtime(lambda b: None).sync()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(wqnb.RuntimeStateError):
            app.publish(Q, 1)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_simulate_from_inside_a_running_loop_matches_one_from_plain_code():
    kwargs = {"concurrency": 2, "prefetch": 3, "messages": 200, "arrival_rate": 30.0,
                  "service_time": wqnb.Exponential(0.05), "failure_rate": 0.1, "seed": 5}

    async def cell():
        return wqnb.simulate(**kwargs)  # a sync call from a coroutine, as in a notebook cell

    inside = asyncio.run(cell())
    outside = wqnb.simulate(**kwargs)
    assert len(inside.df) > 600
    import pandas as pd

    pd.testing.assert_frame_equal(inside.df.drop(columns="msg_id"), outside.df.drop(columns="msg_id"))


def test_publish_nowait_outside_any_loop():
    rt = runtime(lambda b: None)
    with pytest.raises(wqnb.RuntimeStateError, match=r"^publish_nowait needs the runtime's event loop"):
        rt.publish_nowait(Q, 1)


def test_a_running_runtime_refuses_another_loop():
    rt = runtime(lambda b: None)

    async def first():
        await rt.start()

    asyncio.run(first())  # left running; asyncio.run then closed its loop

    async def second():
        with pytest.raises(wqnb.RuntimeStateError, match=r"^this runtime is running on another event loop$"):
            await rt.start()

    asyncio.run(second())


def test_drain_timeout_is_exact_on_virtual_time():
    async def main():
        rt = runtime(lambda b: asyncio.sleep(100), stop_timeout=0)
        await rt.start()
        await rt.publish(Q, 1)
        with pytest.raises(TimeoutError):
            await rt.drain(timeout=5)
        t = now()
        with pytest.raises(wqnb.StopTimeout):
            await rt.stop()
        return t

    assert virtual(main) == 5.0


def test_drain_with_nothing_to_do_returns_at_once():
    async def main():
        rt = runtime(lambda b: None)
        await rt.drain()
        await rt.start()
        await rt.drain()
        await rt.stop()
        return now()

    assert virtual(main) == 0.0


def test_register_function_checks_its_arguments():
    rt = runtime(lambda b: None)
    with pytest.raises(TypeError, match=r"expected a callable"):
        rt.register_function("t:x", 42)
    with pytest.raises(ValueError, match=r"^function id must be 'namespace:name', got 'nocolon'$"):
        rt.register_function("nocolon", lambda b: None)


def test_register_function_after_a_stop_takes_effect_on_restart():
    seen = []

    async def main():
        rt = runtime(lambda b: seen.append(("old", b)))
        await rt.start()
        await rt.publish(Q, 1)
        await rt.drain()
        await rt.stop()
        rt.register_function("t:h", lambda b: seen.append(("new", b)))
        await rt.publish(Q, 2)
        await rt.start()
        await rt.drain()
        await rt.stop()

    virtual(main)
    assert seen == [("old", "1"), ("new", "2")]


def test_timestamps_follow_the_virtual_clock():
    headers = []

    async def main():
        rt = runtime(lambda b, d: headers.append(d.headers["timestamp"]))
        await rt.start()
        await asyncio.sleep(90)
        await rt.publish(Q, 1)
        await rt.drain()
        await rt.stop()
        return rt

    rt = virtual(main)
    assert headers == [1767225600 + 90]
    assert rows(rt.timeline.df, "publish")["t"].tolist() == [90.0]


def test_repr_mentions_state():
    rt = runtime(lambda b: None)
    assert repr(rt).startswith("<Runtime created:")
    assert C in rt.registry.entries


def test_start_follows_depends_on_and_stop_goes_in_reverse(monkeypatch):
    from wqnb.consumer import Consumer
    from wqnb.drivers.memory import MemoryDriver

    log: list[str] = []

    def spy(cls, name):
        original = getattr(cls, name)

        async def wrapper(self, *a, **kw):
            log.append(f"{name} {self.id}")
            return await original(self, *a, **kw)

        monkeypatch.setattr(cls, name, wrapper)

    for cls in (Consumer, MemoryDriver):
        spy(cls, "start")
        spy(cls, "stop")
    text = """\
namespace: t
entries:
  - {name: late, kind: queue.consumer, queue: t:tasks, func: t:h, lifecycle: {auto_start: true, depends_on: [t:early]}}
  - {name: early, kind: queue.consumer, queue: t:tasks, func: t:h, lifecycle: {auto_start: true, depends_on: [t:mem2]}}
  - {name: tasks, kind: queue.queue, driver: t:mem}
  - {name: mem2, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: idle, kind: queue.consumer, queue: t:tasks, func: t:h}
"""

    async def main():
        rt = wqnb.Runtime.from_yaml_string(text)
        rt.register_function("t:h", lambda body: None)
        await rt.start()
        started = list(log)
        log.clear()
        await rt.stop()
        return started, list(log)

    started, stopped = virtual(main)
    # the drivers first (a queue's driver before its consumers), then early before late;
    # `idle` has no auto_start
    assert started.index("start t:mem") < started.index("start t:early") < started.index("start t:late")
    assert started.index("start t:mem2") < started.index("start t:early")
    assert "start t:idle" not in started and len(started) == 4
    # consumers stop first, beginning in reverse start order, then drivers in reverse order
    assert stopped[:2] == ["stop t:late", "stop t:early"]
    drivers = [s for s in stopped if s.startswith("stop t:mem")]
    assert stopped[2:] == drivers
    assert drivers == [f"stop {d}" for d in reversed([s[6:] for s in started if s.startswith("start t:mem")])]


# -- issue 14 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_publishing_nan_or_infinity_is_refused_with_a_clear_error(bad):
    """Point 22: {"x": nan} went out as {"x":NaN}, which is not JSON (the seed handler nacked it)."""
    async def go() -> None:
        rt = seed_runtime([])
        async with rt:
            with pytest.raises(ValueError, match=r"^message body holds NaN or Infinity, which JSON cannot express"):
                await rt.publish(SEED_Q, {"id": 1, "x": bad})
            with pytest.raises(ValueError, match="NaN or Infinity"):
                await rt.publish(SEED_Q, [1, [bad]])
            await rt.publish(SEED_Q, {"id": 2, "x": 1.5})
            await rt.drain()
        df = rt.timeline.df
        assert (df.event == "publish").sum() == 1 and (df.event == "ack").sum() == 1
    virtual(go)


def _runtime_threads() -> int:
    import threading

    return sum(1 for t in threading.enumerate() if t.name == "wqnb-runtime")


def test_a_failed_sync_open_leaves_no_loop_thread_behind():
    """Point 16: each failed ``with rt.sync()`` leaked its loop thread."""
    before = _runtime_threads()
    for _ in range(5):
        rt = wqnb.Runtime.from_yaml_string(SEED_APP)  # app.queue:task_handler never registered
        with pytest.raises(wqnb.ConfigError, match="function not found: app.queue:task_handler"), rt.sync():
            pass  # pragma: no cover - never reached
    assert _runtime_threads() == before
    # and the facade can be opened again once the function exists
    rt.register_function("app.queue:task_handler", lambda body: None)
    app = rt.sync()
    with pytest.raises(wqnb.ConfigError):
        wqnb.Runtime.from_yaml_string(SEED_APP).sync().open()
    with app:
        app.publish(SEED_Q, {"id": 1})
        app.drain(timeout=10)
    assert _runtime_threads() == before


def test_two_virtual_runs_of_one_runtime_keep_timeline_t_moving_forward():
    """Point 21: a second run_virtual() on one runtime sent t backwards."""
    rt = seed_runtime([])

    async def session(n: int) -> None:
        await rt.start()
        for i in range(n):
            await rt.publish(SEED_Q, {"id": i})
        await rt.drain()
        await asyncio.sleep(1.0)
        await rt.stop()

    wqnb.run_virtual(session(3))
    first_end = rt.timeline.df.t.max()
    wqnb.run_virtual(session(3))
    t = rt.timeline.df.t
    assert first_end > 0
    assert t.is_monotonic_increasing, f"t went back from {first_end} to {t[t.index > t.idxmax()].min()}"
    assert rt.unix_time() >= 1_767_225_600 + first_end
