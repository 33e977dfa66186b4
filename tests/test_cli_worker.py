"""``wqnb worker`` and ``wqnb merge`` (issue 9 §4) on the memory driver.

A worker is a real subprocess here (signals are the point): the test waits for its
"consuming" line, signals it, and checks the exit status, the one-line summary and the
timeline file. The graceful stop with messages in hand is checked in-process through
:func:`wqnb.worker.run_worker`, where the test can publish into the worker's memory
queue (a memory queue lives in one process; across processes, tests/test_faults.py
does the same on RabbitMQ).
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import wqnb
from wqnb import cli
from wqnb.timeline import Timeline
from wqnb.worker import WorkerOptions, run_worker

APP = """\
namespace: app.queue
entries:
  - {name: memory_driver, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: tasks, kind: queue.queue, driver: app.queue:memory_driver}
  - {name: other, kind: queue.queue, driver: app.queue:memory_driver}
  - name: task_consumer
    kind: queue.consumer
    queue: app.queue:tasks
    func: app.queue:task_handler
    concurrency: 2
    prefetch: 3
    lifecycle: {auto_start: true, stop_timeout: %(stop_timeout)s}
  - name: other_consumer
    kind: queue.consumer
    queue: app.queue:other
    func: app.queue:task_handler
    lifecycle: {auto_start: false}
"""
HANDLERS = """\
import asyncio

gate = None  # set by a test: handlers wait on it

async def ok(body):
    if gate is not None:
        await gate.wait()
"""
HANDLER = "app.queue:task_handler=workerhandlers:ok"
DEADLINE = 30.0  # seconds a subprocess may take to start or stop (a loaded 2-core machine)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "app.yaml").write_text(APP % {"stop_timeout": "5s"})
    (tmp_path / "workerhandlers.py").write_text(HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("workerhandlers", None)
    return tmp_path


def main(*argv: str) -> int:
    """``wqnb ARGV`` in this process; argparse's own errors exit (with our one-line message)."""
    try:
        return cli.main(list(argv))
    except SystemExit as e:
        return int(e.code or 0)


