"""The timeline (DESIGN §5): schema, attempt numbering, determinism, export, and views."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest
from _helpers import C, Q, frame, rows, runtime, virtual

import wqnb
from wqnb.timeline import Timeline

CHUNK = 1 << 15  # a size past any buffering a recorder might do

COLUMNS = ["t", "event", "queue", "consumer", "worker", "msg_id", "attempt", "error",
           "depth", "buffered", "busy", "unsettled", "redelivered"]
EVENTS = {"publish", "publish_wait", "deliver", "start", "ack", "nack", "requeue", "dead_letter"}


def small_run() -> wqnb.Runtime:
    """Two workers, prefetch 2, 1 s per message; m1 fails once. Exact on virtual time."""

    async def handler(body, d):
        await asyncio.sleep(1)
        if body == "1" and d.attempt == 1:
            raise ValueError("bad one")

    async def main():
        rt = runtime(handler, concurrency=2, prefetch=2)
        await rt.start()
        for i in range(4):
            await rt.publish(Q, i)
        await rt.drain()
        await rt.stop()
        return rt

    return virtual(main)


@pytest.fixture(scope="module")
def sim() -> Timeline:
    return wqnb.simulate(concurrency=3, prefetch=4, messages=300, arrival_rate=50.0,
                         service_time=wqnb.Exponential(0.05), failure_rate=0.1, max_length=5, seed=11)


def test_columns_and_dtypes(sim):
    df = sim.df
    assert list(df.columns) == COLUMNS
    assert df["t"].dtype == np.float64
    assert set(df["event"].astype(str)) <= EVENTS
    assert {"publish", "publish_wait", "deliver", "start", "ack", "nack", "requeue"} <= set(df["event"].astype(str))
    for g in ("depth", "buffered", "busy", "unsettled", "worker"):
        assert pd.api.types.is_integer_dtype(df[g])
    pubs = df[df["event"] == "publish"]
    assert pubs["consumer"].isna().all() and pubs["busy"].isna().all() and pubs["worker"].isna().all()
    assert df["t"].is_monotonic_increasing and df["t"].iloc[0] >= 0


def test_small_run_exact_rows():
    df = small_run().timeline.df
    f = frame(df)
    acks = f[f["event"] == "ack"].set_index("m")
    assert acks["t"].to_dict() == {0: 1.0, 2: 2.0, 3: 2.0, 1: 3.0}
    assert acks["attempt"].to_dict() == {0: 1, 2: 1, 3: 1, 1: 2}
    nack = rows(df, "nack")
    assert (nack.loc[0, "m"], nack.loc[0, "t"], nack.loc[0, "attempt"], nack.loc[0, "error"]) == (1, 1.0, 1, "bad one")
    req = rows(df, "requeue")
    assert (req.loc[0, "m"], req.loc[0, "t"], req.loc[0, "attempt"]) == (1, 1.0, 2)
    # start rows name the worker; deliver rows do not
    assert rows(df, "start")["worker"].notna().all()
    assert rows(df, "deliver")["worker"].isna().all()
    assert set(df["queue"].astype(str)) == {Q}
    assert set(df["consumer"].dropna().astype(str)) == {C}


def test_same_seed_same_timeline_except_msg_id():
    kw = {"concurrency": 2, "prefetch": 3, "messages": 300, "arrival_rate": 40.0,
              "service_time": wqnb.Exponential(0.05), "failure_rate": 0.2, "max_length": 4,
              "max_attempts": 3, "requeue_delay": 0.1, "seed": 42}
    a, b = wqnb.simulate(**kw), wqnb.simulate(**kw)
    pd.testing.assert_frame_equal(a.df.drop(columns="msg_id"), b.df.drop(columns="msg_id"))
    assert a.df["msg_id"].cat.codes.tolist() == b.df["msg_id"].cat.codes.tolist()
    assert set(a.df["msg_id"].astype(str)).isdisjoint(set(b.df["msg_id"].astype(str)))  # ids are unique per run
    c = wqnb.simulate(**{**kw, "seed": 43})
    assert not a.df.drop(columns="msg_id").equals(c.df.drop(columns="msg_id"))


def test_failure_rate_does_not_move_arrivals():
    kw = {"messages": 200, "arrival_rate": 30.0, "seed": 9}
    a = wqnb.simulate(failure_rate=0.0, **kw).df
    b = wqnb.simulate(failure_rate=0.3, max_attempts=5, **kw).df
    ta = a.loc[a["event"] == "publish", "t"].to_numpy()
    tb = b.loc[(b["event"] == "publish") & (b["queue"] == "sim:tasks"), "t"].to_numpy()
    assert np.array_equal(ta, tb)


def test_all_at_t0_and_constant_service_is_exact():
    tl = wqnb.simulate(concurrency=4, prefetch=10, messages=40, arrival_rate=None, service_time=0.5, seed=1)
    s = tl.summary()
    assert s["duration_s"] == 5.0
    assert s["throughput_per_s"] == 8.0
    assert s["utilisation"] == 1.0
    assert s["service_mean_s"] == 0.5
    assert (s["published"], s["acked"], s["max_busy"], s["max_buffered"], s["max_unsettled"]) == (40, 40, 4, 10, 14)
    # latency of the k-th round of 4 is 0.5 k: mean over rounds 1..10 is 2.75
    assert s["latency_mean_s"] == 2.75
    assert s["latency_p50_s"] == pytest.approx(2.75)


def test_recording_past_a_chunk_keeps_every_row_in_order():
    n = CHUNK // 4 + 500  # about 4 rows a message: more than one packed chunk
    tl = wqnb.simulate(concurrency=8, prefetch=20, messages=n, arrival_rate=None, service_time=0.001, max_length=n)
    df = tl.df
    counts = df["event"].value_counts()
    assert (counts["publish"], counts["deliver"], counts["start"], counts["ack"]) == (n, n, n, n)
    assert len(df) > CHUNK
    assert df["t"].is_monotonic_increasing
    assert df.loc[df["event"] == "publish", "msg_id"].cat.codes.tolist() == list(range(n))


def test_csv_round_trip(tmp_path, sim):
    path = sim.save(tmp_path / "tl.csv")
    back = pd.read_csv(path)
    assert list(back.columns) == COLUMNS
    assert len(back) == len(sim.df)
    np.testing.assert_array_equal(back["t"].to_numpy(), sim.df["t"].to_numpy())
    assert back["event"].tolist() == sim.df["event"].astype(str).tolist()
    assert back["msg_id"].tolist() == sim.df["msg_id"].astype(str).tolist()
    for g in ("depth", "busy", "unsettled", "attempt"):
        np.testing.assert_array_equal(back[g].fillna(-1).to_numpy(), sim.df[g].astype("float").fillna(-1).to_numpy())
    assert back["error"].dropna().tolist() == sim.df["error"].dropna().astype(str).tolist()


def test_parquet_round_trip_keeps_types_and_views(tmp_path, sim):
    path = sim.save(tmp_path / "tl.parquet")
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, sim.df)
    loaded = Timeline(back, queues=sim.queues, consumers=sim.consumers)
    pd.testing.assert_frame_equal(loaded.messages(), sim.messages())
    pd.testing.assert_series_equal(loaded.summary(), sim.summary())


def test_save_rejects_unknown_suffix(tmp_path, sim):
    with pytest.raises(ValueError, match=r"unknown timeline format \(use \.csv or \.parquet\)$"):
        sim.save(tmp_path / "tl.xlsx")


def test_messages_view():
    m = small_run().timeline.messages()
    assert list(m.columns) == ["msg_id", "queue", "consumer", "worker", "attempt", "t_ready", "t_deliver",
                               "t_start", "t_end", "outcome", "dead_lettered", "queue_wait", "buffer_wait",
                               "service", "error", "redelivered", "t_arrival"]
    assert len(m) == 5  # four messages, one of them twice
    assert m["outcome"].astype(str).tolist().count("nack") == 1
    assert (m["service"] == 1.0).all()
    retry = m[m["attempt"] == 2].iloc[0]
    assert (retry["t_ready"], retry["t_start"], retry["t_end"], retry["error"]) == (1.0, 2.0, 3.0, None)
    first = m[m["outcome"] == "nack"].iloc[0]
    assert first["error"] == "bad one" and first["t_end"] == 1.0
    assert not m["dead_lettered"].any()
    assert (m["queue_wait"] >= 0).all() and (m["buffer_wait"] >= 0).all()


def test_messages_view_marks_returned_and_dead_lettered():
    tl = wqnb.simulate(concurrency=1, prefetch=3, messages=10, arrival_rate=None, service_time=1.0,
                       failure_rate=1.0, max_attempts=2, seed=3)
    m = tl.messages()
    assert m["dead_lettered"].sum() == 10
    assert set(m["outcome"].astype(str)) == {"nack"}
    tl2 = wqnb.simulate(concurrency=1, prefetch=3, messages=10, arrival_rate=None, service_time=1.0,
                        seed=3, until=2.5)
    m2 = tl2.messages()
    assert set(m2["outcome"].astype(str)) == {"ack", "returned"}
    # at t = 2.5 m2 is running (it may finish: stop_timeout 10 s) and m3..m5 are buffered
    assert m2.loc[m2["outcome"] == "ack", "t_end"].tolist() == [1.0, 2.0, 3.0]
    returned = m2[m2["outcome"] == "returned"]
    assert len(returned) == 3 and (returned["t_end"] == 2.5).all() and returned["t_start"].isna().all()


def test_gauges_view_is_a_step_series_of_the_consumer_and_its_queue():
    tl = small_run().timeline
    g = tl.gauges()
    assert list(g.columns) == ["t", "event", "depth", "buffered", "busy", "unsettled"]
    assert g.attrs == {"consumer": C, "queue": Q}
    # one row per instant: the state after the last event at that time
    assert g["t"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert g.iloc[0][["depth", "buffered", "busy", "unsettled"]].tolist() == [0, 2, 2, 4]
    assert g.iloc[-1][["depth", "buffered", "busy", "unsettled"]].tolist() == [0, 0, 0, 0]
    from wqnb.views import gauges

    every = gauges(tl, instants=False)
    assert len(every) == len(tl.df)  # one queue, one consumer: every row is theirs
    assert every["busy"].max() == 2 and every["buffered"].max() == 2 and every["unsettled"].max() == 4
    assert every["depth"].iloc[0] == 1 and every["event"].iloc[0] == "publish"


def test_summary_keys_and_counts():
    s = small_run().timeline.summary()
    for key in ("published", "delivered", "acked", "nacked", "requeued", "dead_lettered", "duration_s",
                "throughput_per_s", "latency_mean_s", "latency_p50_s", "latency_p90_s", "latency_p99_s",
                "queue_wait_mean_s", "buffer_wait_mean_s", "service_mean_s", "utilisation", "max_depth",
                "max_buffered", "max_busy", "max_unsettled", "publish_waits", "publish_wait_total_s"):
        assert key in s.index
    assert (s["published"], s["delivered"], s["acked"], s["nacked"], s["requeued"]) == (4, 5, 4, 1, 1)
    assert s["duration_s"] == 3.0
    assert s["utilisation"] == pytest.approx(5 / 6)  # five busy seconds out of 2 workers × 3 s
    assert s["latency_mean_s"] == (1 + 3 + 2 + 2) / 4


def test_gauges_of_a_consumer_the_run_does_not_have_is_an_error_naming_the_ones_it_has():
    tl = wqnb.simulate(messages=5, seed=1)
    with pytest.raises(ValueError, match=r"unknown consumer 'sim:wrker' \(this timeline has: sim:worker\)"):
        tl.gauges("sim:wrker")
    assert len(tl.gauges("sim:worker")) > 0


def test_publish_wait_total_is_the_sum_of_each_waits_time_to_its_publish():
    tl = wqnb.simulate(concurrency=1, prefetch=1, messages=60, arrival_rate=None, service_time=0.01,
                       max_length=5, seed=3)
    df = tl.df
    waits = df[df["event"] == "publish_wait"]
    pub = df[df["event"] == "publish"]
    published = pd.Series(pub["t"].to_numpy(), index=pub["msg_id"].astype(str))
    expected = float((published.reindex(waits["msg_id"].astype(str)).to_numpy() - waits["t"].to_numpy()).sum())
    assert len(waits) and expected > 0
    assert tl.summary()["publish_wait_total_s"] == pytest.approx(expected)
