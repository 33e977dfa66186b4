"""The replay reads the system's state at an instant back from the timeline (issue 13 §2),
and Flower's worker table and the summary's units (§4) — without a browser."""

from __future__ import annotations

import numpy as np
import pytest

import wqnb
from wqnb.replay import diagram_svg, state_at, workers
from wqnb.widgets import Replay


@pytest.fixture(scope="module")
def run():
    # overloaded (120/s into 80/s of workers), a small queue, some failures and retries
    return wqnb.simulate(concurrency=4, prefetch=10, messages=400, arrival_rate=120.0,
                         service_time=wqnb.Exponential(0.05), max_length=20,
                         failure_rate=0.1, max_attempts=2, seed=4)


def test_state_at_chosen_instants_equals_the_timelines_gauges(run):
    g = run.gauges()
    t = g["t"].to_numpy()
    m = run.messages()
    for k in np.linspace(0, len(g) - 1, 25).astype(int):
        s = state_at(run, float(t[k]))
        row = g.iloc[k]
        assert (s.depth, s.buffered, s.busy, s.unsettled) == (
            row["depth"], row["buffered"], row["busy"], row["unsettled"])
        # the messages drawn agree with the gauges
        assert len(s.buffer) == s.buffered
        assert sum(v is not None for v in s.workers.values()) == s.busy
        assert s.unsettled == s.buffered + s.busy
        # each worker's message is the one messages() has it running at that instant
        for w, mid in s.workers.items():
            if mid is not None:
                (hit,) = m[(m["msg_id"] == mid) & (m["t_start"] <= t[k])
                           & ~(m["t_end"] <= t[k])]["worker"].tolist()
                assert hit == w
        df = run.df[run.df["t"] <= t[k]]
        assert s.acked == int((df["event"] == "ack").sum())
        assert s.nacked == int((df["event"] == "nack").sum())
        assert s.dead_lettered == int(((df["event"] == "dead_letter")).sum())


def test_publisher_waiting_while_the_queue_is_full(run):
    waits = run.df[run.df["event"] == "publish_wait"]
    assert len(waits)
    t_wait = float(waits["t"].iloc[0])
    s = state_at(run, t_wait)
    assert s.publisher_waiting == 1 and s.depth == s.max_length == 20
    assert state_at(run, 0.0).publisher_waiting == 0
    end = state_at(run, float(run.df["t"].max()))
    assert end.publisher_waiting == 0 and end.busy == 0 and end.buffer == ()


def test_diagram_draws_the_snapshot(run):
    s = state_at(run, 2.0)
    svg = diagram_svg(s)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("class='slot ready full'") == s.depth
    assert svg.count("class='slot buffer full'") == s.buffered
    assert svg.count("class='worker busy'") == s.busy
    assert f"acked <tspan font-weight='bold'>{s.acked:,}</tspan>" in svg
    assert f"ready {s.depth:,} / max_length 20" in svg


def test_replay_slider_and_play_change_the_frame(run):
    r = Replay(run, frames=50)
    assert r.index == 0 and r.snapshot.t == 0.0
    first = r.frame.value
    r.slider.value = 20  # what dragging the slider does
    assert r.index == 20 and r.frame.value != first
    assert r.snapshot == state_at(run, r.times[20])
    r.play.value = 30  # what a tick of Play does (jslinked to the slider in a browser)
    assert r.index == 30 and r.slider.value == 30
    r.step()
    assert r.index == 31 and r.play.value == 31
    r.seek(1e9)
    assert r.index == 49 and r.snapshot.t == pytest.approx(float(run.df["t"].max()))
    data, _meta = r._repr_mimebundle_()
    assert data["text/plain"] == repr(r) and data["image/svg+xml"] == r.frame.value
    with pytest.raises(ValueError, match="frames"):
        Replay(run, frames=1)


def test_flower_worker_table(run):
    table = workers(run)
    m = run.messages()
    assert list(table.index) == [0, 1, 2, 3]
    assert table["handled"].sum() == int(m["outcome"].isin(["ack", "nack"]).sum())
    assert table["failed"].sum() == int((m["outcome"] == "nack").sum())
    assert ((table["utilisation"] > 0.8) & (table["utilisation"] <= 1.0)).all()  # overloaded
    assert (table["service_p90_s"] >= table["service_mean_s"]).all()
    assert (table["current"] == "").all()  # at the end nobody holds anything
    mid = workers(run, at=2.0)
    s = state_at(run, 2.0)
    assert mid["current"].tolist() == [s.workers[w] or "" for w in range(4)]


def test_summary_counts_are_integers_and_durations_have_units(run):
    s = run.summary()
    text = repr(s)
    assert "published" in text and "400" in text and "400.0" not in text
    line = next(ln for ln in text.splitlines() if ln.startswith("duration_s"))
    assert line.endswith(" s")
    line = next(ln for ln in text.splitlines() if ln.startswith("latency_p50_s"))
    assert line.endswith(" ms")
    assert next(ln for ln in text.splitlines() if ln.startswith("throughput_per_s")).endswith("/s")
    # still a float Series: indexable, roundable, and a DataFrame of several
    assert s["published"] == 400 and s.round(2)["duration_s"] == round(s["duration_s"], 2)
    assert wqnb.views.format_seconds(0.0000123) == "12.3 µs"


def test_latency_from_arrival_counts_the_blocked_publisher(run):
    m = run.messages()
    assert (m["t_arrival"] <= m["t_ready"]).all()
    s = run.summary()
    waited = run.df[run.df["event"] == "publish_wait"]
    assert len(waited) and s["e2e_latency_mean_s"] > s["latency_mean_s"]
    free = wqnb.simulate(messages=200, arrival_rate=20.0, seed=1).summary()
    assert free["e2e_latency_mean_s"] == pytest.approx(free["latency_mean_s"])
