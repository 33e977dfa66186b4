"""Queueing theory to hold measurements against: M/M/c (Erlang C) and Little's law."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MMc", "erlang_c"]


@dataclass(frozen=True)
class MMc:
    """Steady-state figures of an M/M/c queue (Poisson arrivals, exponential service)."""

    servers: int
    arrival_rate: float
    service_rate: float
    p_wait: float        #: probability an arrival has to wait (Erlang C)
    utilisation: float   #: ρ = λ / (c μ)
    wait: float          #: mean time in queue, Wq
    sojourn: float       #: mean time in system, W = Wq + 1/μ
    queue_length: float  #: mean number waiting, Lq = λ Wq (Little)
    in_system: float     #: mean number in system, L = λ W (Little)


def erlang_c(servers: int, arrival_rate: float, service_rate: float) -> MMc:
    """Erlang C for ``servers`` workers, arrivals λ/s and service μ/s per worker."""
    c, lam, mu = servers, arrival_rate, service_rate
    if c < 1 or not lam > 0 or not mu > 0:
        raise ValueError(f"need servers ≥ 1 and positive rates, got servers={c!r}, arrival_rate={lam!r}, "
                         f"service_rate={mu!r}")
    a = lam / mu
    rho = a / c
    if rho >= 1:
        raise ValueError(f"unstable: utilisation λ/(cμ) = {rho:.3f} ≥ 1, the queue grows without bound")
    # sum_{k<c} a^k/k! and the c-th term, computed iteratively to stay finite for large c
    term, total = 1.0, 1.0
    for k in range(1, c):
        term *= a / k
        total += term
    last = term * a / c / (1 - rho)
    p_wait = last / (total + last)
    wq = p_wait / (c * mu - lam)
    w = wq + 1 / mu
    return MMc(c, lam, mu, p_wait, rho, wq, w, lam * wq, lam * w)
