"""Timelines read back from disk, and merged across processes (issue 9 §4, DESIGN §7).

Hand-built timelines stand for what broker processes record (a worker sees a message
first at its ``deliver`` row; a killed worker leaves deliveries that never ended); real
``simulate()`` timelines with shifted origins check the merge on full-size data.
"""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

import wqnb
from wqnb import merge as wmerge
from wqnb.timeline import EVENTS, ConsumerInfo, QueueInfo, Timeline

matplotlib.use("Agg")

Q = "app.queue:tasks"
C = "app.queue:task_consumer"
ORIGIN = 1_767_225_600.0


def hand(rows: list[tuple], *, process: str, origin: float | None, consumer: bool = True) -> Timeline:
    """A timeline from ``(t, event, msg_id, worker, attempt, redelivered)`` rows on one queue."""
    t, ev, ids, worker, attempt, redelivered = (list(c) for c in zip(*rows, strict=True))
    has_c = [e not in ("publish", "publish_wait") for e in ev]
    df = pd.DataFrame({
        "t": np.array(t, dtype=float),
        "event": pd.Categorical(ev, categories=EVENTS),
        "queue": pd.Categorical([Q] * len(t)),
        "consumer": pd.Categorical([C if h else None for h in has_c], categories=[C] if consumer else []),
        "worker": pd.array([w if h else None for w, h in zip(worker, has_c, strict=True)], dtype="Int16"),
        "msg_id": pd.Categorical(ids),
        "attempt": np.array(attempt, dtype=np.int32),
        "error": pd.Categorical([None] * len(t), categories=[]),
        "depth": pd.array([0] * len(t), dtype="Int32"),
        **{g: pd.array([0 if h else None for h in has_c], dtype="Int32") for g in ("buffered", "busy", "unsettled")},
        "redelivered": np.array(redelivered, dtype=bool),
    })
    consumers = {C: ConsumerInfo(C, Q, 2, 3)} if consumer else {}
    return Timeline(df, queues={Q: QueueInfo(Q, 1000)}, consumers=consumers, origin_unix=origin, process=process)


def publisher() -> Timeline:
    return hand([(0.0, "publish", "m1", 0, 1, False), (0.1, "publish", "m2", 0, 1, False)],
                process="pub", origin=ORIGIN, consumer=False)


def worker(name: str, origin: float, rows: list[tuple]) -> Timeline:
    return hand(rows, process=name, origin=origin)


@pytest.fixture
def sim() -> Timeline:
    tl = wqnb.simulate(concurrency=2, prefetch=3, messages=60, arrival_rate=40.0, service_time=0.04,
                       failure_rate=0.2, max_attempts=2, seed=3)
    tl.origin_unix, tl.process = ORIGIN, "sim-a"
    return tl


# -- read ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_read_gives_back_what_save_wrote(tmp_path, sim, suffix):
    path = sim.save(tmp_path / f"tl{suffix}")
    back = Timeline.read(path)
    pd.testing.assert_frame_equal(back.df, sim.df, check_exact=True)
    assert back.queues == sim.queues and back.consumers == sim.consumers
    assert (back.origin_unix, back.process) == (ORIGIN, "sim-a")
    assert back.params["concurrency"] == 2 and back.params["service_time"] == "Constant(value=0.04)"
    pd.testing.assert_frame_equal(back.messages(), sim.messages())
    pd.testing.assert_series_equal(back.summary(), sim.summary())


def test_where_the_metadata_lives(tmp_path, sim):
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(sim.save(tmp_path / "tl.parquet")).metadata[wmerge.META_KEY])
    assert meta["process"] == "sim-a" and meta["format"] == wmerge.FORMAT
    assert "categories" not in meta["columns"]["msg_id"]  # Parquet keeps them itself
    sim.save(tmp_path / "tl.csv")
    side = json.loads((tmp_path / "tl.csv.json").read_text())
    assert side["consumers"]["sim:worker"]["prefetch"] == 3
    assert side["columns"]["event"]["categories"] == list(EVENTS)


def test_a_csv_without_its_sidecar_still_reads_with_wqnb_dtypes(tmp_path, sim):
    sim.df.to_csv(tmp_path / "plain.csv", index=False)
    back = Timeline.read(tmp_path / "plain.csv")
    assert back.origin_unix is None and back.consumers == {}
    assert isinstance(back.df["event"].dtype, pd.CategoricalDtype)
    assert str(back.df["worker"].dtype) == "Int16" and str(back.df["depth"].dtype) == "Int32"
    assert back.summary()["acked"] == sim.summary()["acked"]


def test_values_a_stale_sidecar_does_not_list_are_kept(tmp_path, sim):
    path = sim.save(tmp_path / "tl.csv")
    side = tmp_path / "tl.csv.json"
    meta = json.loads(side.read_text())
    meta["columns"]["msg_id"]["categories"] = meta["columns"]["msg_id"]["categories"][:3]
    side.write_text(json.dumps(meta))
    back = Timeline.read(path)
    assert back.df["msg_id"].notna().all() and back.df["msg_id"].nunique() == sim.df["msg_id"].nunique()


