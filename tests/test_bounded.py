"""Bounded memory for a long-running live runtime (issue 14, last section).

``Runtime(max_events=N)`` keeps the newest rows, drops the oldest in chunks (counted, and
spilled to Parquet with ``spill=``), and the views say so; ``LiveMonitor`` (through
:class:`wqnb.live.LiveView`) reads only the rows recorded since its last refresh.
"""

from __future__ import annotations

import asyncio
import json

import pandas as pd
import pytest

import wqnb
from wqnb import plot
from wqnb.clock import run_virtual
from wqnb.live import LiveView
from wqnb.timeline import Recorder
from wqnb.widgets import LiveMonitor

APP = """\
namespace: b
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - name: jobs
    kind: queue.queue
    driver: b:mem
    options: {max_length: 50}
    dead_letter: {queue: b:dead, max_attempts: 2}
  - {name: dead, kind: queue.queue, driver: b:mem}
  - name: work
    kind: queue.consumer
    queue: b:jobs
    func: b:handler
    concurrency: 4
    prefetch: 8
    lifecycle: {auto_start: true}
"""


def failing_every(k: int):
    """A handler that fails messages whose ``i`` is a multiple of ``k`` (dead-lettered
    after two attempts) and acks the rest (``k=0``: acks all)."""
    async def handler(body):
        if k and json.loads(body)["i"] % k == 0:
            raise ValueError("bad")
    return handler


async def until(cond, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


async def flow(rt: wqnb.Runtime, n: int, sample=None, every: int = 50) -> None:
    for i in range(n):
        await rt.publish("b:jobs", {"i": i})
        if sample is not None and i % every == 0:
            sample()
    await rt.drain(timeout=60)


def expected_rows(n: int, k: int) -> dict[str, int]:
    """Rows of each kind for ``n`` messages, every ``k``-th failing twice then dead-lettered."""
    bad = len(range(0, n, k))
    return {"publish": n, "ack": n - bad, "nack": 2 * bad, "requeue": bad, "dead_letter": bad,
            "deliver": n + bad, "start": n + bad}


# -- the bound ---------------------------------------------------------------------------


def test_a_live_runtime_with_max_events_stays_bounded_and_counts_what_it_dropped():
    # the trimmer checks every quarter chunk of rows (at the rate it sees) and trims past
    # half a chunk over: a chunk of twice the bound leaves room for a loaded machine
    n, k, bound, chunk = 20_000, 7, 3_000, 6_000

    async def main():
        rt = wqnb.Runtime.from_yaml_string(APP, max_events=bound)
        rt.recorder.retention.chunk = chunk
        rt.register_function("b:handler", failing_every(k))
        await rt.start()
        sizes: list[int] = []
        await flow(rt, n, lambda: sizes.append(len(rt.recorder)))
        trimmer_ticks = rt._trimmer.ticks
        await rt.stop()
        return rt, sizes, trimmer_ticks

    rt, sizes, ticks = asyncio.run(main())
    rec = rt.recorder
    assert ticks > 0  # the real-time trimmer ran
    assert max(sizes) <= bound + chunk, max(sizes)  # bounded while the messages flowed
    assert max(sizes) > bound  # trimmed in chunks, not row by row:
    assert rec.retention.trims <= rec.dropped // (chunk // 2) + 1
    assert len(rec) <= bound and rec.dropped > 10_000
    assert rec.recorded == rec.dropped + len(rec)
    tl = rt.timeline
    assert len(tl.df) == len(rec) and tl.dropped == rec.dropped
    assert f"the first {rec.dropped:,} dropped" in repr(tl)
    # dropped rows are counted by kind, queue and consumer: kept + dropped = everything
    want = expected_rows(n, k)
    kept = tl.df["event"].value_counts()
    for ev, total in want.items():
        assert tl.dropped_detail.count(ev) + int(kept.get(ev, 0)) == total, ev
    dead_kept = int(((tl.df["event"] == "dead_letter") & (tl.df["queue"] == "b:dead")).sum())
    assert tl.dropped_detail.count("dead_letter", queue="b:dead", consumer="b:work") + dead_kept == want["dead_letter"]
    # the summary's counts are whole-run totals, and it says the start is gone
    s = tl.summary()
    assert (s["published"], s["acked"], s["nacked"], s["dead_lettered"]) == (
        n, want["ack"], want["nack"], want["dead_letter"])
    assert s["dropped_events"] == rec.dropped
    # peaks over the whole run: the dropped rows' peaks count too
    assert s["max_depth"] == want["dead_letter"]  # the unread dead-letter queue, at the end
    assert int(tl.df["unsettled"].max()) <= s["max_unsettled"] <= 4 + 8
    text = s.to_text()
    assert text.startswith(f"note: max_events={bound:,}: the first {rec.dropped:,} events were dropped")
    # the plot says so too
    fig = plot.backpressure(tl)
    notes = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == "dropped-note"]
    assert notes and all(f"first {rec.dropped:,} events dropped" in t for t in notes)


