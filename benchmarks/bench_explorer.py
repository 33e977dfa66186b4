"""The Explorer's redraw after a slider move (issue 4): simulate + summary + figure + PNG.

    python benchmarks/bench_explorer.py [--messages 10000] [--runs 7] [--browser]

Goal: ≤ 1 s for 10,000 messages on the project machine (2 vCPU). Each run moves the
concurrency slider of one :class:`wqnb.widgets.Explorer` (what a user does) and times the
whole callback; the widget's own split (simulate vs draw) is printed beside it. The first
redraw is a warm-up (font cache, imports) and is reported separately.

``--browser`` adds what a user waits for: Voila serves an Explorer, Playwright drives
Debian's Chromium (``/usr/bin/chromium``), and each run times a slider move (a key press
on the handle) until the new image is in the page (issue 13 §6; goal ≤ 0.5 s). Two
series: presses back to back (the next as soon as the image is in: the pictures drawn
ahead are not ready yet, so this is about the kernel's redraw) and presses ``--pause``
seconds after the picture (a reader looking at it; the step was drawn ahead, wqnb.ahead).
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")

from wqnb.widgets import Explorer

GOAL_S = 1.0
BROWSER_GOAL_S = 0.5


KERNEL_TIME = re.compile(r"simulated in ([0-9.]+) s, drawn in ([0-9.]+) s|shown in ([0-9.]+) s")


def _kernel_seconds(status: str) -> tuple[float, str]:
    m = KERNEL_TIME.search(status)
    if m is None:
        return math.nan, "?"
    if m[3] is not None:
        return float(m[3]), "drawn ahead"
    return float(m[1]) + float(m[2]), "drawn in the kernel"


def browser_runs(messages: int, runs: int, pause: float) -> list[tuple[float, float, str]]:
    """Per run: (seconds from a slider key press to the new image in the browser, seconds
    of it the kernel spent in the callback, as its status line says, and where the picture
    was drawn). Each series presses ArrowRight ``runs`` times as soon as the image is in,
    then ``runs`` times ``pause`` seconds after it (a reader looking at the picture)."""
    import json
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("--browser needs Chromium: apt-get install chromium")
    tmp = Path(tempfile.mkdtemp(prefix="wqnb-bench-"))
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "x", "metadata": {},
                     "outputs": [], "source": (
                         "from wqnb.widgets import Explorer\n"
                         f"Explorer(messages={messages}, concurrency=2)")}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (tmp / "bench.ipynb").write_text(json.dumps(nb))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "JUPYTER_PLATFORM_DIRS": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "voila", "bench.ipynb", "--no-browser",
                             f"--port={port}", "--Voila.ip=127.0.0.1", "--ServerApp.token="],
                            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times: list[tuple[float, float, str]] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("voila did not start") from None
                time.sleep(0.1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded", timeout=120_000)
            img = page.locator(".wqnb-figure")
            expect(img).to_have_attribute("src", re.compile("^blob:|^data:"), timeout=120_000)
            handle = page.locator(".widget-slider", has_text="concurrency").locator(".noUi-handle")
            for i in range(2 * runs + 1):  # the first is a warm-up
                if i > runs:
                    time.sleep(pause)
                before = img.get_attribute("src")
                handle.focus()
                t0 = time.perf_counter()
                handle.press("ArrowRight")
                page.wait_for_function(
                    "(b) => { const i = document.querySelector('.wqnb-figure');"
                    " return i && i.src !== b && i.complete; }", arg=before, timeout=60_000)
                seen = time.perf_counter() - t0
                page.wait_for_function(  # the status line is written after the image
                    "(n) => document.querySelector('.wqnb-status').textContent"
                    ".startsWith(`run ${n}:`)", arg=i + 2, timeout=60_000)
                if i:
                    times.append((seen, *_kernel_seconds(page.locator(".wqnb-status").inner_text())))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--browser", action="store_true", help="also time slider → image in Chromium")
    ap.add_argument("--pause", type=float, default=2.0,
                    help="seconds a reader looks at a picture before the next move (browser)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    # the redraw in the kernel (nothing drawn ahead): what any move away from the last
    # picture's neighbours costs
    ex = Explorer(messages=args.messages, ahead=False)  # λ = 80/s, exponential 50 ms service
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
    ok = med <= GOAL_S
    if args.browser:
        got = browser_runs(args.messages, args.runs, args.pause)
        for k, (t, kernel, where) in enumerate(got):
            print(f"  browser, {'next press at once' if k < args.runs else f'after {args.pause:g} s'}: "
                  f"{t:.3f} s ({where}; the kernel's callback {kernel:.2f} s)")
        at_once = [t for t, _, _ in got[: args.runs]]
        looked = [t for t, _, _ in got[args.runs:]]
        print(f"browser, slider key press → new image, {args.messages:,} messages: "
              f"back-to-back presses median {statistics.median(at_once):.3f} s "
              f"(min {min(at_once):.3f}, max {max(at_once):.3f})")
        bmed = statistics.median(looked)
        print(f"browser, a step {args.pause:g} s after the last picture: median {bmed:.3f} s "
              f"(min {min(looked):.3f}, max {max(looked):.3f}) — goal ≤ {BROWSER_GOAL_S:.1f} s: "
              f"{'met' if bmed <= BROWSER_GOAL_S else 'MISSED'}")
        ok = ok and bmed <= BROWSER_GOAL_S
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
