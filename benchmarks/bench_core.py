"""Core performance (issue 2): ratios against baselines run in the same process.

    python benchmarks/bench_core.py [--quick]

1. pipeline: memory driver + async no-op Python handler, concurrency 4, prefetch 100,
   recording on, vs a bare asyncio.Queue pipeline of the same shape (goal ≥ 0.5×);
2. simulate(): an M/M/c model with every event recorded vs SimPy running the same model
   (Store + worker processes) appending the same events to a list: the rows wqnb records,
   publish / deliver / start / ack with their gauges (goal ≥ 1.0×); and, for reference,
   vs SimPy appending three bare ``(t, id, kind)`` tuples a message;
3. 1,000,000 events → DataFrame (goal ≤ 0.5 s) and recorder memory per event (≤ 100 B);
4. per-message cost from 1e3 to 1e6 messages (goal: flat within ±20 %);
5. (no goal) what one sleep costs on wqnb's virtual loop, beside one SimPy timeout: the
   step a simulation takes most often.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _baselines import bare_asyncio_pipeline, interleaved_detail, simpy_mmc  # noqa: E402

import wqnb  # noqa: E402
from wqnb.timeline import Recorder  # noqa: E402

APP = """
namespace: bench
entries:
  - {name: memory, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: tasks, kind: queue.queue, driver: bench:memory, options: {max_length: %(max_length)d}}
  - name: worker
    kind: queue.consumer
    queue: bench:tasks
    func: bench:noop
    concurrency: %(concurrency)d
    prefetch: %(prefetch)d
    lifecycle: {auto_start: true}
