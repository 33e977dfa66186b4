"""A real browser: Voila serves a notebook with the Explorer, Playwright drives Chromium.

Moving the concurrency slider must reach the kernel, re-run the simulation and come back
as a new summary table and a new figure, drawn at twice its CSS size and unstretched;
pressing a Replay's Play must move its frame. Uses Debian's Chromium (``/usr/bin/chromium``;
never a browser download) and skips, saying why, only where Chromium is absent.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

APP = Path(__file__).parent / "apps" / "explorer.ipynb"
# Chromium's own background traffic is refused on a closed network; keep it quiet.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def voila_url(free_tcp_port, tmp_path):
    pytest.importorskip("voila")
    port = free_tcp_port
    log = open(tmp_path / "voila.log", "w+")  # noqa: SIM115 - closed in finally
    env = {**os.environ, "JUPYTER_PLATFORM_DIRS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "voila", str(APP), "--no-browser", f"--port={port}",
         "--Voila.ip=127.0.0.1", "--ServerApp.token=", "--show_tracebacks=True"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=APP.parent,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for the port to accept connections (or the server to die)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"voila did not start:\n{log.read()[-3000:]}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        tail = log.read()[-3000:]
        log.close()
        if "Traceback" in tail:
            print("--- voila log ---\n" + tail)


def summary_value(page, label: str) -> str:
    row = page.locator(".wqnb-summary tr", has=page.locator("th", has_text=re.compile(f"^{label}$")))
    return row.locator("td").first.inner_text()


def test_moving_concurrency_changes_summary_and_figure_and_replay_plays(voila_url, chromium_executable, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_executable, headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(voila_url, wait_until="domcontentloaded", timeout=120_000)
            table = page.locator(".wqnb-summary table")
            expect(table).to_contain_text("throughput", timeout=120_000)
            img = page.locator(".wqnb-figure")
            expect(img).to_have_attribute("src", re.compile("^blob:|^data:"), timeout=30_000)
            src_before = img.get_attribute("src")
            # 500 messages of 10 ms, all at t = 0, one worker: 5 s, 100 msg/s
            assert summary_value(page, "duration") == "5"
            assert summary_value(page, "throughput") == "100"

            slider = page.locator(".widget-slider", has_text="concurrency")
            handle = slider.locator(".noUi-handle")
            handle.focus()
            for _ in range(3):  # 1 → 2 → 3 → 4 on the log-scale stops
                handle.press("ArrowRight")
            expect(slider.locator(".widget-readout")).to_have_text("4", timeout=20_000)

            # the kernel re-ran the simulation: 4 workers, a quarter of the time
            expect(page.locator(".wqnb-summary tr", has_text="throughput")).to_contain_text(
                "400", timeout=30_000)
            assert summary_value(page, "duration") == "1.25"
            expect(page.locator(".wqnb-status")).to_contain_text("concurrency 4")
            page.wait_for_function(
                "(before) => { const i = document.querySelector('.wqnb-figure');"
                " return i && i.src && i.src !== before; }",
                arg=src_before, timeout=30_000)
            # crisp and unstretched: at least 2 image pixels per CSS pixel, the aspect kept
            natural_w, natural_h, css_w, css_h = img.evaluate(
                "i => [i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width,"
                " i.getBoundingClientRect().height]")
            assert natural_w >= 2 * css_w > 0
            assert abs(natural_w / natural_h - css_w / css_h) < 0.02

            # the Replay: pressing Play moves the frame (the diagram's time) on its own
            frame = page.locator(".wqnb-replay-frame")
            expect(frame).to_have_attribute("data-t", "0.000000", timeout=30_000)
            page.locator(".wqnb-replay-widget .widget-play button").first.click()
            page.wait_for_function(
                "() => { const f = document.querySelector('.wqnb-replay-frame');"
                " return f && parseFloat(f.dataset.t) > 0; }", timeout=30_000)
            page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
            if os.environ.get("WQNB_SCREENSHOT"):
                page.screenshot(path=os.environ["WQNB_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