def start_worker(app: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(wqnb.__file__).parent.parent), str(app)]),
               PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "wqnb.cli", "worker", str(app / "app.yaml"),
                             "--handler", HANDLER, *args], cwd=app, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_line(proc: subprocess.Popen[str], needle: str, deadline: float = DEADLINE) -> str:
    """The first stdout line containing ``needle``; fails (with stderr) if the process
    ends or ``deadline`` seconds pass first."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + deadline
    while (left := end - time.monotonic()) > 0:
        if sel.select(timeout=left):
            line = proc.stdout.readline()
            if needle in line:
                return line
            if not line:  # EOF: it ended
                break
    proc.kill()
    _, err = proc.communicate()
    pytest.fail(f"no {needle!r} on the worker's stdout (exit {proc.returncode}); stderr: {err}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_runs_until_signalled_then_writes_its_timeline(app, sig):
    proc = start_worker(app, "--name", "w1", "-o", str(app / "w1.parquet"))
    ready = wait_for_line(proc, "consuming")
    assert ready.strip() == "wqnb worker w1: consuming app.queue:task_consumer (SIGINT or SIGTERM stops)"
    assert not (app / "w1.parquet").exists()  # written when it stops (no --checkpoint)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert out.strip().splitlines()[-1] == (
        f"worker w1: 0 delivered, 0 acked, 0 nacked, 0 returned, 0 in hand over 0 s; timeline: {app / 'w1.parquet'}")
    tl = Timeline.read(app / "w1.parquet")
    assert tl.process == "w1" and tl.origin_unix == pytest.approx(time.time(), abs=120)
    assert list(tl.consumers) == ["app.queue:task_consumer"]


def test_checkpoints_leave_a_timeline_behind_a_kill_9(app):
    proc = start_worker(app, "--consumers", "task_consumer,other_consumer", "--checkpoint", "0.05",
                        "-o", str(app / "w.csv"))
    wait_for_line(proc, "consuming app.queue:task_consumer, app.queue:other_consumer")
    end = time.monotonic() + DEADLINE
    while not (app / "w.csv.json").exists() and time.monotonic() < end:
        time.sleep(0.01)  # polling a condition, with a deadline
    proc.kill()
    proc.communicate(timeout=DEADLINE)
    tl = Timeline.read(app / "w.csv")
    assert tl.process.endswith(f":{proc.pid}")  # host:pid without --name
    assert set(tl.consumers) == {"app.queue:task_consumer", "app.queue:other_consumer"}
    assert not [p for p in app.iterdir() if p.name.startswith(".w.csv")]  # no temporary left


def test_a_graceful_stop_hands_back_what_was_not_handled(app):
    """Handlers that never finish: stop hands the buffered messages back, waits
    stop_timeout, then hands back the interrupted ones too. Nothing is lost."""
    (app / "app.yaml").write_text(APP % {"stop_timeout": "0.2s"})
    import workerhandlers

    stop = asyncio.Event()

    async def started(rt, _line):
        workerhandlers.gate = asyncio.Event()  # never set
        for i in range(10):
            await rt.publish("app.queue:tasks", {"id": i})
        async with asyncio.timeout(DEADLINE):
            while rt.timeline.summary()["max_busy"] < 2:  # both workers hold a message
                await asyncio.sleep(0)
        stop.set()

    async def main():
        opts = WorkerOptions(app=[app / "app.yaml"], handlers=[HANDLER], name="w")
        result = await run_worker(opts, stop=stop, started=started, signals=False)
        return result.timeline, result.problems

    tl, problems = asyncio.run(main())
    assert len(problems) == 1 and "app.queue:task_consumer" in problems[0]  # the StopTimeout
    last = tl.df.groupby("msg_id", observed=True)["event"].last().astype(str)
    assert len(last) == 10 and set(last) <= {"requeue", "publish"}  # back in the queue, or never left
    m = tl.messages()
    assert (m["outcome"] == "returned").sum() == len(m) == 5  # 2 interrupted + 3 buffered


def test_a_worker_stopped_after_draining_has_acked_everything(app):
    stop = asyncio.Event()

    async def started(rt, _line):
        for i in range(20):
            await rt.publish("app.queue:tasks", {"id": i})
        await rt.drain(timeout=DEADLINE)
        stop.set()

    async def main():
        opts = WorkerOptions(app=[app / "app.yaml"], handlers=[HANDLER], name="w")
        return await run_worker(opts, stop=stop, started=started, signals=False)

    result = asyncio.run(main())
    assert result.problems == []
    s = result.timeline.summary()
    assert (s["published"], s["acked"], s["max_unsettled"] <= 5) == (20, 20, True)
    from wqnb.worker import one_line

    assert one_line(result.timeline).startswith("worker w: 20 delivered, 20 acked, 0 nacked, 0 returned, 0 in hand")


@pytest.mark.parametrize("argv, message", [
    (["--consumers", "nope"], ("--consumers nope: is not a consumer of the app (the app has: "
                               "app.queue:task_consumer, app.queue:other_consumer)")),
    (["--consumers", "a,,b"], "argument --consumers: expected ID,ID,... without empty names"),
    (["--checkpoint", "1"], "--checkpoint needs -o"),
    (["-o", "w.xlsx"], "-o w.xlsx: unknown timeline format '.xlsx'"),
    (["--handler", "app.queue:task_handler"], "--handler 'app.queue:task_handler': expected FUNC=MODULE:ATTR"),
])
def test_bad_worker_input_is_one_line_and_exit_2(app, capsys, argv, message):
    code = main("worker", str(app / "app.yaml"), *argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_a_worker_without_consumers_to_run_says_so(app, capsys):
    (app / "app.yaml").write_text((APP % {"stop_timeout": "1s"}).replace("auto_start: true, stop", "auto_start: false, stop"))
    assert cli.main(["worker", str(app / "app.yaml")]) == 2
    assert "no consumer to run: none is auto_start" in capsys.readouterr().err


def test_merge_command_joins_files(app, tmp_path, capsys):
    a = wqnb.simulate(concurrency=2, prefetch=3, messages=30, seed=1)
    b = wqnb.simulate(concurrency=2, prefetch=3, messages=20, seed=2)
    a.origin_unix, a.process = 1_767_225_600.0, "a"
    b.origin_unix, b.process = 1_767_225_605.0, "b"
    a.save(tmp_path / "a.parquet")
    b.save(tmp_path / "b.csv")
    code = cli.main(["merge", str(tmp_path / "a.parquet"), str(tmp_path / "b.csv"),
                     "-o", str(tmp_path / "all.parquet"), "--plot", str(tmp_path / "all.png")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0] == (f"merged 2 timelines (a, b): {len(a) + len(b)} events, 50 messages, 50 acked; "
                                   f"timeline: {tmp_path / 'all.parquet'}")
    merged = Timeline.read(tmp_path / "all.parquet")
    assert merged.df["process"].value_counts().to_dict() == {"a": len(a), "b": len(b)}
    assert (tmp_path / "all.png").stat().st_size > 0
    pd.testing.assert_frame_equal(merged.df, Timeline.merge([a, b]).df)


@pytest.mark.parametrize("argv, message", [
    (["nope.parquet", "-o", "all.parquet"], "nope.parquet: no such timeline file"),
    (["a.parquet"], "the following arguments are required: -o/--output"),
    (["a.parquet", "-o", "all.txt"], "-o all.txt: unknown timeline format '.txt'"),
])
def test_bad_merge_input_is_one_line_and_exit_2(app, capsys, argv, message):
    tl = wqnb.simulate(messages=5)
    tl.origin_unix = 0.0
    tl.save(app / "a.parquet")
    code = main("merge", *argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


# -- on RabbitMQ: two worker processes, one stopped gracefully mid-run ----------------------

AMQP_APP = """\
namespace: app.queue
entries:
  - {name: amqp_driver, kind: queue.driver.amqp, url: "%(url)s", lifecycle: {auto_start: true}}
  - {name: tasks, kind: queue.queue, driver: app.queue:amqp_driver, queue_name: "%(queue)s"}
  - name: task_consumer
    kind: queue.consumer
    queue: app.queue:tasks
    func: app.queue:task_handler
    concurrency: 2
    prefetch: 3
    lifecycle: {auto_start: true}
