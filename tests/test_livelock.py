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
