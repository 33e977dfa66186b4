"""Baselines that wqnb's benchmarks compare against, in the same process and the same run.

* ``bare_asyncio_pipeline``: the "physical limit" of shared/notes/perf-anchors.md §1: one
  producer -> ``asyncio.Queue(maxsize=prefetch)`` -> ``concurrency`` workers, each doing
  ``await q.get()``, ``await handler(msg)`` (async no-op), ``await ack(id)`` (a dict ``del``
  plus a counter), with one ``(perf_counter(), msg_id, "deliver"|"ack")`` tuple per delivery
  and per ack when ``record``. Returns messages per second of wall time.
* ``simpy_mmc``: an M/M/c queue in SimPy (a ``simpy.Store`` and ``c`` worker processes),
  recording ``publish``, ``deliver`` and ``ack`` tuples on virtual time. Returns
  ``MMcResult(msgs_per_s, mean_sojourn)``: wall-clock throughput of the simulation, and the
  mean time in system (publish -> ack) in simulated seconds, to set beside ``wqnb.simulate()``.
* ``mmc_mean_sojourn``: the exact M/M/c mean time in system (Erlang C), for both.
* ``interleaved(runs, a, b)``: runs A and B alternately and returns the median of the
  per-pair ratios A/B. The host is shared and noisy (±20 % between runs of one thing), so
  only ratios measured side by side mean much (perf-anchors.md, "Noise notes").

Import from a benchmark script in this folder with ``from _baselines import ...`` (the
script's folder is on ``sys.path``), or ``from benchmarks._baselines import ...`` from the
repository root. ``python benchmarks/_baselines.py`` prints the baseline figures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

__all__ = [
    "MMcResult",
    "PairResult",
    "bare_asyncio_pipeline",
    "bare_asyncio_pipeline_async",
    "interleaved",
    "interleaved_detail",
    "mmc_mean_sojourn",
    "simpy_mmc",
]

Event = tuple[float, int, str]

#: The columns of a timeline row, as ``simpy_mmc(rows=True)`` appends them (wqnb's
#: ``Recorder`` packs the same twelve fields; event codes as in ``wqnb.timeline``).
ROW_FIELDS = ("t", "event", "queue", "consumer", "worker", "msg", "attempt", "error",
              "depth", "buffered", "busy", "unsettled")
EV_PUBLISH, EV_DELIVER, EV_START, EV_ACK = 0, 2, 3, 4


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` that also works where a loop is already running (a notebook cell):
    there it runs the coroutine on a private loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def bare_asyncio_pipeline_async(
    n: int, concurrency: int, prefetch: int, record: bool = True, events: list | None = None
) -> float:
    """The anchor pipeline on the running loop; returns messages per second.

    ``events``: a list to append the ``(t, msg_id, kind)`` tuples to (a fresh one otherwise)."""
    if n < 1 or concurrency < 1 or prefetch < 1:
        raise ValueError(
            f"n, concurrency and prefetch must be >= 1, got {n}, {concurrency}, {prefetch}"
        )
    q: asyncio.Queue = asyncio.Queue(maxsize=prefetch)
    inflight: dict[int, bytes] = {}
    log: list[Event] = [] if events is None else events
    append = log.append
    clock = time.perf_counter
    acked = 0
    payload = b'{"id": 1}'

    async def handler(msg: tuple[int, bytes]) -> None:
        return None

    async def ack(msg_id: int) -> None:
        nonlocal acked
        del inflight[msg_id]
        acked += 1
        if record:
            append((clock(), msg_id, "ack"))

    async def producer() -> None:
        for i in range(n):
            await q.put((i, payload))
        for _ in range(concurrency):  # one stop sentinel per worker
            await q.put(None)

    async def worker() -> None:
        while True:
            msg = await q.get()
            if msg is None:
                return
            msg_id = msg[0]
            inflight[msg_id] = msg[1]
            if record:
                append((clock(), msg_id, "deliver"))
            await handler(msg)
            await ack(msg_id)

    t0 = clock()
    await asyncio.gather(producer(), *(worker() for _ in range(concurrency)))
    elapsed = clock() - t0
    if acked != n or inflight:
        raise AssertionError(f"pipeline acked {acked} of {n}, {len(inflight)} left in flight")
    return n / elapsed


def bare_asyncio_pipeline(
    n: int, concurrency: int, prefetch: int, record: bool = True, events: list | None = None
) -> float:
    """Run the anchor pipeline on a fresh event loop; returns messages per second."""
    return _run(bare_asyncio_pipeline_async(n, concurrency, prefetch, record, events))


class MMcResult(NamedTuple):
    msgs_per_s: float  # messages simulated per second of wall time
    mean_sojourn: float  # mean publish -> ack time, in simulated seconds


def simpy_mmc(
    n: int,
    c: int,
    arrival_rate: float,
    mean_service: float,
    seed: int = 1,
    record: bool = True,
    events: list | None = None,
    rows: bool = False,
) -> MMcResult:
    """M/M/c in SimPy: Poisson arrivals at ``arrival_rate`` per second into an unbounded
    ``simpy.Store``, ``c`` workers with exponential service of mean ``mean_service`` seconds.

    When ``record``, appends ``(t, msg_id, "publish" | "deliver" | "ack")`` for every message
    (to ``events`` if given). With ``rows`` it appends instead the rows wqnb's timeline holds:
    ``publish``, ``deliver``, ``start`` and ``ack`` for every message, each a tuple of
    :data:`ROW_FIELDS` with the gauges after the event (queue depth, buffered, busy,
    unsettled). Arrivals and service times draw from separate seeded streams."""
    import simpy  # the `test` extra; imported here so the asyncio baseline needs nothing

    if n < 1 or c < 1 or arrival_rate <= 0 or mean_service <= 0:
        raise ValueError(
            f"need n >= 1, c >= 1, arrival_rate > 0, mean_service > 0; "
            f"got {n}, {c}, {arrival_rate}, {mean_service}"
        )
    arrivals = random.Random(f"{seed}:arrivals")
    service = random.Random(f"{seed}:service")
    service_rate = 1.0 / mean_service
    log: list[Event] = [] if events is None else events
    append = log.append
    env = simpy.Environment()
    store = simpy.Store(env)
    sojourn_total = 0.0
    done = 0

    def publisher():
        for i in range(n):
            yield env.timeout(arrivals.expovariate(arrival_rate))
            if record:
                append((env.now, i, "publish"))
            store.put((i, env.now))

    def worker(w: int):  # noqa: ARG001 - the same signature as row_worker
        nonlocal sojourn_total, done
        while True:
            msg_id, published = yield store.get()
            if record:
                append((env.now, msg_id, "deliver"))
            yield env.timeout(service.expovariate(service_rate))
            if record:
                append((env.now, msg_id, "ack"))
            sojourn_total += env.now - published
            done += 1

    busy = unsettled = 0
    items = store.items

    def row_publisher():
        for i in range(n):
            yield env.timeout(arrivals.expovariate(arrival_rate))
            append((env.now, EV_PUBLISH, 0, -1, -1, i, 1, 0, len(items) + 1, -1, -1, -1))
            store.put((i, env.now))

    def row_worker(w: int):
        nonlocal sojourn_total, done, busy, unsettled
        while True:
            msg_id, published = yield store.get()
            unsettled += 1
            append((env.now, EV_DELIVER, 0, 0, -1, msg_id, 1, 0, len(items), 1, busy, unsettled))
            busy += 1
            append((env.now, EV_START, 0, 0, w, msg_id, 1, 0, len(items), 0, busy, unsettled))
            yield env.timeout(service.expovariate(service_rate))
            busy -= 1
            unsettled -= 1
            append((env.now, EV_ACK, 0, 0, w, msg_id, 1, 0, len(items), 0, busy, unsettled))
            sojourn_total += env.now - published
            done += 1

    if rows and record:
        publisher, worker = row_publisher, row_worker

    env.process(publisher())
    for w in range(c):
        env.process(worker(w))
    t0 = time.perf_counter()
    env.run()  # ends when nothing is scheduled: every message acked, workers idle
    elapsed = time.perf_counter() - t0
    if done != n:
        raise AssertionError(f"M/M/c simulation finished {done} of {n} messages")
    return MMcResult(n / elapsed, sojourn_total / n)


def mmc_mean_sojourn(arrival_rate: float, mean_service: float, c: int) -> float:
    """Exact mean time in system of a stable M/M/c queue (Erlang C), in seconds."""
    a = arrival_rate * mean_service  # offered load in erlangs
    rho = a / c
    if not 0 < rho < 1:
        raise ValueError(f"M/M/c is unstable or empty at utilisation {rho:.3f} (needs 0 < rho < 1)")
    head = sum(a**k / math.factorial(k) for k in range(c))
    tail = a**c / (math.factorial(c) * (1 - rho))
    p_wait = tail / (head + tail)
    return p_wait * mean_service / (c * (1 - rho)) + mean_service


class PairResult(NamedTuple):
    ratio: float  # median of the per-pair ratios a/b
    a: float  # median of A's results
    b: float  # median of B's results
    ratios: tuple[float, ...]


def _rate(value: Any, name: str) -> float:
    rate = float(getattr(value, "msgs_per_s", value))
    if not rate > 0:
        raise ValueError(f"{name} returned {value!r}; it must return a positive rate")
    return rate


def interleaved_detail(
    runs: int, a: Callable[[], Any], b: Callable[[], Any], warmup: int = 1
) -> PairResult:
    """Run ``a`` and ``b`` alternately ``runs`` times each (A B, B A, A B, ... so neither
    always goes first), after ``warmup`` discarded pairs. Each returns a positive rate (or an
    ``MMcResult``). Returns the median per-pair ratio a/b and each side's median."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        a(), b()
    ras: list[float] = []
    rbs: list[float] = []
    for i in range(runs):
        gc.collect()
        if i % 2 == 0:
            ra = _rate(a(), "a")
            rb = _rate(b(), "b")
        else:
            rb = _rate(b(), "b")
            ra = _rate(a(), "a")
        ras.append(ra)
        rbs.append(rb)
    ratios = tuple(x / y for x, y in zip(ras, rbs, strict=True))
    return PairResult(
        statistics.median(ratios), statistics.median(ras), statistics.median(rbs), ratios
    )


