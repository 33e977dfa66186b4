"""The benchmark baselines measure what they claim to (benchmarks/_baselines.py)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections import Counter
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "_baselines.py"
_spec = importlib.util.spec_from_file_location("wqnb_bench_baselines", _path)
bl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bl)


@pytest.mark.parametrize("concurrency,prefetch", [(1, 1), (4, 10), (64, 100)])
def test_bare_pipeline_records_one_deliver_then_one_ack_per_message(concurrency, prefetch):
    events: list = []
    rate = bl.bare_asyncio_pipeline(500, concurrency, prefetch, record=True, events=events)
    assert rate > 0
    assert Counter(kind for _, _, kind in events) == {"deliver": 500, "ack": 500}
    first: dict[int, str] = {}
    for _t, msg_id, kind in events:
        first.setdefault(msg_id, kind)
    assert set(first) == set(range(500)) and set(first.values()) == {"deliver"}
    times = [t for t, _, _ in events]
    assert times == sorted(times)


def test_bare_pipeline_without_record_appends_nothing():
    events: list = []
    bl.bare_asyncio_pipeline(200, 4, 10, record=False, events=events)
    assert events == []


def test_bare_pipeline_runs_from_inside_a_running_loop():
    async def cell():  # what a notebook cell is: code on a running loop
        return bl.bare_asyncio_pipeline(200, 2, 5)

    assert asyncio.run(cell()) > 0


def test_bare_pipeline_rejects_zero_workers():
    with pytest.raises(ValueError, match="concurrency"):
        bl.bare_asyncio_pipeline(10, 0, 10)


def test_mmc_formula_matches_mm1_closed_form():
    # M/M/1: W = 1 / (mu - lambda)
    assert bl.mmc_mean_sojourn(8.0, 0.1, 1) == pytest.approx(1 / (10.0 - 8.0))
    with pytest.raises(ValueError, match="unstable"):
        bl.mmc_mean_sojourn(50.0, 0.1, 4)


def test_simpy_mmc_agrees_with_erlang_c_and_records_three_events():
    events: list = []
    res = bl.simpy_mmc(20_000, 4, 60.0, 0.05, seed=3, events=events)
    assert res.msgs_per_s > 0
    assert res.mean_sojourn == pytest.approx(bl.mmc_mean_sojourn(60.0, 0.05, 4), rel=0.08)
    assert Counter(kind for _, _, kind in events) == {
        "publish": 20_000,
        "deliver": 20_000,
        "ack": 20_000,
    }


def test_simpy_mmc_is_deterministic_per_seed():
    a = bl.simpy_mmc(2_000, 2, 30.0, 0.05, seed=7, record=False)
    b = bl.simpy_mmc(2_000, 2, 30.0, 0.05, seed=7, record=False)
    c = bl.simpy_mmc(2_000, 2, 30.0, 0.05, seed=8, record=False)
    assert a.mean_sojourn == b.mean_sojourn != c.mean_sojourn


def test_interleaved_alternates_order_and_takes_the_median_ratio():
    calls: list[str] = []
    a_rates = iter([10.0, 30.0, 20.0, 99.0])  # warm-up first
    b_rates = iter([10.0, 10.0, 10.0, 1.0])

    def a():
        calls.append("a")
        return next(a_rates)

    def b():
        calls.append("b")
        return next(b_rates)

    res = bl.interleaved_detail(3, a, b, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert res.ratios == (3.0, 2.0, 99.0)
    assert res.ratio == 3.0 and res.a == 30.0 and res.b == 10.0


def test_interleaved_rejects_a_non_positive_rate():
    with pytest.raises(ValueError, match="positive rate"):
        bl.interleaved(1, lambda: 1.0, lambda: 0.0, warmup=0)


def test_bench_core_measures_what_it_prints_on_small_runs(monkeypatch):
    # bench_core imports `_baselines` by its bare name, from its own folder
    monkeypatch.syspath_prepend(str(_path.parent))
    spec = importlib.util.spec_from_file_location("wqnb_bench_core", _path.parent / "bench_core.py")
    bc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bc)
    assert bc.wqnb_pipeline(300) > 0  # asserts itself that 4 rows a message were recorded
    assert bc.wqnb_mmc(300, 2, 20.0, 0.05) > 0  # asserts itself that every message was acked
    secs, per_event = bc.dataframe_cost(2_000)
    assert secs > 0 and per_event == 48  # the row: a 12-byte head (event, flags, names, error) + 36
    loop_ns, simpy_ns = bc.sleep_cost(400, tasks=4)
    assert loop_ns > 0 and simpy_ns > 0
