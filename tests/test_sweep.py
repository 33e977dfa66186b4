"""sweep() runs its grid on every core by default, or on any Executor, with the same rows
as a serial run (issue 13 §3)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

import wqnb
from wqnb import sim

WORK = {"messages": 300, "arrival_rate": 60.0, "service_time": wqnb.Exponential(0.05)}


def test_default_and_any_executor_give_the_serial_rows():
    serial = wqnb.sweep((1, 4), (1, 10), executor="serial", seed=3, **WORK)
    assert list(serial[["concurrency", "prefetch"]].itertuples(index=False, name=None)) == [
        (1, 1), (1, 10), (4, 1), (4, 10)]
    default = wqnb.sweep((1, 4), (1, 10), seed=3, **WORK)  # a process pool on this machine
    pd.testing.assert_frame_equal(default, serial)
    with ThreadPoolExecutor(2) as pool:  # any concurrent.futures.Executor (Dask's too)
        pd.testing.assert_frame_equal(
            wqnb.sweep((1, 4), (1, 10), executor=pool, seed=3, **WORK), serial)


def test_default_executor_uses_every_core(monkeypatch):
    monkeypatch.setattr(sim.os, "cpu_count", lambda: 3)
    pool = sim.default_executor(10)
    try:
        assert pool._max_workers == 3
    finally:
        pool.shutdown()
    assert sim.default_executor(1) is None  # one cell: no pool to start
    monkeypatch.setattr(sim.os, "cpu_count", lambda: 1)
    assert sim.default_executor(10) is None


def test_seeds_repeat_each_cell_and_progress_counts_runs():
    seen = []
    r = wqnb.sweep((2,), (1,), seeds=(1, 2, 3), progress=lambda d, n: seen.append((d, n)), **WORK)
    assert r["seed"].tolist() == [1, 2, 3] and seen == [(1, 3), (2, 3), (3, 3)]
    assert r["throughput_per_s"].nunique() == 3  # different arrivals, different figures
    with pytest.raises(ValueError, match="seeds= or seed="):
        wqnb.sweep((2,), (1,), seeds=(1,), seed=1, **WORK)
    with pytest.raises(ValueError, match="executor must be"):
        wqnb.sweep((2,), (1,), executor="threads", **WORK)


def test_arguments_a_process_cannot_take_run_serially():
    rows = wqnb.sweep((1, 2), (1,), body=lambda i: {"i": i}, messages=20, arrival_rate=None)
    assert rows["acked"].tolist() == [20, 20]


def test_a_forkserver_pool_preloads_wqnb_and_gives_the_serial_rows(monkeypatch):
    # the start method on Python ≥ 3.12 (fork is unsafe in a kernel with threads)
    monkeypatch.setattr(sim, "_start_method", lambda: "forkserver")
    pool = sim.default_executor(4)
    assert pool._mp_context.get_start_method() == "forkserver"
    from multiprocessing import forkserver

    assert forkserver._forkserver._preload_modules == sim.FORKSERVER_PRELOAD  # imported once, there
    try:
        rows = wqnb.sweep((1, 4), (1, 10), executor=pool, seed=3, **WORK)
    finally:
        pool.shutdown()
    pd.testing.assert_frame_equal(rows, wqnb.sweep((1, 4), (1, 10), executor="serial", seed=3, **WORK))
