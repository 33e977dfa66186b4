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
    assert set(labels_of(ax)) == {
        "queue depth (ready)", "max_length = 3",
        "buffered (prefetched, not started)", "prefetch = 1",
        "busy workers", "concurrency = 2",
        "unsettled (delivered, not acked)", "prefetch + concurrency = 3",
    }
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
    assert ax.figure.axes[-1].get_ylabel() == "throughput (msg/s) (higher is better)"


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


# -- reading at a glance (issue 13 §1) ------------------------------------------------------


def _bbox_overlap(a, b) -> bool:
    return a.x0 < b.x1 - 0.5 and b.x0 < a.x1 - 0.5 and a.y0 < b.y1 - 0.5 and b.y0 < a.y1 - 0.5


def test_axis_scales_to_the_data_and_names_a_far_limit():
    # prefetch 800 on a consumer that is never overloaded: the values stay around 10
    run = wqnb_simulate(concurrency=4, prefetch=800, messages=400, arrival_rate=60.0,
                        service_time=0.05, seed=1)
    ax = plot.gauges(run, which=("buffered", "busy", "unsettled"))
    top = max(np.nanmax(ln.get_ydata()) for ln in ax.get_lines() if ln.get_gid()
              and ln.get_gid().startswith("gauge:"))
    assert top < 50
    assert ax.get_ylim()[1] < 2 * max(top, 4)  # the data's scale, not the limit's (804)
    assert plot.far_limits(ax) == ["prefetch = 800 ↑", "prefetch + concurrency = 804 ↑"]
    assert "prefetch = 800" not in labels_of(ax)  # not drawn as a line far off the scale
    assert "concurrency = 4" in labels_of(ax)     # a near limit still is


def test_buffered_and_unsettled_have_distinct_styles(tl):
    ax = plot.gauges(tl)
    by = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
    buf, uns = by["gauge:buffered"], by["gauge:unsettled"]
    assert uns.get_linewidth() >= 3 * buf.get_linewidth()  # a wide band under a thin line
    assert uns.get_alpha() < 0.5 and buf.get_alpha() in (None, 1)
    assert uns.get_zorder() < buf.get_zorder()  # drawn first: the thin line stays on top


def test_legends_never_cover_data():
    run = wqnb_simulate(concurrency=4, prefetch=10, messages=300, arrival_rate=150.0,
                        failure_rate=0.2, max_attempts=3, max_length=30, seed=2)
    fig = plot.overview(run)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    checked = 0
    for ax in fig.axes[:4]:  # the Gantt, the two gauge panels and the latency histogram
        legend = ax.get_legend()
        assert legend is not None
        assert not _bbox_overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer))
        checked += 1
    assert checked == 4
    ax = plot.gantt(run)
    ax.figure.canvas.draw()
    r = ax.figure.canvas.get_renderer()
    assert not _bbox_overlap(ax.get_legend().get_window_extent(r), ax.get_window_extent(r))


def test_dead_letter_mark_is_large_and_above_the_bars(tl):
    ax = plot.gantt(tl)
    (mark,) = [c for c in ax.collections if c.get_gid() == "dead-letters"]
    bars_z = max(c.get_zorder() for c in ax.collections if isinstance(c, PolyCollection))
    assert mark.get_zorder() > bars_z
    assert mark.get_sizes()[0] >= 80
    assert matplotlib.colors.to_hex(mark.get_edgecolor()[0]) == "#ffffff"  # seen on any bar


def test_highlight_follows_one_message_across_lanes(tl):
    ax = plot.gantt(tl, highlight="m2")
    (ring,) = [c for c in ax.collections if c.get_gid() == "highlight"]
    spans = sorted((round(p.vertices[:, 0].min(), 6),
                    round((p.vertices[:, 1].min() + p.vertices[:, 1].max()) / 2, 6))
                   for p in ring.get_paths())
    assert spans == [(0.1, 1.0), (0.5, 0.0)]  # attempt 1 on worker 1, attempt 2 on worker 0
    (path,) = [ln for ln in ax.get_lines() if ln.get_gid() == "highlight-path"]
    assert list(path.get_xdata()) == [0.4, 0.5] and list(path.get_ydata()) == [1.0, 0.0]
    # few bars: each is labelled with its message
    assert sorted(t.get_text() for t in ax.texts if t.get_gid() == "bar-label") == [
        "m1", "m2", "m2", "m3", "m4"]
    with pytest.raises(ValueError, match="highlight"):
        plot.gantt(tl, highlight="nope")


