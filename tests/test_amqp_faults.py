"""Faults on a real RabbitMQ (issue 9 §5): worker processes killed or stopped, the broker
killed and restarted from its data dir, the broker down at start or during a publish.

Workers are real `wqnb worker` subprocesses. Their handler (a `function.python` entry, the
module written into tmp_path) appends `body redelivered msg_id` to a file of its own process
with one `write()`, before the message is acked: what the files hold is what was handled,
whatever the timelines say, and an id in two files is a duplicate. The publisher writes an
id once its `publish()` returned (the broker confirmed it). Every wait is a condition polled
with a deadline. Tests that kill the broker use `private_rabbitmq` (a server of their own);
the others use the shared one (`amqp_url`) with a queue of their own.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typing import ClassVar

pytest.importorskip("aio_pika")

import aio_pika
from servers import RabbitMQServer, free_port

import wqnb
from wqnb.errors import DriverUnavailable, PublishError

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 90.0  # seconds for a subprocess to start, a queue to empty, ... (a loaded 2-core box)

APP = """\
namespace: app
entries:
  - name: rmq
    kind: queue.driver.amqp
    url: "{url}"
    connection_timeout: {connection_timeout}
    reconnect_delay: 0.1s
    reconnect_max_delay: 1s
    publish_timeout: {publish_timeout}
    lifecycle: {{auto_start: true}}
  - name: tasks
    kind: queue.queue
    driver: rmq
    queue_name: {queue_name}
  - name: handler
    kind: function.python
    source: faulthandlers:handle
  - name: worker
    kind: queue.consumer
    queue: tasks
    func: handler
    concurrency: {concurrency}
    prefetch: {prefetch}
    lifecycle: {{auto_start: false, stop_timeout: 30s}}
"""

HANDLERS = """\
import asyncio, os

_DELAY = float(os.environ.get("WQNB_FAULT_DELAY", "0"))
_FD = os.open(os.path.join(os.environ["WQNB_FAULT_DIR"], f"handled.{os.getpid()}"),
              os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


async def handle(body, delivery):
    if _DELAY:
        await asyncio.sleep(_DELAY)
    if isinstance(body, bytes):
        body = body.decode()
    m = delivery.message
    os.write(_FD, f"{body} {int(bool(getattr(m, 'redelivered', False)))} {m.id}\\n".encode())
"""

PUBLISHER = """\
import asyncio, os, sys
import wqnb


async def main(app, first, count, out, rate, batch):
    rt = wqnb.Runtime.from_yaml(app)
    await rt.start()  # the driver only: the consumer is not auto_start
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def one(i):
        body = f"m{i:06d}"
        await rt.publish("app:tasks", body)  # returns once the broker confirmed
        os.write(fd, (body + "\\n").encode())

    try:
        for start in range(first, first + count, batch):
            await asyncio.gather(*(one(i) for i in range(start, min(start + batch, first + count))))
            if rate:
                await asyncio.sleep(batch / rate)  # the workload's pace
    finally:
        await rt.stop()
    print(f"published {count}", flush=True)


asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]),
                 int(sys.argv[6])))
"""


def wait_for(cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll `cond` until it holds; fail naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def ids(n: int, first: int = 0) -> list[str]:
    return [f"m{i:06d}" for i in range(first, first + n)]


@dataclass
class Handled:
    """One line of a handler file."""

    body: str
    redelivered: bool
    msg_id: str


def read_lines(path: Path) -> list[str]:
    """Complete lines of a file others append to (a torn last line is left for later)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return lines[:-1]  # after the last "\n": empty, or not yet complete


@dataclass
class Proc:
    """A subprocess with its output in files (a pipe left unread could block it)."""

    popen: subprocess.Popen[bytes]
    name: str
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = DEADLINE) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout:g} s; output:\n{self.output()}")

    def term(self) -> int:
        """SIGTERM (a graceful stop) and its exit status."""
        self.popen.send_signal(signal.SIGTERM)
        return self.wait()

    def kill9(self) -> None:
        self.popen.kill()
        self.popen.wait(timeout=DEADLINE)


@dataclass
class Worker(Proc):
    dir: Path = Path()
    timeline: Path = Path()

    def handled(self) -> list[Handled]:
        return [Handled(b, r == "1", m) for b, r, m in
                (line.split(" ") for line in read_lines(self.dir / f"handled.{self.pid}"))]

    def bodies(self) -> list[str]:
        return [h.body for h in self.handled()]


