"""A sweep on every core against the same sweep run serially (issue 13 §3).

    python benchmarks/bench_sweep.py [--grid 10] [--messages 10000]

A grid × grid sweep of concurrency × prefetch, ``messages`` each, first with
``executor="serial"``, then with the default (a process pool, one worker per core), in one
run; the rows must be identical. Goal on the project machine (2 vCPU): ≥ 1.7×. Other
work on the machine takes cores from the pool: the load average is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

import wqnb
from wqnb.widgets import log_options

GOAL = 1.7


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=10, help="values per knob (grid × grid runs)")
    ap.add_argument("--messages", type=int, default=10_000)
    args = ap.parse_args()
    concurrency = log_options(1, 64)[: args.grid]
    prefetch = log_options(1, 1000)[: args.grid]
    work = {"messages": args.messages, "arrival_rate": 80.0,
            "service_time": wqnb.Exponential(0.05), "seed": 1}
    t0 = time.perf_counter()
    serial = wqnb.sweep(concurrency, prefetch, executor="serial", **work)
    t1 = time.perf_counter()
    pooled = wqnb.sweep(concurrency, prefetch, **work)
    t2 = time.perf_counter()
    pd.testing.assert_frame_equal(serial, pooled)
    speedup = (t1 - t0) / (t2 - t1)
    print(f"{len(serial)} runs of {args.messages:,} messages on {os.cpu_count()} cores "
          f"(load average {os.getloadavg()[0]:.2f}): serial {t1 - t0:.2f} s, "
          f"default executor {t2 - t1:.2f} s, {speedup:.2f}x, rows identical — goal ≥ {GOAL}x: "
          f"{'met' if speedup >= GOAL else 'MISSED'}")
    return 0 if speedup >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
