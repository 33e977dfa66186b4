"""The explorers without a browser: set widget values, click buttons, check what was
simulated, summarised and drawn."""

from __future__ import annotations

import asyncio
import base64
import itertools

import pytest

import wqnb
from wqnb import widgets
from wqnb.widgets import Explorer, LiveMonitor, Sweep, log_options, summary_table


class Spy:
    """Wraps ``wqnb.simulate`` and remembers the keywords of every call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return wqnb.simulate(**kwargs)


def lines(fig) -> set[str]:
    return {ln.get_label() for ax in fig.axes for ln in ax.get_lines()}


def titles(fig) -> list[str]:
    return [ax.get_title(loc="left") for ax in fig.axes]


# -- helpers ---------------------------------------------------------------------------


def test_log_options_are_log_spaced_integers_with_the_bounds():
    opts = log_options(1, 1000)
    assert opts[:8] == [1, 2, 3, 4, 5, 6, 8, 10]
    assert opts[-1] == 1000 and opts == sorted(set(opts))
    ratios = [b / a for a, b in itertools.pairwise(opts)]
    assert max(ratios) <= 2.0 and len(opts) == 24
    assert 7 in log_options(1, 10_000, include=[7])
    assert log_options(10, 10_000)[0] == 10


def test_summary_table_has_units_and_rounds():
    s = wqnb.simulate(messages=50, seed=3).summary()
    table = summary_table(s)
    assert table.loc["throughput", "unit"] == "msg/s"
    assert table.loc["latency p99", "unit"] == "s"
    assert table.loc["published", "value"] == "50"
    assert len(table.loc["latency p50", "value"]) <= 6  # three significant figures


# -- Explorer --------------------------------------------------------------------------


@pytest.fixture
def spy() -> Spy:
    return Spy()


def test_explorer_runs_once_on_creation_with_its_values(spy):
    ex = Explorer(concurrency=3, prefetch=7, messages=200, service_time=0.02,
                  distribution="constant", simulate=spy)
    assert spy.calls == [{
        "concurrency": 3, "prefetch": 7, "messages": 200, "arrival_rate": 80.0,
        "service_time": wqnb.Constant(0.02), "failure_rate": 0.0, "max_length": 1000,
        "seed": 1,
    }]
    assert ex.runs == 1 and ex.summary["published"] == 200
    assert ex.image.value.tobytes().startswith(b"\x89PNG")
    assert "<table" in ex.table.value and "throughput" in ex.table.value
    # the slider stops include the values asked for, even off the log grid
    assert ex.prefetch.value == 7
    assert repr(ex).startswith("Explorer(concurrency=3, prefetch=7, messages=200")


def test_moving_concurrency_resimulates_and_redraws(spy):
    ex = Explorer(concurrency=1, prefetch=1, messages=300, arrival_rate=None,
                  service_time=0.01, distribution="constant", simulate=spy)
    png, table, tl = ex.image.value, ex.table.value, ex.timeline
    assert ex.summary["max_busy"] == 1
    ex.concurrency.value = 8  # what the browser's slider does
    assert spy.calls[-1]["concurrency"] == 8 and ex.runs == 2
    assert ex.timeline is not tl
    assert ex.summary["max_busy"] == 8
    # 300 messages of 10 ms, all at t = 0: 8 workers finish 8x sooner
    assert ex.summary["duration_s"] == pytest.approx(300 * 0.01 / 8, rel=0.02)
    assert ex.image.value != png and ex.table.value != table
    assert "concurrency 8" in lines(ex.figure)
    assert any("concurrency 8, prefetch 1" in t for t in titles(ex.figure))


def test_every_knob_reaches_simulate(spy):
    ex = Explorer(messages=100, simulate=spy)
    ex.prefetch.value = 100
    ex.max_length.value = 50
    ex.messages.value = 150
    ex.failure_rate.value = 0.2
    ex.seed.value = 9
    ex.arrival_rate.value = 200.0
    ex.service_time.value = 0.01
    ex.distribution.value = "lognormal (σ = 1)"
    last = spy.calls[-1]
    assert last["prefetch"] == 100 and last["max_length"] == 50 and last["messages"] == 150
    assert last["failure_rate"] == 0.2 and last["seed"] == 9
    assert last["arrival_rate"] == pytest.approx(200.0)
    assert last["service_time"] == wqnb.LogNormal(0.01, 1.0)
    ex.burst.value = True
    assert spy.calls[-1]["arrival_rate"] is None
    assert ex.runs == len(spy.calls) == 10
    assert ex.summary["nacked"] > 0  # the failures show up in what is summarised


def test_explorer_shows_backpressure_when_the_queue_is_small(spy):
    ex = Explorer(concurrency=1, prefetch=1, max_length=5, messages=100, arrival_rate=None,
                  service_time=0.01, distribution="constant", simulate=spy)
    assert ex.summary["publish_waits"] > 0
    assert ex.summary["max_depth"] <= 5
    assert "max_length 5" in lines(ex.figure)
    shaded = [c for ax in ex.figure.axes for c in ax.collections
              if c.get_label() == "publisher waiting"]
    assert len(shaded) == 1


def test_a_failing_simulation_is_reported_and_keeps_the_last_picture():
    def boom(**kwargs):
        if kwargs["concurrency"] == 2:
            raise ValueError("no good")
        return wqnb.simulate(**kwargs)

    ex = Explorer(concurrency=1, messages=50, simulate=boom)
    png = ex.image.value
    ex.concurrency.value = 2
    assert ex.error == "ValueError: no good" and "no good" in ex.status.value
    assert ex.image.value == png and ex.runs == 1
    ex.concurrency.value = 3
    assert ex.error is None and ex.runs == 2


def test_explorer_rejects_unknown_distribution():
    with pytest.raises(ValueError, match="distribution must be one of"):
        Explorer(distribution="pareto", auto=False)


def test_explorer_redraws_10000_messages():
    # Functional check only: the speed goal (1 s per redraw) is measured in
    # benchmarks/bench_explorer.py, not asserted on wall-clock time here.
    ex = Explorer(messages=10_000)
    ex.concurrency.value = 8
    assert ex.runs == 2 and ex.error is None  # the change did re-run and redraw
    assert ex.summary["published"] == 10_000


def test_explorer_mimebundle_has_a_stable_text_repr():
    ex = Explorer(messages=50)
    bundle, meta = ex._repr_mimebundle_()
    assert bundle["text/plain"] == repr(ex)
    assert "application/vnd.jupyter.widget-view+json" in bundle
    # the static fallback: the current picture, at its CSS size, for GitHub and nbviewer
    png = base64.b64decode(bundle["image/png"])
    assert png == ex.image.value.tobytes()
    w, h = widgets.png_size(png)
    assert meta["image/png"] == {"width": w // 2, "height": h // 2}


# -- Sweep -----------------------------------------------------------------------------


def test_sweep_click_runs_the_grid_with_progress_and_draws_heatmaps(spy):
    sw = Sweep(concurrency=(1, 2), prefetch=(1, 10, 100), messages=120, arrival_rate=None,
               service_time=0.01, simulate=spy)
    seen = []
    sw.progress.observe(lambda ch: seen.append(ch["new"]), names="value")
    sw.button.click()  # no running loop here: it runs at once
    assert seen == [1, 2, 3, 4, 5, 6]  # one step a run
    assert sw.progress.max == 6 and sw.progress.value == 6
    assert [(c["concurrency"], c["prefetch"]) for c in spy.calls] == [
        (1, 1), (1, 10), (1, 100), (2, 1), (2, 10), (2, 100)]
    assert all(c["messages"] == 120 and c["seed"] == 1 for c in spy.calls)
    r = sw.results
    assert list(r[["concurrency", "prefetch"]].itertuples(index=False, name=None)) == [
        (1, 1), (1, 10), (1, 100), (2, 1), (2, 10), (2, 100)]
    two = r[r["concurrency"] == 2]["throughput_per_s"]
    one = r[r["concurrency"] == 1]["throughput_per_s"]
    assert (two.to_numpy() > 1.9 * one.to_numpy()).all()
    heatmaps = [ax for ax in sw.figure.axes if ax.images]
    assert [ax.images[0].get_array().shape for ax in heatmaps] == [(2, 3), (2, 3)]
    assert sw.image.value.tobytes().startswith(b"\x89PNG") and sw.status.value == "6 runs done"
    assert not sw.button.disabled


def test_sweep_reads_the_grid_from_its_text_boxes(spy):
    sw = Sweep(messages=50, simulate=spy)
    sw.concurrency.value = "4, 1"
    sw.prefetch.value = "5"
    assert sw.grid() == [(1, 5), (4, 5)]
    sw.prefetch.value = "five"
    assert sw.run() is None and spy.calls == []
    assert "whole numbers" in sw.status.value


def test_sweep_in_a_running_loop_is_a_task_that_yields():
    sw = Sweep(concurrency=(1, 2, 4), prefetch=(1,), messages=60, arrival_rate=None)

    async def main():
        sw.button.click()
        assert sw.task is not None and not sw.task.done()
        assert sw.progress.value == 0  # nothing ran yet: the click returned at once
        assert sw.button.disabled
        return await sw.task

    results = asyncio.run(main())
    assert len(results) == 3 and sw.progress.value == 3


# -- LiveMonitor -----------------------------------------------------------------------

LIVE_APP = """\
namespace: live
entries:
  - name: mem
    kind: queue.driver.memory
    lifecycle: {auto_start: true}
  - name: jobs
    kind: queue.queue
    driver: live:mem
    options: {max_length: 5}
  - name: workers
    kind: queue.consumer
    queue: live:jobs
    func: live:handler
    concurrency: 2
    prefetch: 3
    lifecycle: {auto_start: true}