def interleaved(runs: int, a: Callable[[], Any], b: Callable[[], Any], warmup: int = 1) -> float:
    """The median of the per-pair ratios a/b over ``runs`` alternating pairs."""
    return interleaved_detail(runs, a, b, warmup).ratio


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Print the baseline figures (perf-anchors §1 grid)."
    )
    parser.add_argument("-n", type=int, default=100_000, help="messages per run (default 100000)")
    parser.add_argument(
        "--runs", type=int, default=5, help="interleaved pairs per cell (default 5)"
    )
    args = parser.parse_args(argv)

    print(f"bare asyncio pipeline, n={args.n}, median of {args.runs} interleaved pairs")
    print(f"{'conc':>5} {'pf':>5} {'bare':>10} {'+events':>10} {'overhead':>9}")
    for conc, pf in [(1, 10), (1, 100), (4, 10), (4, 100), (64, 10), (64, 100)]:
        res = interleaved_detail(
            args.runs,
            lambda c=conc, p=pf: bare_asyncio_pipeline(args.n, c, p, record=False),
            lambda c=conc, p=pf: bare_asyncio_pipeline(args.n, c, p, record=True),
        )
        print(f"{conc:>5} {pf:>5} {res.a:>10,.0f} {res.b:>10,.0f} {1 - 1 / res.ratio:>8.1%}")

    n = min(args.n, 20_000)
    lam, mean_s, c = 60.0, 0.05, 4
    rates, sojourns = [], []
    for seed in range(1, args.runs + 1):
        r = simpy_mmc(n, c, lam, mean_s, seed=seed)
        rates.append(r.msgs_per_s)
        sojourns.append(r.mean_sojourn)
    print(
        f"\nSimPy M/M/{c}, n={n}, arrival {lam}/s, mean service {mean_s}s, {args.runs} seeds: "
        f"{statistics.median(rates):,.0f} msgs/s of wall time (3 events each); mean sojourn "
        f"{statistics.mean(sojourns):.4f}s (Erlang C: {mmc_mean_sojourn(lam, mean_s, c):.4f}s)"
    )