def test_short_ids_number_the_runtime_ids():
    assert plot.short_id("60800834-baa3-47a8-83f6-000000000011") == "#17"
    assert plot.short_id("m2") == "m2"


def test_heatmaps_of_opposite_meaning_use_opposite_scales_and_log_when_spanning_decades():
    results = SWEEP.assign(latency_p99_s=[10.0 ** -k for k in range(9)])
    fig = plot.sweep(results, ("throughput_per_s", "latency_p99_s"))
    heat = [ax for ax in fig.axes if ax.images]
    thr, lat = (ax.images[0] for ax in heat)
    assert thr.get_cmap().name == "viridis" and lat.get_cmap().name == "magma_r"
    # yellow means good on both: high throughput, low latency
    assert thr.cmap(thr.norm(thr.get_array().max()))[0] > 0.9
    assert lat.cmap(lat.norm(lat.get_array().min()))[0] > 0.9
    assert isinstance(lat.norm, matplotlib.colors.LogNorm)
    assert not isinstance(thr.norm, matplotlib.colors.LogNorm)
    lines_ax = [ax for ax in fig.axes if not ax.images and ax.get_lines()]
    assert [ax.get_yscale() for ax in lines_ax] == ["linear", "log"]


def test_rabbitmq_ready_unacked_stack_and_rates(tl):
    s = plot.ready_unacked_series(tl)
    g = tl.gauges()
    assert s["ready"].tolist() == g["depth"].tolist()
    assert s["unacked"].tolist() == g["unsettled"].tolist()
    r = plot.rates_series(tl, bin=0.5)
    width = r.attrs["bin"]
    assert width == 0.5 and r["t"].tolist() == [0.0, 0.5]
    assert (r["publish"] * width).sum() == 4 and (r["ack"] * width).sum() == 3
    assert (r["redeliver"] * width).sum() == 1 and (r["nack"] * width).sum() == 2
    fig = plot.rabbitmq(tl, bin=0.5)
    ax_q, ax_r = fig.axes
    assert {c.get_gid() for c in ax_q.collections} >= {"stack:ready", "stack:unacked"}
    assert {ln.get_gid() for ln in ax_r.get_lines()} >= {"rate:publish", "rate:deliver", "rate:ack"}
    assert ax_r.get_ylabel() == "messages/s (per 0.5 s)"
    with pytest.raises(ValueError, match="unknown queue"):
        plot.rabbitmq(tl, "nope")


def wqnb_simulate(**kwargs):
    import wqnb

    return wqnb.simulate(**kwargs)


def test_erlang_c_curves_with_measured_points_and_their_spread():
    from wqnb.theory import erlang_c

    measured = pd.DataFrame({"servers": [2, 2, 2, 4], "utilisation": [0.5, 0.5, 0.5, 0.8],
                             "wait": [0.010, 0.020, 0.015, 0.05]})
    ax = plot.erlang_c_curves(measured, service_rate=20.0, servers=(2, 4))
    curve = next(ln for ln in ax.get_lines() if ln.get_gid() == "theory:2")
    x, y = curve.get_xdata(), curve.get_ydata()
    k = int(np.argmin(abs(x - 0.5)))
    assert y[k] == pytest.approx(erlang_c(2, x[k] * 2 * 20.0, 20.0).wait)
    (pts,) = [c for c in ax.containers if c.lines[0].get_gid() == "measured:2"]
    mean_line = pts.lines[0]
    assert list(mean_line.get_xdata()) == [0.5] and mean_line.get_ydata()[0] == pytest.approx(0.015)
    seg = pts.lines[2][0].get_segments()[0]  # the bar: lowest to highest of the seeds
    assert seg[0][1] == pytest.approx(0.010) and seg[1][1] == pytest.approx(0.020)
    assert ax.get_yscale() == "log"
