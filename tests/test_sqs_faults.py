"""Faults on SQS (moto's server; issue 11): a worker process killed, a handler three times
the visibility timeout in a live process, a graceful stop of one of three workers, a FIFO
queue's order per group, and an endpoint that does not answer at start.

The processes, files and waits are :mod:`test_amqp_faults`'s (``wqnb worker`` subprocesses
whose handler appends ``body redelivered msg_id`` before the ack); only the app differs.
The consumer's visibility timeout is 2 s here. (moto keeps nothing across a restart, so a
broker restart is not tested for SQS: notes/brokers.md §5.)
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("aiobotocore")

from servers import free_port
from test_amqp_faults import DEADLINE, HANDLERS, Scenario, ids, publish_all, silent_port, wait_for  # noqa: F401 - silent_port is a fixture

import wqnb
from wqnb.errors import DriverUnavailable

APP = """\
namespace: app
entries:
  - name: aws
    kind: config.aws
    region: us-east-1
  - name: sqs
    kind: queue.driver.sqs
    config: aws
    endpoint: "{url}"
    wait_time: 1s
    connection_timeout: {connection_timeout}
    publish_timeout: {publish_timeout}
    lifecycle: {{auto_start: true}}
  - name: tasks
    kind: queue.queue
    driver: sqs
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
    driver_options:
      sqs: {{visibility_timeout: 2s}}
    lifecycle: {{auto_start: false, stop_timeout: 30s}}
"""


class SqsScenario(Scenario):
    """The AMQP scenario with an SQS app."""

    template = APP


@pytest.fixture
def shared(sqs_endpoint: str, tmp_path: Path) -> Iterator[SqsScenario]:
    (tmp_path / "faulthandlers.py").write_text(HANDLERS)
    sc = SqsScenario(tmp_path, sqs_endpoint, queue_name=f"wqnb-faults-{uuid.uuid4().hex[:10]}")
    yield sc
    sc.close()


def test_kill_9_of_a_worker_hands_its_messages_to_another_after_the_visibility_timeout(shared) -> None:
    prefetch, concurrency, n = 10, 2, 150
    app = shared.write_app(prefetch=prefetch, concurrency=concurrency)
    publish_all(app, ids(n))
    a = shared.worker("a", app, delay=0.05)
    wait_for(lambda: len(a.handled()) >= 20, "worker a to handle 20 messages")
    a.kill9()
    killed_at = time.monotonic()
    handled_by_a = a.bodies()
    assert len(handled_by_a) < n, "worker a handled everything before the kill: nothing to show"

    b = shared.worker("b", app)
    wait_for(lambda: shared.handled_bodies() >= set(ids(n)), "every message to be handled")
    assert time.monotonic() - killed_at >= 2.0  # nothing came back before the visibility timeout
    assert b.term() == 0, b.output()
    by_b = b.handled()
    assert len(by_b) == len({h.body for h in by_b}), "worker b handled a message twice"
    duplicates = set(handled_by_a) & {h.body for h in by_b}
    redelivered = {h.body for h in by_b if h.redelivered}
    # what a held (at most prefetch + concurrency) comes back, flagged by ApproximateReceiveCount
    assert 1 <= len(redelivered) <= prefetch + concurrency, redelivered
    assert duplicates <= redelivered
    tl = wqnb.Timeline.read(b.timeline)
    delivers = tl.df[tl.df["event"] == "deliver"]
    assert set(delivers.loc[delivers["redelivered"], "msg_id"].astype(str)) == {
        h.msg_id for h in by_b if h.redelivered}


def test_a_handler_of_three_visibility_timeouts_in_a_live_process_runs_once(shared) -> None:
    n = 3  # fewer than the two workers could hold: one always has room to receive a copy
    app = shared.write_app(prefetch=1, concurrency=2)
    workers = shared.start_workers(["w0", "w1"], app, delay=6.0)  # 3 x visibility_timeout
    publish_all(app, ids(n))
    wait_for(lambda: shared.handled_bodies() >= set(ids(n)), "every message to be handled")
    for w in workers:
        assert w.term() == 0, w.output()
    counts = collections.Counter(h.body for h in shared.handled())
    assert set(counts) == set(ids(n))
    assert max(counts.values()) == 1, [b for b, c in counts.items() if c > 1]  # the heartbeat kept them
    assert not any(h.redelivered for h in shared.handled())


def test_a_graceful_stop_of_one_of_three_workers_loses_nothing(shared) -> None:
    n = 300
    app = shared.write_app(prefetch=10, concurrency=2)
    publish_all(app, ids(n))
    workers = shared.start_workers(["w0", "w1", "w2"], app, delay=0.02)
    wait_for(lambda: len(workers[0].handled()) >= 5 and len(shared.handled()) >= 30,
             "the workers to be under way")
    stopped_at = time.monotonic()
    assert workers[0].term() == 0, workers[0].output()  # hands back its buffer (visibility 0)
    assert len(shared.handled_bodies()) < n, "all handled before the stop: nothing to show"
    wait_for(lambda: shared.handled_bodies() >= set(ids(n)), "every message to be handled")
    for w in workers[1:]:
        assert w.term() == 0, w.output()
    counts = collections.Counter(h.body for h in shared.handled())
    assert set(counts) == set(ids(n))
    assert max(counts.values()) == 1, [b for b, c in counts.items() if c > 1]
    assert time.monotonic() - stopped_at < DEADLINE


@pytest.mark.parametrize("endpoint", ["refused", "silent"])
def test_an_endpoint_that_does_not_answer_at_start_is_a_clear_error_within_connection_timeout(
    endpoint: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port() if endpoint == "refused" else request.getfixturevalue("silent_port")
    (tmp_path / "faulthandlers.py").write_text(HANDLERS)
    sc = SqsScenario(tmp_path, f"http://127.0.0.1:{port}")
    app = sc.write_app(connection_timeout="2s")

    async def go() -> float:
        rt = wqnb.Runtime.from_yaml(app)
        t0 = time.monotonic()
        with pytest.raises(DriverUnavailable) as e:
            await asyncio.wait_for(rt.start(), DEADLINE)
        text = str(e.value)
        assert "app:sqs" in text and f"127.0.0.1:{port}" in text and "connection_timeout 2s" in text, text
        return time.monotonic() - t0

    elapsed = asyncio.run(go())
    assert elapsed <= 2 + 2, elapsed  # connection_timeout (+ slack), no hang

    w = sc.worker("w", app, ready=False)  # the command line says the same, in one line
    assert w.wait() != 0
    out = w.output()
    assert "app:sqs" in out and f"127.0.0.1:{port}" in out, out
    assert "Traceback" not in out, out
    sc.close()
