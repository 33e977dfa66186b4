"""The per-message fast paths give the same results as the plain ones.

* a handler that takes only the body is called without a Delivery; a failure there is a
  nack with the error text, like any other, and a timeout still applies;
* a message's id and headers are made when first asked for, and are the same then as the
  ones ``publish`` returns and the timeline shows;
* ``simulate``'s samplers draw the numbers the distributions' ``sample`` draws;
* the SimPy baseline with ``rows=True`` records the rows wqnb records;
* ids formatted by ``IdSource.name`` and by the timeline's vectorised builder are the
  strings the plain f-string gives;
* a queue's depth read through ``driver.ready_view`` is ``driver.depth``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from _helpers import Q, rows, runtime, virtual

import wqnb
from wqnb.drivers.base import Driver
from wqnb.drivers.memory import MemoryDriver
from wqnb.message import IdSource, Message
from wqnb.sim import Constant, Exponential, LogNormal, Uniform, sampler
from wqnb.timeline import _id_dtype


def test_a_body_only_handler_that_cannot_be_called_is_nacked_not_lost():
    async def takes_nothing():  # wrong signature: calling it with the body raises TypeError
        return None

    async def main():
        rt = runtime(takes_nothing, max_attempts=2)
        await rt.start()
        await rt.publish(Q, "x")
        await rt.drain()
        await rt.stop()
        return rt.timeline.df

    df = virtual(main)
    nacks = rows(df, "nack")
    assert len(nacks) == 2
    assert nacks["error"].iloc[0].endswith("takes_nothing() takes 0 positional arguments but 1 was given")
    assert rows(df, "dead_letter")["attempt"].tolist() == [1]


def test_a_body_only_handler_still_times_out():
    async def slow(body):
        await asyncio.sleep(10)

    async def main():
        rt = runtime(slow, timeout="2s", max_attempts=1)
        await rt.start()
        await rt.publish(Q, "x")
        await rt.drain()
        await rt.stop()
        return rt.timeline.df

    df = virtual(main)
    nack = rows(df, "nack")
    assert nack["t"].tolist() == [2.0]
    assert nack["error"].tolist() == ["handler timed out after 2s"]


def test_ids_and_headers_made_later_match_the_published_ones():
    seen = []

    async def handler(body, delivery):
        seen.append((delivery.id, delivery.headers))

    async def main():
        rt = runtime(handler)
        await rt.start()
        await asyncio.sleep(30)
        a = await rt.publish(Q, "a")
        b = rt.publish_nowait(Q, "b", headers={"k": 1})
        c = rt._publish_nowait(Q, "c")  # what simulate() uses: the id is not formatted
        assert c._id is None
        await rt.drain()
        await rt.stop()
        return rt, [a, b, c.id]

    rt, ids = virtual(main)
    ts = 1767225600 + 30
    assert seen == [(ids[0], {"timestamp": ts}), (ids[1], {"timestamp": ts, "k": 1}), (ids[2], {"timestamp": ts})]
    assert rows(rt.timeline.df, "publish")["msg_id"].tolist() == ids


def test_a_message_made_by_hand_gets_its_headers_from_the_wall_clock():
    m = Message(None, 5, "x", prefix="p-")
    before = int(time.time())
    assert m.id == "p-000000000005"
    assert before <= m.headers["timestamp"] <= int(time.time())
    m.headers = {"a": 1}
    assert m.headers == {"a": 1}
    assert Message("given", 1, "x", {"timestamp": 7}).headers == {"timestamp": 7}


@pytest.mark.parametrize("dist", [Exponential(0.05), Constant(0.2), Uniform(0.1, 0.3), LogNormal(0.05, 0.5)])
def test_samplers_draw_what_sample_draws(dist):
    draw = sampler(dist, random.Random(4))
    rng = random.Random(4)
    assert [draw() for _ in range(50)] == [dist.sample(rng) for _ in range(50)]


_path = Path(__file__).resolve().parents[1] / "benchmarks" / "_baselines.py"
_spec = importlib.util.spec_from_file_location("wqnb_bench_baselines_rows", _path)
bl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bl)


def test_simpy_rows_are_wqnbs_rows_for_the_same_model():
    events: list = []
    res = bl.simpy_mmc(3_000, 3, 50.0, 0.05, seed=2, rows=True, events=events)
    assert res.mean_sojourn == pytest.approx(bl.mmc_mean_sojourn(50.0, 0.05, 3), rel=0.15)
    assert all(len(r) == len(bl.ROW_FIELDS) for r in events)
    codes = dict(zip(wqnb.timeline.EVENTS, range(len(wqnb.timeline.EVENTS)), strict=False))
    assert (bl.EV_PUBLISH, bl.EV_DELIVER, bl.EV_START, bl.EV_ACK) == (
        codes["publish"], codes["deliver"], codes["start"], codes["ack"])
    assert Counter(r[1] for r in events) == {bl.EV_PUBLISH: 3_000, bl.EV_DELIVER: 3_000, bl.EV_START: 3_000,
                                             bl.EV_ACK: 3_000}
    busy = [r[10] for r in events if r[1] != bl.EV_PUBLISH]
    assert max(busy) == 3 and min(busy) >= 0
    # the same model in wqnb records the same number of rows of each kind
    tl = wqnb.simulate(concurrency=3, prefetch=1, messages=3_000, arrival_rate=50.0,
                       service_time=wqnb.Exponential(0.05), max_length=10**6, seed=2)
    kinds = Counter(tl.df["event"].astype(str))
    assert kinds == {"publish": 3_000, "deliver": 3_000, "start": 3_000, "ack": 3_000}


LUA_APP = """\
namespace: t
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - name: tasks
    kind: queue.queue
    driver: t:mem
    dead_letter: {queue: t:dead, max_attempts: 2}
  - {name: dead, kind: queue.queue, driver: t:mem}
  - {name: c, kind: queue.consumer, queue: t:tasks, func: t:h, concurrency: 2, prefetch: 4,
     lifecycle: {auto_start: true}}
  - name: h
    kind: function.lua
    modules: [%(modules)s]
    source: |
      local time = require("time")
      return function(body)
        time.sleep("250ms")
        if body == "bad" then return nil, "refused " .. body end
        %(extra)s
      end