"""


async def until(cond, timeout: float = 10.0) -> None:
    """Wait (on the loop, never blocking it) until ``cond()`` is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def test_live_monitor_follows_a_real_runtime_and_stops_it():
    async def handler(body):
        await asyncio.sleep(0.005)

    async def main():
        rt = wqnb.Runtime.from_yaml_string(LIVE_APP)
        rt.register_function("live:handler", handler)
        await rt.start()
        mon = LiveMonitor(rt, burst=20, interval=0.01)
        assert mon.consumer == "live:workers" and mon.queue == "live:jobs"
        assert "no events yet" in mon.status.value
        first = mon.refreshes
        mon.publish_button.click()  # returns at once; the burst is a task
        await until(lambda: mon.summary is not None and mon.summary["acked"] == 20)
        assert mon.refreshes > first + 1  # it redrew while messages flowed
        assert mon.published == 20
        assert "concurrency = 2" in lines(mon.figure)
        assert mon.summary["publish_waits"] > 0  # 20 into a queue of 5: the burst waited
        assert mon.summary["max_unsettled"] <= 2 + 3
        mon.stop_button.click()
        await mon.stopping
        assert rt.state == "stopped" and mon.task is None
        assert mon.publish_button.disabled and mon.stop_button.disabled
        assert "runtime stopped" in mon.status.value and "acked 20" in mon.status.value
        return mon

    mon = asyncio.run(main())
    assert mon.image.value.tobytes().startswith(b"\x89PNG")
    assert_crisp(mon.image, mon.figure)