def test_an_unbounded_runtime_keeps_everything_and_says_nothing():
    async def main():
        rt = wqnb.Runtime.from_yaml_string(APP)
        rt.register_function("b:handler", failing_every(5))
        await rt.start()
        await flow(rt, 500)
        assert rt._trimmer is None
        await rt.stop()
        return rt.timeline

    tl = asyncio.run(main())
    assert tl.dropped == 0 and tl.dropped_detail is None
    waits = int((tl.df["event"] == "publish_wait").sum())
    assert len(tl.df) - waits == sum(expected_rows(500, 5).values())
    s = tl.summary()
    assert "dropped_events" not in s and "note" not in s.attrs
    assert not [t for ax in plot.backpressure(tl).axes for t in ax.texts if t.get_gid() == "dropped-note"]


def test_on_virtual_time_the_bound_applies_when_the_run_is_read():
    """No timer on a virtual loop (it would keep virtual time going): the store grows
    during the run, and ``rt.timeline`` / ``stop`` trim it to the bound."""
    async def main():
        rt = wqnb.Runtime.from_yaml_string(APP, max_events=1_000)
        rt.register_function("b:handler", failing_every(0))
        await rt.start()
        await flow(rt, 2_000)
        rows = len(rt.recorder)
        assert rt._trimmer is None and rows >= 4 * 2_000  # not trimmed during the run
        tl = rt.timeline
        assert len(tl.df) == 1_000 and tl.dropped == rows - 1_000
        await rt.stop()
        return tl

    tl = run_virtual(main())
    assert tl.summary()["acked"] == 2_000


def test_a_bounded_timeline_saved_read_back_and_merged_still_counts_every_event(tmp_path):
    """What was dropped travels with the file (``wqnb worker --max-events -o``): the
    summary of the file read back, and of two processes' files merged, counts the whole run."""
    n, k = 2_000, 5

    async def one(name: str) -> wqnb.Timeline:
        rt = wqnb.Runtime.from_yaml_string(APP, max_events=1_000, process=name)
        rt.register_function("b:handler", failing_every(k))
        await rt.start()
        await flow(rt, n)
        await rt.stop()
        return rt.timeline

    tls = [run_virtual(one(name)) for name in ("w1", "w2")]
    want = expected_rows(n, k)
    for tl in tls:
        assert tl.dropped > 0
        for suffix in (".parquet", ".csv"):
            back = wqnb.Timeline.read(tl.save(tmp_path / f"{tl.process}{suffix}"))
            assert back.dropped == tl.dropped and back.dropped_detail == tl.dropped_detail, suffix
            s = back.summary()
            assert (s["published"], s["acked"], s["nacked"], s["dead_lettered"]) == (
                n, want["ack"], want["nack"], want["dead_letter"]), suffix
            assert s["dropped_events"] == tl.dropped and s.attrs["note"] == tl.summary().attrs["note"]
    merged = wqnb.Timeline.merge([tmp_path / "w1.parquet", tmp_path / "w2.csv"])
    assert merged.dropped == tls[0].dropped + tls[1].dropped
    assert merged.dropped_detail.count("ack", consumer="b:work@w1") == tls[0].dropped_detail.count("ack")
    assert merged.dropped_detail.count("ack", consumer="b:work@w2") == tls[1].dropped_detail.count("ack")
    s = merged.summary()
    assert (s["published"], s["acked"], s["dead_lettered"]) == (2 * n, 2 * want["ack"], 2 * want["dead_letter"])
    assert s["dropped_events"] == merged.dropped
    # a merge of a merge keeps the totals (its consumers are already named per process)
    again = wqnb.Timeline.read(merged.save(tmp_path / "merged.parquet"))
    assert again.dropped_detail == merged.dropped_detail
    unbounded = wqnb.Timeline.read(wqnb.simulate(messages=50).save(tmp_path / "plain.parquet"))
    assert unbounded.dropped == 0 and unbounded.dropped_detail is None


def test_dropped_rows_spill_to_parquet(tmp_path):
    spill = tmp_path / "spill"

    async def main():
        rt = wqnb.Runtime.from_yaml_string(APP, max_events=2_000, spill=spill)
        rt.register_function("b:handler", failing_every(9))
        await rt.start()
        await flow(rt, 3_000)
        await rt.stop()
        return rt

    rt = asyncio.run(main())
    tl = rt.timeline
    parts = sorted(spill.glob("part-*.parquet"))
    assert len(parts) == rt.recorder.retention.parts >= 1
    gone = pd.read_parquet(spill)
    assert len(gone) == tl.dropped
    whole = pd.concat([gone.astype({"event": str}), tl.df.astype({"event": str})], ignore_index=True)
    counts = whole["event"].value_counts()
    for ev, total in expected_rows(3_000, 9).items():
        assert counts[ev] == total, ev
    assert whole["t"].is_monotonic_increasing  # the spilled rows come first, in order
    assert set(gone["msg_id"].dropna()) <= {rt._ids.name(s) for s in range(3_000)}