@dataclass
class Scenario:
    """One test's app, queue, processes and files; stops what it started at teardown."""

    dir: Path
    url: str
    queue_name: str = field(default_factory=lambda: f"wqnb-faults-{uuid.uuid4().hex[:10]}")
    procs: list[Proc] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    #: the app's YAML (a broker's fault tests subclass with their own driver entry)
    template: ClassVar[str] = APP

    def write_app(self, *, concurrency: int = 2, prefetch: int = 10, publish_timeout: str = "60s",
                  connection_timeout: str = "5s", name: str = "app.yaml",
                  url: str | None = None) -> Path:
        path = self.dir / name
        path.write_text(self.template.format(url=url or self.url, queue_name=self.queue_name,
                                   concurrency=concurrency, prefetch=prefetch,
                                   publish_timeout=publish_timeout,
                                   connection_timeout=connection_timeout))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        path = os.pathsep.join([str(self.dir), str(ROOT), os.environ.get("PYTHONPATH", "")])
        return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1",
                    WQNB_FAULT_DIR=str(self.dir), **extra)

    def _spawn(self, argv: list[str], name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.dir / f"{name}.log"
        with open(log, "ab") as out:
            return subprocess.Popen(argv, cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)

    def worker(self, name: str, app: Path, *, delay: float = 0.0, ready: bool = True) -> Worker:
        """Start `wqnb worker` on the app's consumer; return once it says it is consuming."""
        timeline = self.dir / f"{name}.parquet"
        argv = [sys.executable, "-m", "wqnb.cli", "worker", str(app), "--consumers", "app:worker",
                "--name", name, "-o", str(timeline)]
        popen = self._spawn(argv, name, self.env(WQNB_FAULT_DELAY=str(delay)))
        w = Worker(popen, name, self.dir / f"{name}.log", self.dir, timeline)
        self.procs.append(w)
        self.workers.append(w)
        if ready:
            self.wait_ready(w)
        return w

    def start_workers(self, names: list[str], app: Path, *, delay: float = 0.0) -> list[Worker]:
        """Start several workers at once (each takes seconds to import), then wait for all."""
        workers = [self.worker(name, app, delay=delay, ready=False) for name in names]
        for w in workers:
            self.wait_ready(w)
        return workers

    @staticmethod
    def wait_ready(w: Worker) -> None:
        wait_for(lambda: "consuming" in w.output() or w.popen.poll() is not None,
                 f"worker {w.name} to start consuming")
        assert w.popen.poll() is None, f"worker {w.name} exited at start:\n{w.output()}"

    def publisher(self, app: Path, count: int, *, first: int = 0, rate: float = 0.0,
                  batch: int = 1, name: str = "publisher") -> Proc:
        """A publisher process: `batch` concurrent publishes at a time, `rate` a second."""
        script = self.dir / "publisher.py"
        script.write_text(PUBLISHER)
        argv = [sys.executable, str(script), str(app), str(first), str(count),
                str(self.published_file), str(rate), str(batch)]
        p = Proc(self._spawn(argv, name, self.env()), name, self.dir / f"{name}.log")
        self.procs.append(p)
        return p

    @property
    def published_file(self) -> Path:
        return self.dir / "published"

    def published(self) -> list[str]:
        return read_lines(self.published_file)

    def handled(self) -> list[Handled]:
        """Every handler line of every process, in no particular order."""
        return [Handled(*_parse(line)) for f in sorted(self.dir.glob("handled.*"))
                for line in read_lines(f)]

    def handled_bodies(self) -> set[str]:
        return {h.body for h in self.handled()}

    def close(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait(timeout=DEADLINE)


def _parse(line: str) -> tuple[str, bool, str]:
    body, redelivered, msg_id = line.split(" ")
    return body, redelivered == "1", msg_id


@pytest.fixture
def shared(amqp_url: str, tmp_path: Path) -> Iterator[Scenario]:
    """A scenario on the shared broker; its queue is deleted afterwards."""
    (tmp_path / "faulthandlers.py").write_text(HANDLERS)
    sc = Scenario(tmp_path, amqp_url)
    yield sc
    sc.close()
    asyncio.run(delete_queue(amqp_url, sc.queue_name))


@pytest.fixture
def private(
    private_rabbitmq: RabbitMQServer, tmp_path: Path,
) -> Iterator[tuple[Scenario, RabbitMQServer]]:
    """A scenario on a broker of the test's own, which it may kill and restart."""
    (tmp_path / "faulthandlers.py").write_text(HANDLERS)
    sc = Scenario(tmp_path, private_rabbitmq.url)
    yield sc, private_rabbitmq
    sc.close()


async def delete_queue(url: str, name: str) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        await ch.queue_delete(name)


def publish_all(app: Path, bodies: list[str]) -> None:
    """Publish from this process (confirmed, one by one) before any worker starts."""
    async def go() -> None:
        rt = wqnb.Runtime.from_yaml(app)
        await rt.start()
        try:
            for b in bodies:
                await rt.publish("app:tasks", b)
        finally:
            await rt.stop()
    asyncio.run(go())


# --- a worker process dies, or is stopped ---------------------------------------------------


def test_kill_9_of_a_worker_hands_its_unacked_messages_to_another(shared: Scenario) -> None:
    prefetch, concurrency, n = 10, 2, 400
    app = shared.write_app(prefetch=prefetch, concurrency=concurrency)
    publish_all(app, ids(n))
    a = shared.worker("a", app, delay=0.02)
    wait_for(lambda: len(a.handled()) >= 30, "worker a to handle 30 messages")
    a.kill9()
    handled_by_a = a.bodies()
    assert len(handled_by_a) < n, "worker a handled everything before the kill: nothing to show"

    b = shared.worker("b", app)
    wait_for(lambda: shared.handled_bodies() >= set(ids(n)), "every message to be handled")
    assert b.term() == 0, b.output()

    by_b = b.handled()
    assert len(by_b) == len({h.body for h in by_b}), "worker b handled a message twice"
    duplicates = set(handled_by_a) & {h.body for h in by_b}
    redelivered = {h.body for h in by_b if h.redelivered}
    # What a held unacked when it died comes back redelivered: at most its basic.qos.
    assert 1 <= len(redelivered) <= prefetch + concurrency, redelivered
    assert duplicates <= redelivered  # handled by a, not acked: the only duplicates
    assert len(duplicates) <= prefetch + concurrency

    tl = wqnb.Timeline.read(b.timeline)
    delivers = tl.df[tl.df["event"] == "deliver"]
    flagged = set(delivers.loc[delivers["redelivered"], "msg_id"].astype(str))
    assert flagged == {h.msg_id for h in by_b if h.redelivered}


def test_a_graceful_stop_of_one_of_three_workers_loses_nothing(shared: Scenario) -> None:
    n = 1500
    app = shared.write_app(prefetch=20, concurrency=2)
    publish_all(app, ids(n))
    workers = shared.start_workers(["w0", "w1", "w2"], app, delay=0.02)
    wait_for(lambda: len(workers[0].handled()) >= 10 and len(shared.handled()) >= 100,
             "the workers to be under way")
    assert workers[0].term() == 0, workers[0].output()  # releases its buffer, finishes its handlers
    assert len(shared.handled_bodies()) < n, "all handled before the stop: nothing to show"

    wait_for(lambda: shared.handled_bodies() >= set(ids(n)), "every message to be handled")
    for w in workers[1:]:
        assert w.term() == 0, w.output()
    counts = collections.Counter(h.body for h in shared.handled())
    assert set(counts) == set(ids(n))
    assert max(counts.values()) == 1, [b for b, c in counts.items() if c > 1]  # and none twice


# --- the broker dies ------------------------------------------------------------------------


def test_broker_kill_9_and_restart_from_its_data_dir_loses_no_returned_publish(private) -> None:
    sc, broker = private
    app = sc.write_app(prefetch=20, concurrency=2, publish_timeout="120s")
    workers = sc.start_workers(["w0", "w1"], app, delay=0.002)
    pub = sc.publisher(app, 1500, rate=300.0)
    wait_for(lambda: len(sc.published()) >= 300 and len(sc.handled()) >= 100,
             "the run to be under way")

    broker.kill()
    published_at_kill = len(sc.published())
    handled_at_kill = {w.name: len(w.handled()) for w in workers}
    broker.restart()  # same ports, same mnesia dir: durable queue, persistent messages

    assert pub.wait() == 0, pub.output()
    published = sc.published()
    assert len(published) == 1500 and published_at_kill < 1500
    wait_for(lambda: sc.handled_bodies() >= set(published), "every returned publish to be handled")
    # The same processes carried on: they reconnected by themselves.
    for w in workers:
        assert w.popen.poll() is None, f"{w.name} died:\n{w.output()}"
        assert len(w.handled()) > handled_at_kill[w.name], f"{w.name}: nothing after the restart"
    for w in workers:
        assert w.term() == 0, w.output()


def test_broker_down_during_publish_retries_then_errors(private) -> None:
    sc, broker = private
    patient = sc.write_app(publish_timeout="120s", name="patient.yaml")
    hasty = sc.write_app(publish_timeout="3s", name="hasty.yaml")

    async def go() -> tuple[bool, str, float, str]:
        rt_patient = wqnb.Runtime.from_yaml(patient)
        rt_hasty = wqnb.Runtime.from_yaml(hasty)
        await rt_patient.start()
        await rt_hasty.start()
        await rt_patient.publish("app:tasks", "before")
        await asyncio.to_thread(broker.kill)
        during = asyncio.ensure_future(rt_patient.publish("app:tasks", "during"))
        await asyncio.sleep(0)
        pending_while_down = not during.done()
        await asyncio.to_thread(broker.restart)
        await asyncio.wait_for(during, DEADLINE)  # retried until the broker was back

        await asyncio.to_thread(broker.kill)
        t0 = time.monotonic()
        with pytest.raises(PublishError) as e:
            await asyncio.wait_for(rt_hasty.publish("app:tasks", "lost?"), DEADLINE)
        elapsed = time.monotonic() - t0
        for rt in (rt_patient, rt_hasty):
            await asyncio.wait_for(rt.stop(), DEADLINE)
        return pending_while_down, str(e.value), elapsed, during.result()

    pending_while_down, error, elapsed, _ = asyncio.run(go())
    assert pending_while_down
    assert 2.5 <= elapsed <= 3 + 10, elapsed  # publish_timeout, not a hang and not at once
    assert "app:rmq" in error and f"127.0.0.1:{broker.port}" in error, error
    assert "guest:guest" not in error

    broker.restart()  # what returned is there: "before" and "during", nothing else lost
    async def bodies() -> list[bytes]:
        conn = await aio_pika.connect(broker.url)
        async with conn:
            q = await (await conn.channel()).declare_queue(sc.queue_name, passive=True)
            got = []
            while (m := await q.get(fail=False)) is not None:
                got.append(m.body)
                await m.ack()
            return got
    got = asyncio.run(bodies())
    assert got[:2] == [b"before", b"during"], got
    assert set(got) <= {b"before", b"during", b"lost?"}  # the refused one may have reached it


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung broker)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.mark.parametrize("broker", ["refused", "silent"])
def test_broker_down_at_start_is_a_clear_error_within_connection_timeout(
    broker: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    port = free_port() if broker == "refused" else request.getfixturevalue("silent_port")
    url = f"amqp://guest:s3cr3t@127.0.0.1:{port}/"
    (tmp_path / "faulthandlers.py").write_text(HANDLERS)
    sc = Scenario(tmp_path, url)
    app = sc.write_app(connection_timeout="2s")

    async def go() -> float:
        rt = wqnb.Runtime.from_yaml(app)
        t0 = time.monotonic()
        with pytest.raises(DriverUnavailable) as e:
            await asyncio.wait_for(rt.start(), DEADLINE)
        text = str(e.value)
        assert "app:rmq" in text and f"127.0.0.1:{port}" in text and "s3cr3t" not in text, text
        return time.monotonic() - t0

    elapsed = asyncio.run(go())
    assert elapsed <= 2 + 2, elapsed  # connection_timeout (+ slack), no hang

    w = sc.worker("w", app, ready=False)  # the command line says the same, in one line
    assert w.wait() != 0
    out = w.output()
    assert "app:rmq" in out and f"127.0.0.1:{port}" in out and "s3cr3t" not in out, out
    assert "Traceback" not in out, out


# --- a soak -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_soak_one_publisher_three_workers_one_killed_and_restarted(shared: Scenario) -> None:
    n = 5000
    app = shared.write_app(prefetch=50, concurrency=4)
    workers = shared.start_workers(["w0", "w1", "w2"], app)
    pub = shared.publisher(app, n, batch=20)
    wait_for(lambda: len(workers[1].handled()) >= 200 and len(shared.published()) >= 1500,
             "the soak to be under way")
    workers[1].kill9()
    assert len(shared.published()) < n, "all published before the kill: nothing to show"
    shared.worker("w1-again", app)

    assert pub.wait() == 0, pub.output()
    published = shared.published()
    assert len(published) == n
    wait_for(lambda: shared.handled_bodies() >= set(published),
             "every published message to be handled")
    for w in shared.workers:
        if w.popen.poll() is None:
            assert w.term() == 0, w.output()
    assert shared.handled_bodies() == set(published) == set(ids(n))
