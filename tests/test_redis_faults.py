"""Faults on a real Redis (issue 10, Faults): a worker process killed, a handler longer than
``claim_min_idle`` in a live process, Redis killed and restarted from its data dir (AOF on).

The processes, files and waits are :mod:`test_amqp_faults`'s (``wqnb worker`` subprocesses
whose handler appends ``body redelivered msg_id`` before the ack; a publisher that writes an
id once ``publish()`` returned); only the app differs. ``claim_min_idle`` is 1 s here.
(Redis down at start: ``tests/test_redis_driver.py``.)
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("redis.asyncio")

from servers import RedisServer
from test_amqp_faults import HANDLERS, Scenario, ids, publish_all, wait_for

import wqnb

APP = """\
namespace: app
entries:
  - name: rds
    kind: queue.driver.redis
    url: "{url}"
    claim_min_idle: 1s
    block: 200ms
    connection_timeout: {connection_timeout}
    publish_timeout: {publish_timeout}
    lifecycle: {{auto_start: true}}
  - name: tasks
    kind: queue.queue
    driver: rds
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


class RedisScenario(Scenario):
    """The AMQP scenario with a Redis app."""

    template = APP


@pytest.fixture
def shared(redis_url: str, tmp_path: Path) -> Iterator[RedisScenario]:
    (tmp_path / "faulthandlers.py").write_text(HANDLERS)
    sc = RedisScenario(tmp_path, redis_url, queue_name=f"wqnb-faults-{uuid.uuid4().hex[:10]}")
    yield sc
    sc.close()
    import redis

    r = redis.Redis.from_url(redis_url)
    r.delete(sc.queue_name, f"{sc.queue_name}:wqnb-released")
    r.close()


@pytest.fixture
def private(private_redis: RedisServer, tmp_path: Path) -> Iterator[tuple[RedisScenario, RedisServer]]:
    (tmp_path / "faulthandlers.py").write_text(HANDLERS)
    sc = RedisScenario(tmp_path, private_redis.url)
    yield sc, private_redis
    sc.close()


def test_kill_9_of_a_worker_hands_its_pending_entries_to_another_after_claim_min_idle(shared) -> None:
    prefetch, concurrency, n = 10, 2, 300
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
    # a's pending entries (at most prefetch + concurrency) come back through XAUTOCLAIM
    assert 1 <= len(redelivered) <= prefetch + concurrency, redelivered
    assert duplicates <= redelivered
    tl = wqnb.Timeline.read(b.timeline)
    delivers = tl.df[tl.df["event"] == "deliver"]
    assert set(delivers.loc[delivers["redelivered"], "msg_id"].astype(str)) == {
        h.msg_id for h in by_b if h.redelivered}


def test_a_handler_of_three_claim_min_idle_in_a_live_process_is_never_run_twice(shared) -> None:
    n = 3  # fewer than the two workers hold (2 x 3): one always has room to XAUTOCLAIM
    app = shared.write_app(prefetch=1, concurrency=2)
    workers = shared.start_workers(["w0", "w1"], app, delay=3.0)  # 3 x claim_min_idle
    publish_all(app, ids(n))
    wait_for(lambda: shared.handled_bodies() >= set(ids(n)), "every message to be handled")
    for w in workers:
        assert w.term() == 0, w.output()
    counts = collections.Counter(h.body for h in shared.handled())
    assert set(counts) == set(ids(n))
    assert max(counts.values()) == 1, [b for b, c in counts.items() if c > 1]  # the refresher kept them
    assert not any(h.redelivered for h in shared.handled())


def test_a_graceful_stop_of_one_of_three_workers_loses_nothing(shared) -> None:
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


def test_redis_kill_9_and_restart_from_its_data_dir_loses_no_returned_publish(private) -> None:
    sc, server = private
    app = sc.write_app(prefetch=20, concurrency=2, publish_timeout="120s")
    workers = sc.start_workers(["w0", "w1"], app, delay=0.002)
    pub = sc.publisher(app, 1500, rate=300.0)
    wait_for(lambda: len(sc.published()) >= 300 and len(sc.handled()) >= 100, "the run to be under way")

    server.kill()
    published_at_kill = len(sc.published())
    handled_at_kill = {w.name: len(w.handled()) for w in workers}
    server.restart()  # same port, same dir: the AOF brings back stream, group and PEL

    assert pub.wait() == 0, pub.output()
    published = sc.published()
    assert len(published) == 1500 and published_at_kill < 1500
    wait_for(lambda: sc.handled_bodies() >= set(published), "every returned publish to be handled")
    for w in workers:  # the same processes carried on: they reconnected by themselves
        assert w.popen.poll() is None, f"{w.name} died:\n{w.output()}"
        assert len(w.handled()) > handled_at_kill[w.name], f"{w.name}: nothing after the restart"
    for w in workers:
        assert w.term() == 0, w.output()


def test_soak_one_publisher_three_workers_one_killed_and_restarted(shared) -> None:
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
    wait_for(lambda: shared.handled_bodies() >= set(published), "every published message to be handled")
    for w in shared.workers:
        if w.popen.poll() is None:
            assert w.term() == 0, w.output()
    assert shared.handled_bodies() == set(published) == set(ids(n))