def test_bad_bounds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="max_events must be a whole number"):
        wqnb.Runtime.from_yaml_string(APP, max_events=0)
    with pytest.raises(ValueError, match="not both"):
        wqnb.Runtime.from_yaml_string(APP, max_events=10, recorder=Recorder())
    with pytest.raises(ValueError, match="need max_events"):
        Recorder(spill=tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="must be a folder"):
        Recorder(10, spill=tmp_path / "file")


# -- the monitor reads only what is new --------------------------------------------------


def test_live_view_reads_each_row_once_and_matches_the_full_summary():
    async def main():
        rt = wqnb.Runtime.from_yaml_string(APP)
        rt.register_function("b:handler", failing_every(4))
        await rt.start()
        view = LiveView(rt.recorder, "b:work", "b:jobs")
        reads = []
        for burst in range(5):
            before = rt.recorder.recorded
            await flow(rt, 300)
            assert view.update() == rt.recorder.recorded - before  # only the new rows
            reads.append(view.last_read)
        assert view.update() == 0  # nothing new: nothing read
        await rt.stop()
        return rt, view, reads

    rt, view, reads = asyncio.run(main())
    assert view.rows_read == rt.recorder.recorded == sum(reads)
    full = rt.timeline.summary()
    live = view.summary()
    for key in ("published", "delivered", "acked", "nacked", "requeued", "dead_lettered", "publish_waits",
                "max_depth", "max_buffered", "max_busy", "max_unsettled"):
        assert live[key] == full[key], key


def test_live_view_counts_deliveries_handed_back_by_a_stop():
    gate = asyncio.Event()

    async def handler(body):
        await gate.wait()

    async def main():
        rt = wqnb.Runtime.from_yaml_string(APP.replace("lifecycle: {auto_start: true}\n", "lifecycle: {auto_start: true, stop_timeout: 0.05}\n", 1))
        rt.register_function("b:handler", handler)
        await rt.start()
        view = LiveView(rt.recorder, "b:work", "b:jobs")
        for i in range(30):
            rt.publish_nowait("b:jobs", {"i": i})
        c = rt.consumers["b:work"]
        await until(lambda: c.busy == 4 and len(c.buffer) == 8)
        view.update()
        try:
            await rt.stop()
        except wqnb.errors.StopTimeout:
            pass
        view.update()
        return rt, view

    rt, view = asyncio.run(main())
    m = rt.timeline.messages()
    assert view.handed_back == int((m["outcome"] == "returned").sum()) == 12


def test_live_view_on_a_small_bound_still_sees_every_row():
    """Rows the recorder drops between two updates are read just before they go."""
    async def main():
        rt = wqnb.Runtime.from_yaml_string(APP, max_events=1_500)
        rt.register_function("b:handler", failing_every(6))
        await rt.start()
        view = LiveView(rt.recorder, "b:work", "b:jobs")
        await flow(rt, 5_000)  # no update in between: most rows are dropped unseen
        view.update()
        await rt.stop()
        view.update()
        return rt, view

    rt, view = asyncio.run(main())
    rec = rt.recorder
    assert rec.dropped > 10_000
    assert view.rows_read == rec.recorded
    s = view.summary()
    want = expected_rows(5_000, 6)
    assert (s["published"], s["acked"], s["nacked"], s["dead_lettered"]) == (
        want["publish"], want["ack"], want["nack"], want["dead_letter"])
    assert s["dropped_events"] == rec.dropped


def test_a_view_made_after_drops_starts_from_the_totals():
    async def main():
        rt = wqnb.Runtime.from_yaml_string(APP, max_events=1_000)
        rt.register_function("b:handler", failing_every(0))
        await rt.start()
        await flow(rt, 3_000)
        await rt.stop()
        view = LiveView(rt.recorder, "b:work", "b:jobs")
        view.update()
        return rt, view

    rt, view = asyncio.run(main())
    assert view.rows_read == len(rt.recorder) == 1_000  # only the rows still kept were read
    assert view.summary()["acked"] == 3_000


def test_live_monitor_refresh_reads_only_new_rows_and_never_the_whole_timeline(monkeypatch):
    async def main():
        rt = wqnb.Runtime.from_yaml_string(APP, max_events=2_000)
        rt.register_function("b:handler", failing_every(0))
        await rt.start()
        mon = LiveMonitor(rt, start=False, window=5.0)

        def whole_history():
            raise AssertionError("LiveMonitor rebuilt the whole timeline")

        monkeypatch.setattr(rt.recorder, "timeline", whole_history)
        deltas = []
        for _ in range(4):
            before = rt.recorder.recorded
            await flow(rt, 1_000)
            assert mon.refresh() is True
            deltas.append((mon.live.last_read, rt.recorder.recorded - before))
        assert mon.refresh() is False and mon.live.last_read == 0
        assert mon.summary["acked"] == 4_000 and mon.summary["dropped_events"] == rt.recorder.dropped
        assert "events dropped (max_events)" in mon.status.value
        assert len(mon.live.timeline().df) <= mon.live.plot_rows
        monkeypatch.undo()
        await rt.stop()
        return deltas

    deltas = asyncio.run(main())
    assert all(read == new for read, new in deltas), deltas
