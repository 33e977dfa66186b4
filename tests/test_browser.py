"""A real browser: Voila serves a notebook with the Explorer, Playwright drives Chromium.

Moving the concurrency slider must reach the kernel, re-run the simulation and come back
as a new summary table and a new figure, drawn at twice its CSS size and unstretched;
pressing a Replay's Play must move its frame. And JupyterLab runs notebook 06 with Run
All: its LiveMonitor redraws while the cells publish, and is still live (running, its
Publish button works) when the last cell has run. Uses Debian's Chromium (``/usr/bin/chromium``;
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


# -- JupyterLab: notebook 06 under Run All ------------------------------------------------

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture
def lab_url(free_tcp_port, tmp_path):
    pytest.importorskip("jupyterlab")
    port = free_tcp_port
    work = tmp_path / "lab"
    work.mkdir()
    (work / "06-live.ipynb").write_bytes((NOTEBOOKS / "06-live.ipynb").read_bytes())
    # every cell in the page (JupyterLab 4 renders only the visible ones by default)
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    log = open(tmp_path / "lab.log", "w+")  # noqa: SIM115 - closed in finally
    env = {**os.environ, "JUPYTER_PLATFORM_DIRS": "1", "MPLBACKEND": "Agg",
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
         "--allow-root", "--expose-app-in-browser", f"--ServerApp.root_dir={work}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"jupyter lab did not start:\n{log.read()[-3000:]}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/lab/tree/06-live.ipynb"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_live_monitor_in_06_updates_under_run_all_and_stays_live(lab_url, chromium_executable,
                                                                 tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_executable, headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(lab_url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell"
                                   " && document.querySelector('.jp-Notebook')",
                                   timeout=120_000)
            page.wait_for_function(  # the kernel is up and idle
                "() => { const w = window.jupyterapp.shell.currentWidget;"
                " const k = w && w.sessionContext && w.sessionContext.session"
                " && w.sessionContext.session.kernel;"
                " return k && k.status === 'idle'; }", timeout=120_000)
            # (not awaited: the command's promise settles only when every cell has run)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            status = page.locator(".wqnb-live .wqnb-status").first
            # the monitor redraws while the cells below it publish: its counts go up
            expect(status).to_contain_text("published 150", timeout=120_000)
            img = page.locator(".wqnb-live .wqnb-figure").first
            expect(img).to_have_attribute("src", re.compile("^blob:|^data:"), timeout=30_000)
            # at the end of Run All the first monitor still follows a running runtime,
            # and its buttons still work
            expect(page.locator(".jp-OutputArea-output", has_text="asked for: 450")
                   ).to_be_visible(timeout=120_000)  # the cells after it have run
            assert "runtime running" in status.inner_text()
            button = page.locator(".wqnb-live").first.locator("button", has_text="Publish burst")
            assert button.is_enabled()
            before = img.get_attribute("src")
            button.click()
            expect(status).to_contain_text("published 300", timeout=60_000)
            page.wait_for_function(
                "(b) => { const i = document.querySelector('.wqnb-live .wqnb-figure');"
                " return i && i.src !== b; }", arg=before, timeout=30_000)
            page.screenshot(path=str(tmp_path / "live.png"), full_page=True)
        finally:
            browser.close()