"""


@pytest.mark.parametrize("with_queue", [False, True])
def test_lua_handlers_with_and_without_the_queue_module_give_the_same_timeline(with_queue):
    pytest.importorskip("lupa")
    src = LUA_APP % {
        "modules": "time, queue" if with_queue else "time",
        "extra": 'assert(#require("queue").message():id() == 36)' if with_queue else "",
    }

    async def main():
        rt = wqnb.Runtime.from_yaml_string(src)
        await rt.start()
        for body in ["a", "bad", "b"]:
            await rt.publish("t:tasks", body)
        await rt.drain()
        await rt.stop()
        return rt

    rt = wqnb.run_virtual(main())
    handler = rt.consumers["t:c"].handler
    assert hasattr(handler, "body_fn") is (not with_queue)  # no Delivery without the queue module
    df = rt.timeline.df
    assert Counter(df["event"].astype(str)) == {"publish": 3, "deliver": 4, "start": 4, "ack": 2, "nack": 2,
                                                "requeue": 1, "dead_letter": 1}
    assert rows(df, "ack")["t"].tolist() == [0.25, 0.5]
    assert rows(df, "nack")["error"].tolist() == ["refused bad", "refused bad"]


def test_idsource_names_are_the_plain_format_across_block_boundaries():
    ids = IdSource(random.Random(3))
    seqs = [*range(0, 1100), 2**20 - 1, 2**20, 2**47 + 5, 2**48 - 1, 255, 256, 0]  # and back again
    assert [ids.name(s) for s in seqs] == [f"{ids.prefix}{s:012x}" for s in seqs]
    assert len(ids.name(7)) == 36 and ids.name(7)[14] == "4"  # UUID 4's shape


@pytest.mark.parametrize("prefix,n", [("", 0), ("", 1), ("p-", 257), ("é-", 3),
                                      ("12345678-1234-4123-8123-", 70_000)])
def test_the_timelines_id_categories_are_the_plain_ones(prefix, n):
    import pandas as pd

    fast = _id_dtype(prefix, n)
    plain = pd.CategoricalDtype([f"{prefix}{s:012x}" for s in range(n)])
    assert fast == plain
    assert fast.categories.dtype == plain.categories.dtype
    assert fast.categories.tolist() == plain.categories.tolist()


def test_a_timeline_with_many_messages_names_each_by_its_published_id():
    async def main():
        rt = runtime(_noop_body)
        await rt.start()
        ids = [await rt.publish(Q, str(i)) for i in range(600)]
        await rt.drain()
        await rt.stop()
        return rt, ids

    rt, ids = virtual(main)
    df = rt.timeline.df
    assert rows(df, "publish")["msg_id"].tolist() == ids
    assert rows(df, "ack")["msg_id"].astype(str).value_counts().to_dict() == dict.fromkeys(ids, 1)


async def _noop_body(body):
    return None


def test_depth_through_ready_view_is_the_drivers_depth():
    mem = MemoryDriver("m")
    mem.declare_now(wqnb.drivers.base.QueueSpec("q", max_length=5))
    view = mem.ready_view("q")
    mem.publish_nowait("q", Message(None, 0, "x"))
    assert len(view) == mem.depth("q") == 1

    class Counting(MemoryDriver):  # a driver that only answers depth(): the generic view
        def ready_view(self, queue_id):
            return Driver.ready_view(self, queue_id)

    other = Counting("c")
    other.declare_now(wqnb.drivers.base.QueueSpec("q"))
    view = other.ready_view("q")
    assert len(view) == 0 and not view
    other.publish_nowait("q", Message(None, 0, "x"))
    other.publish_nowait("q", Message(None, 1, "y"))
    assert len(view) == other.depth("q") == 2 and view


def test_a_redeclared_memory_queue_takes_its_new_max_length():
    from wqnb.drivers.base import QueueSpec

    mem = MemoryDriver("m")
    mem.declare_now(QueueSpec("q", max_length=1))
    mem.publish_nowait("q", Message(None, 0, "x"))
    mem.declare_now(QueueSpec("q", max_length=2))
    mem.publish_nowait("q", Message(None, 1, "y"))  # room now
    with pytest.raises(wqnb.QueueFull):
        mem.publish_nowait("q", Message(None, 2, "z"))