def test_ids_that_look_like_numbers_stay_text(tmp_path):
    tl = hand([(0.0, "deliver", "007", 0, 1, False), (0.1, "ack", "007", 0, 1, False)], process="w", origin=ORIGIN)
    back = Timeline.read(tl.save(tmp_path / "tl.csv"))
    assert list(back.df["msg_id"]) == ["007", "007"]


@pytest.mark.parametrize("name, text, match", [
    ("missing.parquet", None, "missing.parquet: no such timeline file"),
    ("tl.xlsx", "", r"tl.xlsx: unknown timeline format"),
    ("x.csv", "a,b\n1,2\n", r"x.csv: not a wqnb timeline \(no column t, event"),
])
def test_read_errors_name_the_file(tmp_path, name, text, match):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        Timeline.read(tmp_path / name)


def test_a_newer_format_is_refused(tmp_path, sim):
    path = sim.save(tmp_path / "tl.csv")
    side = tmp_path / "tl.csv.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "format": 99}))
    with pytest.raises(ValueError, match=r"tl.csv: timeline metadata format 99 is newer"):
        Timeline.read(path)


# -- merge ------------------------------------------------------------------------------


def test_merge_puts_processes_on_one_time_axis():
    # the worker started 0.5 s after the publisher: its t = 0 is the publisher's t = 0.5
    w = worker("w1", ORIGIN + 0.5, [(0.0, "deliver", "m1", 0, 1, False), (0.01, "start", "m1", 0, 1, False),
                                    (0.2, "ack", "m1", 0, 1, False)])
    tl = Timeline.merge([w, publisher()])
    assert tl.origin_unix == ORIGIN
    assert tl.df["t"].tolist() == pytest.approx([0.0, 0.1, 0.5, 0.51, 0.7])
    assert tl.df["process"].tolist() == ["pub", "pub", "w1", "w1", "w1"]
    assert isinstance(tl.df["process"].dtype, pd.CategoricalDtype)
    assert list(tl.consumers) == [f"{C}@w1"] and tl.consumers[f"{C}@w1"].prefetch == 3
    assert set(tl.df["consumer"].dropna()) == {f"{C}@w1"}
    assert set(tl.df["msg_id"].cat.categories) == {"m1", "m2"}
    m = tl.messages()
    assert len(m) == 1 and m.loc[0, "t_ready"] == pytest.approx(0.0)  # the publish, in the other process
    assert m.loc[0, "queue_wait"] == pytest.approx(0.5) and m.loc[0, "process"] == "w1"
    s = tl.summary()
    assert (s["published"], s["acked"]) == (2, 1)
    assert s["latency_mean_s"] == pytest.approx(0.7)
    assert tl.params["processes"]["w1"]["shift_s"] == pytest.approx(0.5)


def test_a_message_published_elsewhere_starts_at_its_deliver_row():
    w = worker("w1", ORIGIN, [(1.0, "deliver", "x", 0, 1, False), (1.5, "start", "x", 0, 1, False),
                              (2.0, "ack", "x", 0, 1, False)])
    for tl in (w, Timeline.merge([w])):
        m = tl.messages()
        assert m.loc[0, "t_ready"] == 1.0 and m.loc[0, "queue_wait"] == 0.0
        assert m.loc[0, "buffer_wait"] == 0.5 and m.loc[0, "outcome"] == "ack"
        assert tl.summary()["latency_mean_s"] == pytest.approx(1.0)


def test_a_killed_workers_messages_are_returned_when_the_broker_redelivers_them():
    # w1 took m1 and died while handling it (its last rows were saved by a checkpoint);
    # the broker redelivered m1 to w2, flagged, same attempt
    w1 = worker("w1", ORIGIN, [(0.2, "deliver", "m1", 0, 1, False), (0.3, "start", "m1", 0, 1, False)])
    w2 = worker("w2", ORIGIN, [(0.9, "deliver", "m1", 1, 1, True), (0.9, "start", "m1", 1, 1, True),
                               (1.1, "ack", "m1", 1, 1, False)])
    m = Timeline.merge([publisher(), w1, w2]).messages()
    assert m["process"].tolist() == ["w1", "w2"] and m["consumer"].tolist() == [f"{C}@w1", f"{C}@w2"]
    first, again = m.iloc[0], m.iloc[1]
    assert (first["outcome"], first["t_end"], first["redelivered"]) == ("returned", 0.9, False)
    assert (again["outcome"], again["attempt"], again["redelivered"]) == ("ack", 1, True)
    assert again["t_ready"] == 0.0  # ready since its publish, as far as anyone saw
    # alone, w1's timeline cannot know: the delivery is still in hand
    assert w1.messages()["outcome"].isna().all()


