"""The Explorer's redraw after a slider move (issue 4): simulate + summary + figure + PNG.

    python benchmarks/bench_explorer.py [--messages 10000] [--runs 7]

Goal: ≤ 1 s for 10,000 messages on the project machine (2 vCPU). Each run moves the
concurrency slider of one :class:`wqnb.widgets.Explorer` (what a user does) and times the
whole callback; the widget's own split (simulate vs draw) is printed beside it. The first
redraw is a warm-up (font cache, imports) and is reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")

from wqnb.widgets import Explorer

GOAL_S = 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()

    t0 = time.perf_counter()
    ex = Explorer(messages=args.messages)  # defaults: λ = 80/s, exponential 50 ms service
    print(f"first draw (warm-up): {time.perf_counter() - t0:.3f} s  {ex.timings}")
    stops = [c for c in ex.concurrency.options if 2 <= c <= 64]
    totals, sims, draws = [], [], []
    for i in range(args.runs):
        value = stops[i % len(stops)]
        t0 = time.perf_counter()
        ex.concurrency.value = value  # the slider move: simulate, summarise, draw, PNG
        total = time.perf_counter() - t0
        totals.append(total)
        sims.append(ex.timings["simulate"])
        draws.append(ex.timings["draw"])
        events = len(ex.timeline.df)
        print(f"concurrency {value:>3}: {total:.3f} s (simulate {ex.timings['simulate']:.3f}, "
              f"summary+draw+png {ex.timings['draw']:.3f}; {events:,} events)")
    med = statistics.median(totals)
    print(f"\nmedian redraw, {args.messages:,} messages: {med:.3f} s "
          f"(simulate {statistics.median(sims):.3f} s, draw {statistics.median(draws):.3f} s; "
          f"min {min(totals):.3f}, max {max(totals):.3f}) — goal ≤ {GOAL_S:.1f} s: "
          f"{'met' if med <= GOAL_S else 'MISSED'}")
    return 0 if med <= GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
