"""M/M/c: a long ``simulate()`` run agrees with Erlang C (DESIGN §4, wqnb.theory).

Poisson arrivals (λ = 56/s) and exponential service (mean 50 ms, μ = 20/s) on c = 4
workers: ρ = 0.7. The queue is FIFO end to end (queue, then prefetch buffer, then a free
worker), so the whole system is an M/M/4 queue whatever the prefetch.

Tolerance: 3 % relative on the mean sojourn time, utilisation and P(wait) with
50,000 messages and a fixed seed. For this model the measured error over seeds 1-3 is
under 1 % for sojourn and utilisation and under 2 % for P(wait); 3 % leaves room for the
sampling noise of other seeds while still catching a service-time or ordering bug (a
worker idling, a LIFO buffer or a lost wakeup moves these by far more).
"""

from __future__ import annotations

import math

import pytest

import wqnb

C, LAM, MEAN = 4, 56.0, 0.05
TOL = 0.03


@pytest.fixture(scope="module")
def run():
    tl = wqnb.simulate(
        concurrency=C, prefetch=10, messages=50_000, arrival_rate=LAM,
        service_time=wqnb.Exponential(MEAN), max_length=1_000_000, seed=2,
    )
    return tl, tl.summary(), tl.messages(), wqnb.erlang_c(C, LAM, 1 / MEAN)


def test_mean_sojourn_time_matches_erlang_c(run):
    _, s, _, theory = run
    assert s["latency_mean_s"] == pytest.approx(theory.sojourn, rel=TOL)


def test_utilisation_matches_rho(run):
    _, s, _, theory = run
    assert theory.utilisation == pytest.approx(0.7)
    assert s["utilisation"] == pytest.approx(theory.utilisation, rel=TOL)


def test_probability_of_waiting_matches_erlang_c(run):
    _, _, m, theory = run
    waited = ((m["queue_wait"] + m["buffer_wait"]) > 1e-12).mean()
    assert waited == pytest.approx(theory.p_wait, rel=TOL)


def test_service_times_are_exponential_with_the_given_mean(run):
    _, s, m, _ = run
    assert s["service_mean_s"] == pytest.approx(MEAN, rel=TOL)
    # exponential: the median is mean * ln 2
    assert m["service"].median() == pytest.approx(MEAN * math.log(2), rel=TOL)


def test_every_message_acked_once_and_limits_hold(run):
    _tl, s, _, _ = run
    assert (s["published"], s["acked"], s["nacked"]) == (50_000, 50_000, 0)
    assert s["max_busy"] == C and s["max_unsettled"] <= C + 10
    assert s["publish_waits"] == 0


def test_erlang_c_closed_forms():
    mm1 = wqnb.erlang_c(1, 0.5, 1.0)
    assert mm1.sojourn == pytest.approx(2.0)  # 1 / (μ - λ)
    assert mm1.p_wait == pytest.approx(0.5)  # ρ
    assert mm1.in_system == pytest.approx(1.0)  # ρ / (1 - ρ)
    assert mm1.queue_length == pytest.approx(0.5)  # Lq = ρ² / (1 - ρ) = 0.25 / 0.5
    mm2 = wqnb.erlang_c(2, 1.0, 1.0)  # a = 1, ρ = 0.5: C(2, 1) = 1/3
    assert mm2.p_wait == pytest.approx(1 / 3)
    assert mm2.wait == pytest.approx(1 / 3)  # C / (cμ - λ)
    # closed form, not Little's law again: Lq = C·ρ / (1 - ρ) = (1/3)(0.5) / 0.5 = 1/3
    assert mm2.queue_length == pytest.approx(1 / 3)
    # large c stays finite
    big = wqnb.erlang_c(500, 450.0, 1.0)
    assert 0 <= big.p_wait <= 1 and math.isfinite(big.sojourn)


@pytest.mark.parametrize("args", [(1, 1.0, 1.0), (2, 5.0, 1.0)])
def test_erlang_c_rejects_unstable_systems(args):
    with pytest.raises(ValueError, match=r"^unstable: utilisation"):
        wqnb.erlang_c(*args)


def test_erlang_c_rejects_bad_input():
    with pytest.raises(ValueError, match=r"need servers ≥ 1 and positive rates"):
        wqnb.erlang_c(0, 1.0, 2.0)
