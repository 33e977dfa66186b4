"""A sweep on every core against the same sweep run serially (issue 13 §3).

    python benchmarks/bench_sweep.py [--grid 10] [--messages 10000] [--runs 3]

A grid × grid sweep of concurrency × prefetch, ``messages`` each, with
``executor="serial"`` and with the default (a process pool, one worker per core), in one
process, interleaved (S P, P S, S P, …) so that both sides see the same host; the rows
must be identical. Goal on the project machine (2 vCPU): ≥ 1.7× (median of the pairs).

The machine is shared: another job on it takes cores from the pool but not from the
serial run (which needs one). So each pair also prints the CPU the sides got — serial:
its CPU time / wall time; pool: its workers' CPU time / (workers × wall time) — and
``pool overhead``: the extra CPU the pooled run spent over the serial one (start-up,
pickling, the parent's waits). With both shares at 100 % the ratio is the pool's own.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

import wqnb
from wqnb.widgets import log_options

GOAL = 1.7


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped workers, after shutdown
    return ru.ru_utime + ru.ru_stime


def timed(pooled: bool, concurrency: list[int], prefetch: list[int], work: dict
          ) -> tuple[pd.DataFrame, float, float]:
    """(rows, wall seconds, CPU seconds: this process's, plus its workers')."""
    c0, k0, t0 = time.process_time(), _children_cpu(), time.perf_counter()
    rows = wqnb.sweep(concurrency, prefetch, **({} if pooled else {"executor": "serial"}), **work)
    wall = time.perf_counter() - t0
    return rows, wall, time.process_time() - c0 + _children_cpu() - k0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=10, help="values per knob (grid × grid runs)")
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3, help="interleaved serial/pool pairs")
    args = ap.parse_args()
    concurrency = log_options(1, 64)[: args.grid]
    prefetch = log_options(1, 1000)[: args.grid]
    work = {"messages": args.messages, "arrival_rate": 80.0,
            "service_time": wqnb.Exponential(0.05), "seed": 1}
    cores = os.cpu_count() or 1
    workers = min(cores, len(concurrency) * len(prefetch))
    print(f"{len(concurrency) * len(prefetch)} runs of {args.messages:,} messages, "
          f"{cores} cores, {args.runs} interleaved pairs")
    ratios = []
    for i in range(args.runs):
        order = (False, True) if i % 2 == 0 else (True, False)
        got = {pooled: timed(pooled, concurrency, prefetch, work) for pooled in order}
        (serial, s_wall, s_cpu), (pooled, p_wall, p_cpu) = got[False], got[True]
        pd.testing.assert_frame_equal(serial, pooled)
        ratios.append(s_wall / p_wall)
        print(f"  pair {i + 1} ({'SP' if order[0] is False else 'PS'}, load average "
              f"{os.getloadavg()[0]:.2f}): serial {s_wall:.2f} s, default executor "
              f"{p_wall:.2f} s: {ratios[-1]:.2f}x, rows identical; CPU share serial "
              f"{s_cpu / s_wall:.0%}, pool {p_cpu / (workers * p_wall):.0%}; "
              f"pool overhead {p_cpu / s_cpu - 1:+.1%} CPU")
    speedup = statistics.median(ratios)
    print(f"median {speedup:.2f}x (range {min(ratios):.2f}–{max(ratios):.2f}) — goal ≥ {GOAL}x: "
          f"{'met' if speedup >= GOAL else 'MISSED'}")
    return 0 if speedup >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
