"""wqnb on RabbitMQ end to end against a plain aio-pika program doing the same work (issue 9 §7).

    WQNB_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ python benchmarks/bench_amqp.py [--quick]

Both sides, interleaved in one run (A B, B A, ...): publish ``n`` messages one after the
other, each awaited until the broker confirmed it (persistent, durable queue), while one
consumer (concurrency 4, prefetch 100, a no-op handler) takes them and acks each one. A
run ends when the last message is acked; the rate is ``n`` over that time. wqnb records
its timeline as always. Goal: ≥ 0.9×.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _baselines import broker_main  # noqa: E402

import wqnb  # noqa: E402

APP = """
namespace: bench
entries:
  - {name: rmq, kind: queue.driver.amqp, url: "%(url)s", lifecycle: {auto_start: true}}
  - {name: tasks, kind: queue.queue, driver: bench:rmq, queue_name: "%(queue)s"}
  - name: worker
    kind: queue.consumer
    queue: bench:tasks
    func: bench:noop
    concurrency: %(concurrency)d
    prefetch: %(prefetch)d
    lifecycle: {auto_start: true}
"""


async def _noop(body: object) -> None:
    return None


async def _delete(url: str, queue: str) -> None:
    import aio_pika

    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        await ch.queue_delete(queue)


async def _wqnb(url: str, n: int, concurrency: int, prefetch: int) -> float:
    queue = f"bench-wqnb-{uuid.uuid4().hex[:8]}"
    rt = wqnb.Runtime.from_yaml_string(APP % dict(url=url, queue=queue, concurrency=concurrency,
                                                  prefetch=prefetch))
    rt.register_function("bench:noop", _noop)
    await rt.start()
    try:
        publish = rt.publish
        t0 = time.perf_counter()
        for i in range(n):
            await publish("bench:tasks", '{"id": %d}' % i)
        await rt.drain()
        elapsed = time.perf_counter() - t0
    finally:
        await rt.stop()
        await _delete(url, queue)
    acked = int((rt.timeline.df["event"] == "ack").sum())
    assert acked == n, acked
    return n / elapsed


async def _plain(url: str, n: int, concurrency: int, prefetch: int) -> float:
    """What a careful aio-pika user writes: confirms, persistent messages, a local queue
    fed by ``consume``, ``concurrency`` worker tasks acking each message."""
    import aio_pika

    queue_name = f"bench-plain-{uuid.uuid4().hex[:8]}"
    conn = await aio_pika.connect(url)
    async with conn:
        pub = await conn.channel(publisher_confirms=True)
        sub = await conn.channel()
        await sub.set_qos(prefetch_count=prefetch)
        queue = await sub.declare_queue(queue_name, durable=True)
        local: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        done = asyncio.get_running_loop().create_future()
        acked = 0

        async def worker() -> None:
            nonlocal acked
            while True:
                m = await local.get()
                await _noop(m.body)
                await m.ack()
                acked += 1
                if acked == n and not done.done():
                    done.set_result(None)

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        tag = await queue.consume(local.put)
        t0 = time.perf_counter()
        for i in range(n):
            await pub.default_exchange.publish(
                aio_pika.Message(b'{"id": %d}' % i, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                 message_id=uuid.uuid4().hex),
                routing_key=queue_name)
        await done
        elapsed = time.perf_counter() - t0
        for w in workers:
            w.cancel()
        await queue.cancel(tag)
        await sub.queue_delete(queue_name)
    return n / elapsed


def main() -> None:
    broker_main(__doc__, "WQNB_TEST_AMQP_URL", "a RabbitMQ", lambda u, n: _wqnb(u, n, 4, 100),
                lambda u, n: _plain(u, n, 4, 100),
                title="amqp end to end, concurrency 4, prefetch 100, confirmed + acked each",
                plain="plain aio-pika", goal=0.9)

if __name__ == "__main__":
    main()