def test_live_monitor_does_not_redraw_without_new_events():
    async def handler(body):
        return None

    async def main():
        rt = wqnb.Runtime.from_yaml_string(LIVE_APP)
        rt.register_function("live:handler", handler)
        await rt.start()
        mon = LiveMonitor(rt, start=False)
        n = mon.refreshes
        assert mon.refresh() is False and mon.refreshes == n
        rt.publish_nowait("live:jobs", {"n": 1})
        await rt.drain()
        assert mon.refresh() is True
        await rt.stop()

    asyncio.run(main())


def test_live_monitor_needs_a_running_loop():
    rt = wqnb.Runtime.from_yaml_string(LIVE_APP)
    with pytest.raises(RuntimeError, match="running event loop"):
        LiveMonitor(rt, queue="live:jobs")


def test_module_exports():
    assert set(widgets.__all__) >= {"Explorer", "Sweep", "LiveMonitor"}


# -- crisp, unstretched images (issue 13 §1) ------------------------------------------------


def _css_px(width: str) -> int:
    assert width.endswith("px"), width
    return int(width[:-2])


def assert_crisp(image, fig) -> None:
    """The PNG has ≥ 2 pixels per CSS pixel, the widget's CSS size is the figure's, and
    only the width is set (height auto): the browser keeps the aspect, nothing stretches."""
    w, h = widgets.png_size(image.value.tobytes())
    css_w = _css_px(image.layout.width)
    assert w >= 2 * css_w
    fw, fh = fig.get_size_inches()
    assert css_w == round(fw * widgets.CSS_PX_PER_INCH)
    assert abs(w / h - fw / fh) < 0.01  # the figure's own aspect ratio
    assert image.layout.height == "auto" and image.layout.align_self == "flex-start"


def test_explorer_and_sweep_images_are_crisp_and_unstretched():
    ex = Explorer(messages=100)
    assert_crisp(ex.image, ex.figure)
    sw = Sweep(concurrency=(1, 2), prefetch=(1,), messages=50, arrival_rate=None,
               executor="serial")
    sw.run()
    assert_crisp(sw.image, sw.figure)


def test_live_monitor_sliders_change_the_running_consumer():
    gate = asyncio.Event()

    async def handler(body):
        await gate.wait()

    async def main():
        rt = wqnb.Runtime.from_yaml_string(LIVE_APP.replace("max_length: 5", "max_length: 50"))
        rt.register_function("live:handler", handler)
        await rt.start()
        mon = LiveMonitor(rt, interval=0.01)
        c = rt.consumers["live:workers"]
        assert (mon.concurrency.value, mon.prefetch.value) == (2, 3)
        await mon.publish_burst(20)
        await until(lambda: c.busy == 2 and len(c.buffer) == 3)
        mon.concurrency.value = 6  # a class moves the knob on a live system
        await until(lambda: c.busy == 6)
        mon.prefetch.value = 1
        await until(lambda: len(c.buffer) <= 1 and mon.updates == 2)
        gate.set()
        await rt.drain(timeout=10)
        await mon.stop()
        assert mon.concurrency.disabled and mon.prefetch.disabled
        return rt.timeline

    tl = asyncio.run(main())
    assert [ch[1:] for ch in tl.consumers["live:workers"].changes] == [(6, 3), (6, 1)]
    assert (tl.df["event"] == "ack").sum() == 20
