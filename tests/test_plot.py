"""The plot functions draw what the timeline says, and only that.

A small hand-written timeline (every row known) pins what each figure shows; a real
simulation checks that large runs draw, and that the figures are labelled with units.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from wqnb import plot
from wqnb.timeline import EVENTS, ConsumerInfo, QueueInfo, Timeline

Q, C = "app:tasks", "app:worker"

# (t, event, worker, msg, attempt, error, depth, buffered, busy, unsettled)
# consumer: concurrency 2, prefetch 1; queue: max_length 3, dead letters after 2 attempts.
ROWS = [
    (0.0, "publish", None, "m1", 1, None, 1, None, None, None),
    (0.0, "publish", None, "m2", 1, None, 2, None, None, None),
    (0.0, "publish", None, "m3", 1, None, 3, None, None, None),
    (0.0, "publish_wait", None, "m4", 1, None, 3, None, None, None),
    (0.1, "deliver", None, "m1", 1, None, 2, 1, 0, 1),
    (0.1, "publish", None, "m4", 1, None, 3, None, None, None),
    (0.1, "start", 0, "m1", 1, None, 3, 0, 1, 1),
    (0.1, "deliver", None, "m2", 1, None, 2, 1, 1, 2),
    (0.1, "start", 1, "m2", 1, None, 2, 0, 2, 2),
    (0.1, "deliver", None, "m3", 1, None, 1, 1, 2, 3),
    (0.3, "ack", 0, "m1", 1, None, 1, 1, 1, 2),
    (0.3, "start", 0, "m3", 1, None, 1, 0, 2, 2),
    (0.3, "deliver", None, "m4", 1, None, 0, 1, 2, 3),
    (0.4, "nack", 1, "m2", 1, "boom", 0, 1, 1, 2),
    (0.4, "requeue", None, "m2", 2, None, 1, 1, 1, 2),
    (0.4, "start", 1, "m4", 1, None, 1, 0, 2, 2),
    (0.4, "deliver", None, "m2", 2, None, 0, 1, 2, 3),
    (0.5, "ack", 0, "m3", 1, None, 0, 1, 1, 2),
    (0.5, "start", 0, "m2", 2, None, 0, 0, 2, 2),
    (0.6, "ack", 1, "m4", 1, None, 0, 0, 1, 1),
    (0.7, "nack", 0, "m2", 2, "boom", 0, 0, 0, 0),
    (0.7, "dead_letter", None, "m2", 2, None, 0, 0, 0, 0),
]


def hand_timeline() -> Timeline:
    cols = ["t", "event", "worker", "msg_id", "attempt", "error", "depth", "buffered", "busy",
            "unsettled"]
    raw = pd.DataFrame(ROWS, columns=cols)
    on_consumer = ~raw["event"].isin(["publish", "publish_wait"])
    df = pd.DataFrame(
        {
            "t": raw["t"].astype(float),
            "event": pd.Categorical(raw["event"], categories=EVENTS),
            "queue": pd.Categorical([Q] * len(raw)),
            "consumer": pd.Categorical(np.where(on_consumer, C, None), categories=[C]),
            "worker": raw["worker"].astype("Int16"),
            "msg_id": pd.Categorical(raw["msg_id"]),
            "attempt": raw["attempt"].astype("int16"),
            "error": pd.Categorical(raw["error"]),
            **{g: raw[g].astype("Int32") for g in ("depth", "buffered", "busy", "unsettled")},
        }
    )
    return Timeline(
        df,
        queues={Q: QueueInfo(Q, 3, dead_letter="app:dead", max_attempts=2)},
        consumers={C: ConsumerInfo(C, Q, concurrency=2, prefetch=1)},
    )


@pytest.fixture
def tl() -> Timeline:
    return hand_timeline()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def bars(ax) -> list[tuple[float, float, float, str]]:
    """(start, end, lane, facecolor hex) of every Gantt bar on ``ax``, sorted."""
    out = []
    for coll in ax.collections:
        if not isinstance(coll, PolyCollection):
            continue
        color = matplotlib.colors.to_hex(coll.get_facecolor()[0])
        for path in coll.get_paths():
            v = path.vertices
            out.append((round(v[:, 0].min(), 6), round(v[:, 0].max(), 6),
                        round((v[:, 1].min() + v[:, 1].max()) / 2, 6), color))
    return sorted(out)


def test_gantt_has_one_bar_per_handled_delivery_coloured_by_outcome(tl):
    ax = plot.gantt(tl)
    ack, nack = plot.OUTCOME_COLORS["ack"], plot.OUTCOME_COLORS["nack"]
    assert bars(ax) == [
        (0.1, 0.3, 0.0, ack),   # m1 on worker 0
        (0.1, 0.4, 1.0, nack),  # m2, attempt 1, on worker 1
        (0.3, 0.5, 0.0, ack),   # m3
        (0.4, 0.6, 1.0, ack),   # m4
        (0.5, 0.7, 0.0, nack),  # m2, attempt 2 (a retry), on worker 0
    ]
    hatched = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_hatch()]
    assert [len(c.get_paths()) for c in hatched] == [1]  # the one retry
    # the dead letter is marked where m2's last attempt ended, on its lane
    (marks,) = [c for c in ax.collections if not isinstance(c, PolyCollection)]
    assert marks.get_offsets().tolist() == [[0.7, 0.0]]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["ack", "nack", "retry", "dead-lettered"]
    assert ax.get_xlabel() == "time (s)" and ax.get_ylabel() == "worker"
    assert "concurrency 2, prefetch 1" in ax.get_title(loc="left")


def test_gantt_zoom_and_given_axes(tl):
    _fig, ax = plt.subplots()
    assert plot.gantt(tl, ax=ax, start=0.2, end=0.5) is ax
    assert ax.get_xlim() == (0.2, 0.5)


def test_gantt_rejects_unknown_consumer(tl):
    with pytest.raises(ValueError, match="unknown consumer 'nope'.*app:worker"):
        plot.gantt(tl, "nope")


def labels_of(ax) -> list[str]:
    return [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def line(ax, label):
    (ln,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return ln


def test_gauges_draw_every_gauge_and_its_limit(tl):
    ax = plot.gauges(tl)
    assert labels_of(ax) == [
        "queue depth (ready)", "max_length = 3",
        "buffered (prefetched, not started)", "prefetch = 1",
        "busy workers", "concurrency = 2",
        "unsettled (delivered, not acked)", "prefetch + concurrency = 3",
    ]
    assert line(ax, "concurrency = 2").get_ydata()[0] == 2
    busy = line(ax, "busy workers")
    assert busy.get_drawstyle() == "steps-post"
    assert np.nanmax(busy.get_ydata()) == 2  # never above concurrency
    assert np.nanmax(line(ax, "unsettled (delivered, not acked)").get_ydata()) == 3
    assert ax.get_xlabel() == "time (s)" and ax.get_ylabel() == "messages"


def test_gauges_shade_the_publisher_wait(tl):
    assert plot.publish_wait_spans(tl) == [(0.0, pytest.approx(0.1))]
    ax = plot.gauges(tl, which=("depth",))
    (shade,) = [c for c in ax.collections if c.get_label() == "publisher waiting"]
    (path,) = shade.get_paths()
    assert path.vertices[:, 0].min() == 0.0 and path.vertices[:, 0].max() == pytest.approx(0.1)
    assert len(plot.gauges(tl, which=("depth",), waits=False).collections) == 0


def test_gauges_rejects_unknown_gauge(tl):
    with pytest.raises(ValueError, match="unknown gauge 'ready'"):
        plot.gauges(tl, which=("ready",))


def test_backpressure_puts_queue_above_consumer(tl):
    fig = plot.backpressure(tl)
    top, bottom = fig.axes
    assert labels_of(top) == ["queue depth (ready)", "max_length = 3"]
    assert "prefetch = 1" in labels_of(bottom)
    assert top.get_shared_x_axes().joined(top, bottom)


def test_latency_split_hist_and_cdf(tl):
    m = tl.messages()
    fig = plot.latency_split(tl)
    ax_h, ax_c = fig.axes
    # each histogram counts every delivery attempt once
    per_kind = {p.get_label(): p for p in ax_h.patches}
    assert set(per_kind) == {"in the queue", "in the prefetch buffer", "in service"}
    # the CDF of service time ends at the longest service, at fraction 1
    svc = line(ax_c, "in service")
    assert svc.get_ydata()[-1] == 1.0
    assert svc.get_xdata()[-1] == pytest.approx(m["service"].max())
    assert ax_h.get_xlabel() == "time (s)" and ax_h.get_ylabel() == "deliveries"
    with pytest.raises(ValueError, match="kind must be"):
        plot.latency(tl, kind="violin")


SWEEP = pd.DataFrame(
    [(c, p, 10.0 * c + p, 1.0 / c + 0.01 * p) for c in (1, 2, 4) for p in (1, 10, 100)],
    columns=["concurrency", "prefetch", "throughput_per_s", "latency_p99_s"],
)


def test_sweep_heatmap_cells_and_annotations():
    ax = plot.sweep_heatmap(SWEEP, "throughput_per_s")
    (im,) = ax.images
    data = im.get_array()
    assert data.shape == (3, 3)
    assert data[2, 1] == 10.0 * 4 + 10  # row concurrency 4, column prefetch 10
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "10", "100"]
    assert "50" in [t.get_text() for t in ax.texts]
    assert ax.get_xlabel() == "prefetch" and ax.get_ylabel() == "concurrency"
    assert ax.figure.axes[-1].get_ylabel() == "throughput (msg/s)"


def test_sweep_lines_one_per_concurrency():
    ax = plot.sweep_lines(SWEEP, "latency_p99_s")
    assert labels_of(ax) == ["concurrency 1", "concurrency 2", "concurrency 4"]
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "latency p99 (s)"
    fig = plot.sweep(SWEEP)
    assert len(fig.axes) == 4 + 2  # two heatmaps (+ colorbars) and two line plots


def test_overview_renders_to_png(tl):
    fig = plot.overview(tl)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    assert buf.getvalue().startswith(b"\x89PNG")
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert any("who handled what" in t for t in titles)


def test_step_thinning_keeps_the_picture():
    rng = np.random.default_rng(0)
    t = np.sort(rng.random(50_000)) * 100
    v = np.cumsum(rng.choice([-1.0, 1.0], 50_000))
    x, y = plot._steps(t, v, max_points=2000)
    assert len(x) <= 2000
    assert (x[0], y[0], x[-1], y[-1]) == (t[0], v[0], t[-1], v[-1])
    # each of the 500 time bins (under 2 pixels on a wide figure) keeps its extremes;
    # checked on groups of 10 bins, away from float rounding at the bin edges
    edges = t[0] + (t[-1] - t[0]) * np.arange(0, 501, 10) / 500
    for lo, hi in zip(edges[:-1] + 1e-9, edges[1:] - 1e-9, strict=True):
        sel, kept = (t >= lo) & (t < hi), (x >= lo) & (x < hi)
        assert y[kept].max() == v[sel].max() and y[kept].min() == v[sel].min()
    # a series that rarely changes loses only its repeated rows: exact
    steady = np.repeat([0.0, 3.0, 1.0], 1000)
    x, y = plot._steps(np.arange(3000.0), steady)
    assert y.tolist() == [0.0, 3.0, 1.0, 1.0] and x.tolist() == [0.0, 1000.0, 2000.0, 2999.0]


def test_real_run_with_failures_marks_every_dead_letter():
    import wqnb

    tl = wqnb.simulate(concurrency=3, prefetch=5, messages=300, failure_rate=0.3,
                       max_attempts=2, seed=4)
    s = tl.summary()
    assert s["dead_lettered"] > 0
    ax = plot.gantt(tl, "sim:worker")
    (marks,) = [c for c in ax.collections if not isinstance(c, PolyCollection)]
    assert len(marks.get_offsets()) == s["dead_lettered"]
    n_bars = sum(len(c.get_paths()) for c in ax.collections if isinstance(c, PolyCollection))
    assert n_bars == s["acked"] + s["nacked"]
    g = plot.gauges(tl)
    busy = line(g, "busy workers").get_ydata()
    assert np.nanmax(busy) == 3  # saturated, never above concurrency
