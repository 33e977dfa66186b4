"""A message that loops without time passing is stopped and named, never left spinning unseen."""

from __future__ import annotations

import pytest

import wqnb

APP = """
namespace: t
entries:
  - {name: m, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: q, kind: queue.queue, driver: t:m}
  - {name: c, kind: queue.consumer, queue: t:q, func: t:f, lifecycle: {auto_start: true}}
"""


def poison(body: str) -> None:
    raise ValueError("poison")


@pytest.mark.parametrize("until", [None, 10.0])
def test_instant_nack_loop_on_virtual_time_raises_naming_the_message(until):
    with pytest.raises(wqnb.VirtualTimeDeadlock, match=r"nacked 1000 times without time passing \(last error: poison\)"):
        wqnb.simulate(app=APP, queue="t:q", handlers={"t:f": poison}, messages=2, until=until)


def test_zero_time_work_is_not_mistaken_for_a_loop():
    tl = wqnb.simulate(concurrency=2, prefetch=5, messages=3000, arrival_rate=None, service_time=0)
    assert tl.summary()["acked"] == 3000


def test_attempt_counts_past_16_bits_are_recorded():
    """A message retried with a tiny delay keeps counting: attempts are stored as 32-bit."""
    def fails_until(body: str, message: wqnb.Delivery) -> None:
        if message.attempt < 40_000:
            raise ValueError("not yet")

    app = APP.replace("lifecycle: {auto_start: true}}\n", "requeue_delay: 0.001, lifecycle: {auto_start: true}}\n", 2)
    app = app.replace("func: t:f, requeue_delay: 0.001,", "func: t:f,").replace(
        "func: t:f, lifecycle", "func: t:f, requeue_delay: 0.000001, lifecycle")
    tl = wqnb.simulate(app=app, queue="t:q", handlers={"t:f": fails_until}, messages=1)
    df = tl.df
    assert int(df["attempt"].max()) == 40_000
    assert list(df["event"].astype(str).tail(1)) == ["ack"]


@pytest.mark.timeout(60)  # (before the fix this run never returned)
@pytest.mark.parametrize("service_time", [0.2, 0.05, wqnb.Uniform(0.06, 0.3)])
def test_a_service_time_never_shorter_than_the_timeout_is_refused_like_failure_rate_one(service_time):
    """Issue 14 point 9: every delivery times out and is requeued forever."""
    with pytest.raises(ValueError, match=r"^service_time 0\.\d+s is never shorter than timeout 0\.05s: every "
                                         r"delivery would time out and be requeued forever \(set max_attempts"):
        wqnb.simulate(service_time=service_time, timeout=0.05, messages=5)


@pytest.mark.timeout(60)
def test_a_timeout_some_deliveries_beat_or_with_max_attempts_still_runs():
    tl = wqnb.simulate(service_time=0.2, timeout=0.05, messages=5, max_attempts=2)
    assert tl.summary()["dead_lettered"] == 5
    tl = wqnb.simulate(service_time=wqnb.Exponential(0.1), timeout=0.05, messages=5, seed=2)
    assert tl.summary()["acked"] == 5