"""


async def _noop(body: object) -> None:
    return None


async def _wqnb_pipeline_async(n: int, concurrency: int, prefetch: int) -> tuple[float, int]:
    rt = wqnb.Runtime.from_yaml_string(APP % dict(concurrency=concurrency, prefetch=prefetch, max_length=prefetch))
    rt.register_function("bench:noop", _noop)
    await rt.start()
    body = '{"id": 1}'
    publish = rt.publish
    t0 = time.perf_counter()
    for _ in range(n):
        await publish("bench:tasks", body)
    await rt.drain()
    elapsed = time.perf_counter() - t0
    await rt.stop()
    return n / elapsed, len(rt.recorder)


def wqnb_pipeline(n: int, concurrency: int = 4, prefetch: int = 100) -> float:
    rate, events = asyncio.run(_wqnb_pipeline_async(n, concurrency, prefetch))
    assert events >= 4 * n, events  # publish, deliver, start, ack (+ publish_wait): all recorded
    return rate


def wqnb_mmc(n: int, c: int, arrival_rate: float, mean_service: float, seed: int = 1) -> float:
    t0 = time.perf_counter()
    tl = wqnb.simulate(concurrency=c, prefetch=1, messages=n, arrival_rate=arrival_rate,
                       service_time=wqnb.Exponential(mean_service), max_length=10**6, seed=seed)
    elapsed = time.perf_counter() - t0
    assert int((tl.df["event"] == "ack").sum()) == n
    return n / elapsed


def dataframe_cost(n_events: int = 1_000_000) -> tuple[float, float]:
    """Seconds to build the DataFrame of n events, and recorder bytes per event."""
    rec = Recorder()
    rec.t0 = 0.0
    rec.queue_index("q")
    rec.consumer_index("c")
    write = rec.write
    packers = [rec.packer(ev, 0, 0 if ev else -1, w) for ev in range(8) for w in range(4)]
    for i in range(n_events):
        write(packers[(i & 7) * 4 + (i & 3)](i * 1e-3, i // 5, 1, 5, 3, 2, 5))
    per_event = rec.nbytes() / n_events
    gc.collect()
    t0 = time.perf_counter()
    tl = rec.timeline()
    elapsed = time.perf_counter() - t0
    assert len(tl.df) == n_events
    return elapsed, per_event


def sleep_cost(n: int = 200_000, tasks: int = 4) -> tuple[float, float]:
    """Nanoseconds per sleep: ``tasks`` tasks sleeping random times on wqnb's virtual loop,
    and the same with SimPy processes yielding timeouts."""
    import random

    import simpy

    delays = [[random.Random(k).random() for _ in range(n // tasks)] for k in range(tasks)]

    async def loop_run() -> float:
        sleep_for = asyncio.get_running_loop().sleep_future  # type: ignore[attr-defined]

        async def sleeper(ds: list[float]) -> None:
            for d in ds:
                await sleep_for(d)

        t0 = time.perf_counter()
        await asyncio.gather(*(sleeper(ds) for ds in delays))
        return time.perf_counter() - t0

    env = simpy.Environment()

    def process(ds: list[float]):
        for d in ds:
            yield env.timeout(d)

    for ds in delays:
        env.process(process(ds))
    t0 = time.perf_counter()
    env.run()
    simpy_s = time.perf_counter() - t0
    return wqnb.run_virtual(loop_run()) / n * 1e9, simpy_s / n * 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = ap.parse_args()
    runs = 3 if args.quick else 5
    n = 20_000 if args.quick else 100_000

    print(f"1. pipeline, concurrency 4, prefetch 100, n={n}, recording on ({runs} interleaved pairs)")
    r = interleaved_detail(runs, lambda: wqnb_pipeline(n), lambda: bare_asyncio_pipeline(n, 4, 100, record=True))
    print(f"   wqnb {r.a:,.0f} msg/s   bare asyncio.Queue {r.b:,.0f} msg/s   ratio {r.ratio:.2f}x  (goal >= 0.5x)")

    m = 20_000 if args.quick else 100_000
    lam, svc, c = 70.0, 0.05, 4  # rho = 0.875
    print(f"2. M/M/{c} simulation, lambda={lam}/s, service {svc}s, n={m} ({runs} interleaved pairs)")
    r = interleaved_detail(runs, lambda: wqnb_mmc(m, c, lam, svc), lambda: simpy_mmc(m, c, lam, svc, rows=True))
    print(f"   wqnb.simulate {r.a:,.0f} msg/s   SimPy appending the same rows {r.b:,.0f} msg/s   "
          f"ratio {r.ratio:.2f}x  (goal >= 1.0x)")
    r = interleaved_detail(runs, lambda: wqnb_mmc(m, c, lam, svc), lambda: simpy_mmc(m, c, lam, svc))
    print(f"   for reference, SimPy appending 3 bare tuples a message {r.b:,.0f} msg/s   ratio {r.ratio:.2f}x")

    events = 200_000 if args.quick else 1_000_000
    secs, per_event = dataframe_cost(events)
    print(f"3. {events:,} events -> DataFrame in {secs:.3f} s (goal <= 0.5 s for 1e6); "
          f"recorder {per_event:.0f} bytes/event (goal <= 100)")

    print("4. per-message cost across sizes (concurrency 4, prefetch 100)")
    sizes = [1_000, 10_000, 100_000] + ([] if args.quick else [1_000_000])
    costs = []
    for size in sizes:
        reps = max(1, 100_000 // size) if size < 100_000 else 1
        best = min(1 / wqnb_pipeline(size) for _ in range(min(reps, 5)))
        costs.append(best)
        print(f"   n={size:>9,}  {best * 1e6:6.2f} us/message")
    ref = costs[len(costs) // 2]
    spread = max(abs(c / ref - 1) for c in costs)
    print(f"   spread vs median size: ±{spread * 100:.0f}% (goal within ±20%)")

    costs = [sleep_cost(50_000 if args.quick else 200_000) for _ in range(3)]
    loop_ns, simpy_ns = min(c[0] for c in costs), min(c[1] for c in costs)
    print(f"5. one sleep on wqnb's virtual loop {loop_ns:.0f} ns; one SimPy timeout {simpy_ns:.0f} ns (no goal)")


if __name__ == "__main__":
    main()