def test_per_consumer_gauges_are_per_process(sim):
    other = wqnb.simulate(concurrency=3, prefetch=2, messages=40, arrival_rate=40.0, service_time=0.04, seed=4)
    other.origin_unix, other.process = ORIGIN + 10.0, "sim-b"
    tl = Timeline.merge([sim, other])
    assert len(tl) == len(sim) + len(other)
    assert tl.df["t"].is_monotonic_increasing
    from_b = tl.df[tl.df["process"] == "sim-b"]
    assert from_b["t"].to_numpy() == pytest.approx(other.df["t"].to_numpy() + 10.0)
    assert (from_b["event"].astype(str).to_numpy() == other.df["event"].astype(str).to_numpy()).all()
    s, sa, sb = tl.summary(), sim.summary(), other.summary()
    for k in ("published", "delivered", "acked", "nacked", "dead_lettered"):
        assert s[k] == sa[k] + sb[k], k
    assert tl.consumers["sim:worker@sim-b"].concurrency == 3
    g = tl.gauges("sim:worker@sim-b")
    gb = other.gauges()
    for col in ("buffered", "busy", "unsettled"):  # its own consumer's gauges, shifted by 10 s
        at = np.searchsorted(g["t"].to_numpy(), gb["t"].to_numpy() + 10.0 - 1e-9)
        assert (g[col].to_numpy()[at] == gb[col].to_numpy()).all(), col
    with pytest.raises(ValueError, match="unknown consumer 'sim:worker'"):
        tl.gauges("sim:worker")  # the bare id is ambiguous in a merge: name the process
    ids = tl.df.groupby("process", observed=True)["msg_id"].nunique()
    assert ids["sim-a"] == 60 and ids["sim-b"] == 40


def test_plots_draw_a_merged_timeline(sim):
    from wqnb import plot

    w = worker("w1", ORIGIN + 1.0, [(0.0, "deliver", "m1", 0, 1, False), (0.1, "start", "m1", 0, 1, False),
                                    (0.3, "ack", "m1", 0, 1, False)])
    tl = Timeline.merge([publisher(), w, sim])
    fig = plot.overview(tl, f"{C}@w1")
    ax = plot.gantt(tl, "sim:worker@sim-a")
    assert len(ax.collections) >= 1 and fig.axes
    matplotlib.pyplot.close("all")


def test_merging_files_equals_merging_timelines(tmp_path, sim):
    w = worker("w1", ORIGIN + 2.0, [(0.0, "deliver", "m1", 0, 1, False), (0.2, "ack", "m1", 0, 1, False)])
    paths = [sim.save(tmp_path / "a.parquet"), w.save(tmp_path / "b.csv")]
    from_files, in_memory = Timeline.merge(paths), Timeline.merge([sim, w])
    pd.testing.assert_frame_equal(from_files.df, in_memory.df)
    assert from_files.consumers == in_memory.consumers
    # a merge saves and reads back like any timeline, process column included
    back = Timeline.read(from_files.save(tmp_path / "all.parquet"))
    pd.testing.assert_frame_equal(back.df, from_files.df)
    assert back.process == "sim-a+w1"


def test_a_merged_timeline_merges_again_keeping_its_process_names(sim):
    w1 = worker("w1", ORIGIN + 1.0, [(0.0, "deliver", "m1", 0, 1, False), (0.2, "ack", "m1", 0, 1, False)])
    w2 = worker("w2", ORIGIN + 3.0, [(0.0, "deliver", "m2", 0, 1, False), (0.2, "ack", "m2", 0, 1, False)])
    once = Timeline.merge([publisher(), w1])
    twice = Timeline.merge([once, w2])
    assert twice.df["process"].tolist() == ["pub", "pub", "w1", "w1", "w2", "w2"]
    assert twice.df["t"].tolist() == pytest.approx([0.0, 0.1, 1.0, 1.2, 3.0, 3.2])
    assert set(twice.consumers) == {f"{C}@w1", f"{C}@w2"}
    assert twice.params["processes"]["w2"]["shift_s"] == pytest.approx(3.0)


def test_merge_refuses_what_it_cannot_place(sim):
    no_origin = worker("w1", ORIGIN, [(0.0, "deliver", "m1", 0, 1, False)])
    no_origin.origin_unix = None
    with pytest.raises(ValueError, match=r"timeline 2 \(w1\) has no origin_unix"):
        Timeline.merge([sim, no_origin])
    with pytest.raises(ValueError, match=r"both recorded by process 'sim-a'"):
        Timeline.merge([sim, sim])
    with pytest.raises(ValueError, match="no timelines given"):
        Timeline.merge([])
    with pytest.raises(TypeError, match=r"expected Timelines or paths, got int \(item 1\)"):
        Timeline.merge([3])


def test_unnamed_processes_are_numbered():
    a = worker("", ORIGIN, [(0.0, "deliver", "m1", 0, 1, False)])
    b = worker("", ORIGIN, [(0.0, "deliver", "m2", 0, 1, False)])
    assert Timeline.merge([a, b]).df["process"].tolist() == ["p1", "p2"]
