"""The ``wqnb`` command (issue 2, point 9): run a YAML app and publish N messages,
simulate a workload, print a summary, write the timeline on request; bad input gives one
clear line on stderr and a non-zero exit, never a traceback.

Most tests call ``wqnb.cli.main(argv)`` in this process; one runs the installed script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import wqnb
from wqnb import cli

APP = """\
namespace: app.queue
entries:
  - {name: memory_driver, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - name: tasks
    kind: queue.queue
    driver: app.queue:memory_driver
    dead_letter: {queue: app.queue:dead, max_attempts: 2}
  - {name: dead, kind: queue.queue, driver: app.queue:memory_driver}
  - name: task_consumer
    kind: queue.consumer
    queue: app.queue:tasks
    func: app.queue:task_handler
    concurrency: %(concurrency)s
    prefetch: 20
    lifecycle: {auto_start: true}
"""
LUA_HANDLER = """\
  - name: task_handler
    kind: function.lua
    modules: [json]
    source: |
      local json = require("json")
      return function(body)
        local data = json.decode(body)
        if data.id == 3 then return nil, "refused three" end
        return true
      end
"""
HANDLERS = """\
seen = []

async def ok(body):
    seen.append(body)
"""


@pytest.fixture
def app(tmp_path, monkeypatch):
    """An app folder: app.yaml (a Python handler comes from --handler) and clihandlers.py."""
    (tmp_path / "app.yaml").write_text(APP % {"concurrency": 4})
    (tmp_path / "clihandlers.py").write_text(HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("clihandlers", None)
    return tmp_path


def wqnb_cli(*argv: object) -> int:
    return cli.main([str(a) for a in argv])


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_run_publishes_n_messages_prints_a_summary_and_writes_the_timeline(app, capsys):
    rc = wqnb_cli("run", app / "app.yaml", "--publish", "app.queue:tasks", '{"id": 1}', "-n", 100,
                  "--handler", "app.queue:task_handler=clihandlers:ok", "-o", app / "tl.csv")
    out = capsys.readouterr().out
    assert rc == 0
    summary = dict(line.split(None, 1) for line in out.splitlines() if not line.startswith("timeline:"))
    assert summary["published"] == "100" and summary["acked"] == "100" and summary["nacked"] == "0"
    assert int(summary["max_busy"]) <= 4 and int(summary["max_unsettled"]) <= 24
    assert f"timeline: {app / 'tl.csv'}" in out
    df = pd.read_csv(app / "tl.csv")
    assert df["event"].value_counts()[["publish", "deliver", "start", "ack"]].tolist() == [100] * 4
    import clihandlers

    assert clihandlers.seen == ['{"id":1}'] * 100  # JSON text, encoded once on publish


def test_run_with_max_events_keeps_the_totals_and_says_what_it_dropped(app, capsys):
    rc = wqnb_cli("run", app / "app.yaml", "--publish", "app.queue:tasks", '{"id": 1}', "-n", 3000,
                  "--handler", "app.queue:task_handler=clihandlers:ok", "--max-events", 2000,
                  "-o", app / "tl.csv")
    out = capsys.readouterr().out
    assert rc == 0
    assert "dropped" in out, out  # the summary says its window is not the whole run
    summary = dict(line.split(None, 1) for line in out.splitlines()
                   if len(line.split(None, 1)) == 2 and not line.startswith("timeline:"))
    assert summary["published"] == "3000" and summary["acked"] == "3000"  # whole-run totals
    assert len(pd.read_csv(app / "tl.csv")) < 3 * 2000  # the rows kept are bounded (4 a message)


def test_run_a_lua_app_on_virtual_time_to_parquet(app, capsys):
    pytest.importorskip("lupa")
    pytest.importorskip("pyarrow")
    (app / "app.yaml").write_text(APP % {"concurrency": 2} + LUA_HANDLER)
    rc = wqnb_cli("run", app, "--virtual", "--publish", "app.queue:tasks", '{"id": 1}',
                  "--publish", "app.queue:tasks", '{"id": 3}', "-n", 2, "-o", app / "tl.parquet")
    assert rc == 0, capsys.readouterr().err
    df = pd.read_parquet(app / "tl.parquet")
    nacks = df[df["event"] == "nack"]
    assert len(nacks) == 4 and set(nacks["error"]) == {"refused three"}  # a handler failure is a nack
    assert (df["event"] == "dead_letter").sum() == 2 and (df["event"] == "ack").sum() == 2


def test_simulate_writes_the_timeline_and_the_figure(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    out, fig = tmp_path / "sim.parquet", tmp_path / "sim.png"
    rc = wqnb_cli("simulate", "--concurrency", 4, "--prefetch", 10, "--messages", 300, "--arrival-rate", 100,
                  "--service-time", "exp:0.05", "--seed", 3, "-o", out, "--plot", fig)
    text = capsys.readouterr().out
    assert rc == 0
    assert "published             300" in text and f"figure: {fig}" in text
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    df = pd.read_parquet(out)
    assert (df["event"] == "ack").sum() == 300
    assert df["busy"].max() == 4 and df["unsettled"].max() <= 14
    # the same as the Python API with the same arguments
    tl = wqnb.simulate(concurrency=4, prefetch=10, messages=300, arrival_rate=100.0,
                       service_time=wqnb.Exponential(0.05), seed=3)
    cols = ["t", "event", "worker", "depth", "buffered", "busy", "unsettled"]
    pd.testing.assert_frame_equal(df[cols].astype(str), tl.df[cols].astype(str))


@pytest.mark.parametrize("spec,expected", [
    ("50ms", wqnb.Constant(0.05)),
    ("exp:0.05", wqnb.Exponential(0.05)),
    ("uniform:10ms:90ms", wqnb.Uniform(0.01, 0.09)),
    ("lognormal:0.05:1.5", wqnb.LogNormal(0.05, 1.5)),
])
def test_service_time_forms(spec, expected):
    got = cli._duration_or_dist(spec)
    assert (wqnb.Constant(got) if isinstance(got, float) else got) == expected


def test_demo_writes_a_png(tmp_path, capsys):
    rc = wqnb_cli("demo", "-o", tmp_path / "demo.png")
    assert rc == 0
    assert "publisher waits" in capsys.readouterr().out
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"


BAD = [
    (["simulate", "--messages", "1.5"], "argument --messages: expected a whole number, got '1.5'"),
    (["simulate", "--concurrency", "-1"], "argument --concurrency: must not be negative, got -1"),
    (["simulate", "--service-time", "exp:0"], "Exponential mean must be > 0 seconds"),
    (["simulate", "--service-time", "uniform:0.2:0.1"], "Uniform high must be >= low"),
    (["simulate", "--service-time", "lognormal:0.05:abc"], "lognormal sigma: expected a number, got 'abc'"),
    (["simulate", "--service-time", "soon"], "invalid duration 'soon'"),
    (["simulate", "--arrival-rate", "-5"], "arrival_rate must be > 0"),
    (["simulate", "--failure-rate", "1"], "without max_attempts would requeue every message forever"),
    (["simulate", "-o", "timeline.txt"], "-o timeline.txt: unknown timeline format '.txt'"),
    (["simulate", "--plot", "figure.xyz"], "--plot figure.xyz: unknown figure format '.xyz'"),
    (["simulate", "-o", "no/such/folder/tl.csv"], "no such folder"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["run"], "the following arguments are required: app"),
    (["run", "missing.yaml"], "no such file or folder: missing.yaml"),
    (["run", "app.yaml", "--publish", "app.queue:nope", "x", "--handler", "app.queue:task_handler=clihandlers:ok"],
     "queue not found: app.queue:nope (declared queues: app.queue:tasks, app.queue:dead)"),
    (["run", "app.yaml", "--handler", "nope"], "--handler 'nope': expected FUNC=MODULE:ATTR"),
    (["run", "app.yaml", "--handler", "app.queue:task_handler=nomod:fn"], "cannot import module 'nomod'"),
    (["run", "app.yaml", "--publish", "app.queue:tasks", "x"], "function not found: app.queue:task_handler"),
    (["run", "big.yaml"], "concurrency 1001 exceeds maximum 1000"),
]


@pytest.mark.parametrize("argv,text", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_status_2_before_anything_runs(app, capsys, argv, text):
    (app / "big.yaml").write_text(APP % {"concurrency": 1001})
    try:
        rc = wqnb_cli(*argv)
    except SystemExit as e:  # argparse's own errors exit (with our one-line message)
        rc = e.code
    captured = capsys.readouterr()
    assert rc == 2
    line = one_line(captured.err)
    assert line.startswith("wqnb") and text in line, line
    assert captured.out == ""  # nothing ran, no summary
    if argv[:2] == ["run", "big.yaml"]:
        assert "big.yaml" in line and "app.queue:task_consumer" in line  # names the file and the entry


def test_an_unexpected_error_is_one_line_with_status_1(monkeypatch, capsys):
    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("wqnb.sim.simulate", broken)
    monkeypatch.delenv("WQNB_DEBUG", raising=False)
    assert wqnb_cli("simulate") == 1
    line = one_line(capsys.readouterr().err)
    assert line == "wqnb: internal error: RuntimeError: boom (WQNB_DEBUG=1 shows the traceback)"
    monkeypatch.setenv("WQNB_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        wqnb_cli("simulate")


def test_the_installed_command(tmp_path):
    script = Path(sys.executable).with_name("wqnb")
    if not script.exists():
        pytest.skip("the wqnb script is not installed next to this Python")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run([script, "simulate", "--messages", "40", "-o", tmp_path / "tl.csv"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "published             40" in ok.stdout and (tmp_path / "tl.csv").exists()
    bad = subprocess.run([script, "run", tmp_path / "nowhere.yaml"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert one_line(bad.stderr).startswith("wqnb: no such file or folder:")


def test_a_run_that_cannot_drain_stops_prints_where_the_messages_are_and_exits_1(app, capsys):
    # (real time: --timeout 0.2 s, then stop_timeout 0.1 s)
    (app / "app.yaml").write_text((APP % {"concurrency": 2}).replace(
        "lifecycle: {auto_start: true}\n", "lifecycle: {auto_start: true, stop_timeout: 100ms}\n"))
    (app / "clihandlers.py").write_text("import asyncio\n\nasync def ok(body):\n    await asyncio.Event().wait()\n")
    rc = wqnb_cli("run", app / "app.yaml", "--publish", "app.queue:tasks", "x", "-n", 3,
                  "--handler", "app.queue:task_handler=clihandlers:ok", "--timeout", 0.2, "-o", app / "tl.csv")
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err.splitlines() == [
        "wqnb: queues not drained after 0.2s (--timeout): stopped with messages still queued",
        "wqnb: consumer stop timed out: app.queue:task_consumer (stop_timeout 0.1s); the interrupted messages "
        "were requeued at the head of their queues",
    ]
    summary = dict(line.split(None, 1) for line in captured.out.splitlines() if not line.startswith("timeline:"))
    assert summary["published"] == "3" and summary["acked"] == "0"
    last = pd.read_csv(app / "tl.csv").groupby("msg_id")["event"].last()
    assert sorted(last) == ["requeue"] * 3  # two interrupted, one handed back from the buffer: none lost


def test_a_drain_timeout_with_a_clean_stop_still_exits_1(app, capsys):
    (app / "clihandlers.py").write_text("import asyncio\n\nasync def ok(body):\n    await asyncio.sleep(0.3)\n")
    rc = wqnb_cli("run", app / "app.yaml", "--publish", "app.queue:tasks", "x", "-n", 8,
                  "--handler", "app.queue:task_handler=clihandlers:ok", "--timeout", 0.1)
    captured = capsys.readouterr()
    assert rc == 1  # the four running handlers finish within the default stop_timeout
    assert one_line(captured.err) == "wqnb: queues not drained after 0.1s (--timeout): stopped with messages still queued"
    assert "published             8" in captured.out


def test_a_virtual_run_that_requeues_forever_ends_at_its_timeout(app, capsys):
    (app / "app.yaml").write_text((APP % {"concurrency": 1}).replace(
        "    prefetch: 20\n", "    prefetch: 20\n    requeue_delay: 1s\n").replace("max_attempts: 2", "max_attempts: 1000000"))
    (app / "clihandlers.py").write_text("async def ok(body):\n    raise RuntimeError('never')\n")
    rc = wqnb_cli("run", app / "app.yaml", "--virtual", "--publish", "app.queue:tasks", "x",
                  "--handler", "app.queue:task_handler=clihandlers:ok", "--timeout", "30s")
    captured = capsys.readouterr()
    assert rc == 1
    assert one_line(captured.err) == ("wqnb: queues not drained after 30s of virtual time (--timeout): "
                                      "stopped with messages still queued")
    assert "nacked                31" in captured.out  # at t = 0, 1, ..., 30 (the last at the cut-off)


# -- issue 14: -o a folder, --help, Ctrl-C, a handler that outlives every timeout ------------------------
def test_o_naming_a_folder_fails_before_the_run(app, capsys):
    """Point 19: it failed after the run with [Errno 21], and the timeline was lost."""
    (app / "out.csv").mkdir()
    (app / "fig.png").mkdir()
    for argv, flag in ((["run", app / "app.yaml", "--handler", "app.queue:task_handler=clihandlers:ok",
                         "--publish", "app.queue:tasks", "x", "-o", "out.csv"], "-o out.csv"),
                       (["simulate", "--plot", "fig.png"], "--plot fig.png")):
        assert wqnb_cli(*argv) == 2
        captured = capsys.readouterr()
        assert one_line(captured.err) == f"wqnb: {flag}: is a folder (name the file to write)"
        assert captured.out == ""


def test_run_help_says_what_timeout_bounds(capsys):
    """Point 20: `-n 1000000000 --timeout 1` ran for ever: --timeout starts after publishing."""
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "seconds to wait for the queues to drain once every message is published (it does not bound " \
           "publishing itself, nor the consumers' stop_timeout after it;" in text
    assert "Ctrl-C stops gracefully at any point (summary and -o still written); a second Ctrl-C exits at once" in text


SLOW_HANDLERS = """\
import asyncio, pathlib, time

async def slow(body):
    pathlib.Path("started").touch()
    await asyncio.sleep(0.2)

def blocked(body):
    pathlib.Path("started").touch()
    time.sleep(float(pathlib.Path("block_for").read_text()))
"""


def _cli_process(app: Path, *argv: object) -> subprocess.Popen:
    (app / "clihandlers.py").write_text(SLOW_HANDLERS)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "wqnb.cli", "run", "app.yaml", *map(str, argv)], cwd=app,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, deadline: float = 60.0) -> None:
    import time

    end = time.monotonic() + deadline
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path.name} never appeared"
        time.sleep(0.02)


def _bounded_app(app: Path, stop_timeout: str) -> None:
    (app / "app.yaml").write_text((APP % {"concurrency": 1}).replace(
        "driver: app.queue:memory_driver\n    dead_letter",
        "driver: app.queue:memory_driver\n    options: {max_length: 10}\n    dead_letter").replace(
        "lifecycle: {auto_start: true}\n    ", "lifecycle: {auto_start: true}\n    ").replace(
        "    lifecycle: {auto_start: true}\n", f"    lifecycle: {{auto_start: true, stop_timeout: {stop_timeout}}}\n"))


@pytest.mark.timeout(120)
def test_a_first_ctrl_c_stops_gracefully_with_summary_and_timeline(app):
    """Point 12 (and 20): Ctrl-C exited 130 at once, with no summary, no timeline, no word.
    Here a billion messages are being published into a queue of 10: Ctrl-C ends it cleanly."""
    import signal

    _bounded_app(app, "10s")
    proc = _cli_process(app, "--publish", "app.queue:tasks", "x", "-n", 1_000_000_000, "--timeout", 1,
                        "--handler", "app.queue:task_handler=clihandlers:slow", "-o", "tl.csv")
    _wait_for(app / "started", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.splitlines() == [
        "wqnb: Ctrl-C: stopping gracefully (Ctrl-C again exits at once)",
        ("wqnb: interrupted (Ctrl-C): stopped gracefully; the messages not handled yet are back in their queues, "
         "and the summary and timeline above are as at the stop"),
    ]
    summary = dict(line.split(None, 1) for line in out.splitlines() if not line.startswith("timeline:"))
    assert out.splitlines()[-1] == "timeline: tl.csv"
    df = pd.read_csv(app / "tl.csv")
    published = int(summary["published"])
    assert 10 <= published == df.msg_id[df.event == "publish"].nunique()
    # nothing lost: each message was acked, or is back in the queue (never left mid-delivery)
    last = df[df.msg_id.notna()].groupby("msg_id")["event"].last()
    assert set(last) <= {"ack", "requeue", "publish", "publish_cancelled", "publish_wait"}, set(last)
    assert (last == "ack").sum() == int(summary["acked"]) >= 1


@pytest.mark.timeout(120)
def test_a_second_ctrl_c_exits_at_once(app):
    import signal
    import time

    _bounded_app(app, "60s")
    (app / "block_for").write_text("60")
    proc = _cli_process(app, "--publish", "app.queue:tasks", "x", "-n", 3,
                        "--handler", "app.queue:task_handler=clihandlers:blocked")
    _wait_for(app / "started", proc)
    proc.send_signal(signal.SIGINT)
    assert proc.stderr.readline() == "wqnb: Ctrl-C: stopping gracefully (Ctrl-C again exits at once)\n"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)  # the stop is waiting on a handler blocked for 60 s
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err == "wqnb: second Ctrl-C: exiting at once\n"
    assert time.monotonic() - t0 < 20  # (not the 60 s the handler blocks for)


@pytest.mark.timeout(120)
def test_a_sync_handler_blocked_past_every_timeout_does_not_hold_the_exit(app):
    """Point 11: the CLI hung ~30 s after both timeouts had passed (Python joins the
    handler's thread at exit); it now exits naming the handler still running."""
    _bounded_app(app, "200ms")
    (app / "block_for").write_text("40")
    proc = _cli_process(app, "--publish", "app.queue:tasks", "x", "-n", 2, "--timeout", 0.3,
                        "--handler", "app.queue:task_handler=clihandlers:blocked")
    try:
        out, err = proc.communicate(timeout=25)  # 0.3 s + 0.2 s + the stop's bounded unwind
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("wqnb run waited for the blocked handler past its timeouts")
    assert proc.returncode == 1, err
    lines = err.splitlines()
    assert lines[0] == "wqnb: queues not drained after 0.3s (--timeout): stopped with messages still queued"
    assert lines[1].startswith("wqnb: consumer stop timed out: app.queue:task_consumer (stop_timeout 0.2s)")
    assert lines[-1] == ("wqnb: exiting without waiting for the handler still running: app.queue:task_handler "
                         "(consumer app.queue:task_consumer, thread wqnb-app.queue:task_consumer_0)")
    assert "published             2" in out


def test_deeply_nested_yaml_is_one_line_naming_the_file_not_an_internal_error(app, capsys):
    """Point 17: 5,000 nested [ raised RecursionError, and the CLI said "internal error"."""
    (app / "deep.yaml").write_text("namespace: app\nentries: " + "[" * 5000 + "\n")
    assert wqnb_cli("run", "deep.yaml") == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("wqnb: deep.yaml: YAML nested too deeply to read") and "internal error" not in line


def test_run_publishes_and_consumes_on_rabbitmq(app, capsys, amqp_url):
    """`wqnb run` drives the same app on a broker: publish, consume, drain, stop."""
    pytest.importorskip("aio_pika")
    import uuid

    run = uuid.uuid4().hex[:8]
    opts = "driver_options: {amqp: {durable: false, queue_expiry: 60s}}"
    broker_app = ((APP % {"concurrency": 4})
                  .replace("kind: queue.driver.memory,", f'kind: queue.driver.amqp, url: "{amqp_url}",')
                  .replace("    driver: app.queue:memory_driver\n",
                           f"    driver: app.queue:memory_driver\n    queue_name: cli-run-{run}\n    {opts}\n", 1)
                  .replace("{name: dead, kind: queue.queue, driver: app.queue:memory_driver}",
                           f"{{name: dead, kind: queue.queue, driver: app.queue:memory_driver, "
                           f"queue_name: cli-dead-{run}, {opts}}}"))
    assert broker_app.count(run) == 2 and "queue.driver.amqp" in broker_app
    (app / "app.yaml").write_text(broker_app)
    rc = wqnb_cli("run", app / "app.yaml", "--publish", "app.queue:tasks", '{"id": 1}', "-n", 40,
                  "--handler", "app.queue:task_handler=clihandlers:ok", "-o", app / "tl.csv")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = dict(line.split(None, 1) for line in captured.out.splitlines() if not line.startswith("timeline:"))
    assert summary["published"] == "40" and summary["acked"] == "40"
    df = pd.read_csv(app / "tl.csv")
    assert (df["event"] == "ack").sum() == 40 and df[df["event"] == "ack"]["msg_id"].is_unique
