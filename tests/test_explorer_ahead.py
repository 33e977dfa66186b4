"""The Explorer draws the next slider stops ahead in a worker process (wqnb.ahead): a step
shows the same picture the kernel would have drawn, at once; a jump is drawn here."""

from __future__ import annotations

import time

import pandas as pd

import wqnb
from wqnb.widgets import Explorer

KNOBS = {"messages": 300, "arrival_rate": None, "service_time": 0.01,
         "distribution": "constant", "prefetch": 10}


def wait_ready(ex: Explorer, **change) -> None:
    wanted = {**ex.params(), **change}
    deadline = time.monotonic() + 60
    while not ex.ahead.ready(wanted):
        assert time.monotonic() < deadline, f"the worker never drew {change}"
        time.sleep(0.02)


def titles(fig) -> list[str]:
    return [ax.get_title(loc="left") for ax in fig.axes]


def test_a_step_shows_the_frame_drawn_ahead_which_is_the_kernels_picture():
    ex = Explorer(concurrency=2, **KNOBS)
    try:
        assert ex.ahead is not None and ex.source == "drawn"
        wait_ready(ex, concurrency=3)
        ex.concurrency.value = 3
        assert ex.source == "ready" and ex.runs == 2 and ex.ahead.drawn_ahead >= 1
        here = Explorer(concurrency=3, ahead=False, **KNOBS)
        assert bytes(ex.image.value) == bytes(here.image.value)  # pixel for pixel
        pd.testing.assert_series_equal(ex.summary, here.summary)
        pd.testing.assert_frame_equal(ex.timeline.df.drop(columns="msg_id"),  # (ids are
                                      here.timeline.df.drop(columns="msg_id"))  # random)
        assert ex.table.value == here.table.value
        assert ex.image.layout.width == here.image.layout.width
        assert titles(ex.figure) == titles(here.figure)  # drawn on first use
        assert "drawn ahead" in ex.status.value
    finally:
        ex.close()


def test_moving_back_is_kept_and_a_jump_is_drawn_in_the_kernel():
    ex = Explorer(concurrency=2, **KNOBS)
    try:
        wait_ready(ex, concurrency=3)
        ex.concurrency.value = 3
        ex.concurrency.value = 2  # kept from the first draw
        assert ex.source == "ready" and ex.summary["max_busy"] == 2
        ex.prefetch.value = 1000  # nobody guessed this one
        assert ex.source == "drawn" and ex.error is None
        assert "simulated in" in ex.status.value
    finally:
        ex.close()


def test_the_knob_moved_last_is_drawn_ahead_first_in_its_direction():
    ex = Explorer(concurrency=4, ahead=False, auto=False, simulate=wqnb.simulate, **KNOBS)
    ex.prefetch.value = 8  # down from 10
    first = ex._neighbours(ex.params())[0]
    assert first["prefetch"] == 6 and first["concurrency"] == 4
    ex.concurrency.value = 5  # up from 4
    plan = ex._neighbours(ex.params())
    assert [(p["concurrency"], p["prefetch"]) for p in plan] == [(6, 8), (4, 8), (5, 10), (5, 6)]


def test_ahead_is_off_for_another_simulate_and_close_stops_the_worker():
    assert Explorer(messages=50, simulate=wqnb.simulate).ahead is None
    ex = Explorer(concurrency=2, **KNOBS)
    procs = list(ex.ahead._executor._processes.values())
    assert procs and all(p.is_alive() for p in procs)
    ex.close()
    deadline = time.monotonic() + 60
    while any(p.is_alive() for p in procs):
        assert time.monotonic() < deadline, "the worker outlived close()"
        time.sleep(0.05)
    assert ex.ahead is None
    ex.concurrency.value = 3  # still works, drawn here
    assert ex.source == "drawn" and ex.summary["max_busy"] == 3


def test_a_stale_guess_is_abandoned_for_the_frame_now_wanted():
    from wqnb.ahead import Ahead, frame_key

    big = {"concurrency": 2, "prefetch": 10, "messages": 10_000, "arrival_rate": 80.0,
           "service_time": wqnb.Exponential(0.05), "failure_rate": 0.0, "max_length": 1000,
           "seed": 1}
    small = {**big, "messages": 200, "concurrency": 4}
    ahead = Ahead(2)
    try:
        ahead.plan([big])
        assert ahead._running is not None and ahead._running[0] == frame_key(big)
        ahead.plan([small])  # the reader moved elsewhere: a second of work dropped
        assert ahead.abandoned == 1
        deadline = time.monotonic() + 60
        while not ahead.ready(small):
            assert time.monotonic() < deadline, "the wanted frame never came"
            time.sleep(0.02)
        assert not ahead.ready(big) and ahead.take(small).summary["published"] == 200
    finally:
        ahead.close()