"""
SLOW = """\
import asyncio

async def ok(body):
    await asyncio.sleep(0.05)  # the work (not a wait in the test): 2 x 2 workers, 80 messages/s
"""


def acked_in(path: Path) -> set[str]:
    if not path.exists():
        return set()
    df = Timeline.read(path).df
    return set(df.loc[df["event"] == "ack", "msg_id"].astype(str))


def wait_for(cond, what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline:g} s waiting for {what}")
        time.sleep(0.02)  # polling a condition, with a deadline


def test_two_workers_on_rabbitmq_one_stopped_gracefully_nothing_lost(app, amqp_url):
    import uuid

    (app / "app.yaml").write_text(AMQP_APP % {"url": amqp_url, "queue": f"wqnb_worker_{uuid.uuid4().hex}"})
    (app / "workerhandlers.py").write_text(SLOW)
    files = {n: app / f"{n}.parquet" for n in ("w1", "w2")}
    procs = {n: start_worker(app, "--name", n, "-o", str(f), "--checkpoint", "0.05") for n, f in files.items()}
    try:
        for proc in procs.values():
            wait_for_line(proc, "consuming")

        async def publish() -> tuple[Timeline, list[str]]:
            rt = wqnb.Runtime.from_yaml(app / "app.yaml")
            rt.recorder.process = "pub"
            await rt.start("app.queue:amqp_driver")
            ids = [await rt.publish("app.queue:tasks", {"id": i}) for i in range(300)]  # faster than they are handled: a backlog
            await rt.stop()
            return rt.timeline, ids

        pub, ids = asyncio.run(publish())
        wait_for(lambda: len(acked_in(files["w1"])) >= 5, "w1 to ack 5 messages")
        procs["w1"].send_signal(signal.SIGTERM)
        out, err = procs["w1"].communicate(timeout=DEADLINE)
        assert procs["w1"].returncode == 0, err
        assert out.strip().splitlines()[-1].startswith("worker w1: ")
        wait_for(lambda: acked_in(files["w1"]) | acked_in(files["w2"]) >= set(ids), "every message to be acked")
        procs["w2"].send_signal(signal.SIGTERM)
        assert procs["w2"].wait(timeout=DEADLINE) == 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    tl = Timeline.merge([pub, *files.values()])
    m = tl.messages()
    acked = m[m["outcome"] == "ack"]
    assert sorted(acked["msg_id"].astype(str)) == sorted(ids)  # each acked exactly once
    returned = set(m.loc[(m["process"] == "w1") & (m["outcome"] == "returned"), "msg_id"].astype(str))
    again = m[m["redelivered"]]
    # w1's buffer, released on stop (its running handlers finished), redelivered to w2; with
    # the messages the driver had received for it but not yet handed to the consumer (no
    # deliver row in w1), never more than its basic.qos = prefetch + concurrency
    assert len(returned) >= 1
    assert returned <= set(again["msg_id"].astype(str)) and len(again) <= 5
    assert set(again["process"]) <= {"w2"} and (again["attempt"] == 1).all()
    assert m["outcome"].notna().all()  # nothing left in hand anywhere
    for name in ("w1", "w2"):
        assert tl.gauges(f"app.queue:task_consumer@{name}")["unsettled"].max() <= 5  # prefetch + concurrency