if __name__ == "__main__":
    _main()


def broker_main(doc: str, env_var: str, hint: str, run_wqnb: Callable[[str, int], Coroutine[Any, Any, float]],
                run_plain: Callable[[str, int], Coroutine[Any, Any, float]], *, title: str, plain: str, goal: float,
                quick_n: int = 1000, full_n: int = 5000,
                cpu: dict[str, list[float]] | None = None) -> None:
    """The command line the broker benchmarks share: ``--quick``, ``-n``, ``--runs``; the
    server address from ``env_var``; wqnb and the plain client interleaved; the figures
    printed (and messages per CPU-second of this process when ``cpu`` was filled)."""
    import argparse
    import asyncio
    import os
    import sys

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages and runs")
    ap.add_argument("-n", type=int, default=None, help="messages per run")
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args()
    address = os.environ.get(env_var)
    if not address:
        sys.exit(f"set {env_var} to {hint} on loopback (scripts/test starts one)")
    n = args.n or (quick_n if args.quick else full_n)
    runs = args.runs or (3 if args.quick else 5)
    res = interleaved_detail(runs, lambda: asyncio.run(run_wqnb(address, n)),
                             lambda: asyncio.run(run_plain(address, n)))
    print(f"{title}, {n} msgs:")
    print(f"  wqnb {res.a:,.0f} msg/s   {plain} {res.b:,.0f} msg/s   ratio {res.ratio:.2f}x "
          f"(goal >= {goal:g}x; per pair: {', '.join(f'{r:.2f}' for r in res.ratios)})")
    if cpu and cpu.get("wqnb") and cpu.get("plain"):
        pairs = [a / b for a, b in zip(cpu["wqnb"][1:], cpu["plain"][1:], strict=True)]  # warm-up left out
        print(f"  per CPU-second of this process: wqnb {statistics.median(cpu['wqnb'][1:]):,.0f} msg   plain "
              f"{statistics.median(cpu['plain'][1:]):,.0f} msg   ratio {statistics.median(pairs):.2f}x "
              f"(per pair: {', '.join(f'{r:.2f}' for r in pairs)})")

