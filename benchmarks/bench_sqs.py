"""wqnb on SQS (moto's server) end to end against a plain aiobotocore program (issue 11).

    WQNB_TEST_SQS_ENDPOINT=http://127.0.0.1:PORT python benchmarks/bench_sqs.py [--quick]

Both sides, interleaved in one run (A B, B A, ...), do the same work: publish ``n``
messages in batches of ten (``SendMessageBatch``; wqnb through ``publish_many``), while a
consumer (concurrency 4, prefetch 20) takes them with long-polling ``ReceiveMessage`` (ten
at a time, three receives in flight: what wqnb's pollers do for 24 slots) and deletes them
with ``DeleteMessageBatch``. A no-op handler. A run ends when the last message is deleted.
wqnb also keeps the visibility heartbeat and the cached depth (``GetQueueAttributes``)
going, which the plain program does not. Goal: ≥ 0.8×.

moto is a Python server on the same two cores: its CPU is most of either side's time, so
the ratio measures what wqnb adds per message in requests and in client CPU; it also prints
messages per CPU-second of this process (``time.process_time``), steadier on a busy host.
"""

from __future__ import annotations

import asyncio
import os
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
  - {name: sqs, kind: queue.driver.sqs, endpoint: "%(endpoint)s", region: us-east-1, wait_time: 1s,
     lifecycle: {auto_start: true}}
  - {name: tasks, kind: queue.queue, driver: bench:sqs, queue_name: "%(queue)s"}
  - name: worker
    kind: queue.consumer
    queue: bench:tasks
    func: bench:noop
    concurrency: %(concurrency)d
    prefetch: %(prefetch)d
    lifecycle: {auto_start: true}
"""

CPU: dict[str, list[float]] = {"wqnb": [], "plain": []}


async def _noop(body: object) -> None:
    return None


def _client(endpoint: str):  # type: ignore[no-untyped-def]
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    return get_session().create_client("sqs", region_name="us-east-1", endpoint_url=endpoint,
                                        config=AioConfig(max_pool_connections=64))


async def _delete_queue(endpoint: str, name: str) -> None:
    async with _client(endpoint) as c:
        url = (await c.get_queue_url(QueueName=name))["QueueUrl"]
        await c.delete_queue(QueueUrl=url)


async def _wqnb(endpoint: str, n: int, concurrency: int, prefetch: int) -> float:
    queue = f"bench-wqnb-{uuid.uuid4().hex[:8]}"
    rt = wqnb.Runtime.from_yaml_string(APP % dict(endpoint=endpoint, queue=queue, concurrency=concurrency,
                                                  prefetch=prefetch))
    rt.register_function("bench:noop", _noop)
    await rt.start()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, n, 10):
            await rt.publish_many("bench:tasks", ['{"id": %d}' % i for i in range(start, min(start + 10, n))])
        await rt.drain()
        elapsed = time.perf_counter() - t0
        CPU["wqnb"].append(n / (time.process_time() - c0))
    finally:
        await rt.stop()
        await _delete_queue(endpoint, queue)
    acked = int((rt.timeline.df["event"] == "ack").sum())
    assert acked == n, acked
    return n / elapsed


async def _plain(endpoint: str, n: int, concurrency: int, prefetch: int) -> float:
    """What a careful aiobotocore user writes: batched sends, three long-polling receivers
    feeding ``concurrency`` workers, one DeleteMessageBatch per receive."""
    name = f"bench-plain-{uuid.uuid4().hex[:8]}"
    async with _client(endpoint) as c:
        url = (await c.create_queue(QueueName=name))["QueueUrl"]
        local: asyncio.Queue[tuple[dict, asyncio.Future[None]]] = asyncio.Queue()
        done = asyncio.get_running_loop().create_future()
        deleted = 0
        stop = False

        async def receive() -> None:
            nonlocal deleted
            while not stop:
                res = await c.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                              MessageAttributeNames=["All"])
                msgs = res.get("Messages", [])
                if not msgs:
                    continue
                futs = [asyncio.get_running_loop().create_future() for _ in msgs]
                for m, f in zip(msgs, futs, strict=True):
                    local.put_nowait((m, f))
                await asyncio.gather(*futs)
                await c.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])
                deleted += len(msgs)
                if deleted >= n and not done.done():
                    done.set_result(None)

        async def worker() -> None:
            while True:
                m, fut = await local.get()
                await _noop(m["Body"])
                fut.set_result(None)

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        receivers = [asyncio.create_task(receive()) for _ in range(-(-(prefetch + concurrency) // 10))]
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, n, 10):
            await c.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "MessageBody": '{"id": %d}' % i,
                 "MessageAttributes": {"id": {"DataType": "String", "StringValue": uuid.uuid4().hex}}}
                for i in range(start, min(start + 10, n))])
        await done
        elapsed = time.perf_counter() - t0
        CPU["plain"].append(n / (time.process_time() - c0))
        stop = True
        await asyncio.gather(*receivers)
        for w in workers:
            w.cancel()
        await c.delete_queue(QueueUrl=url)
    return n / elapsed


def main() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    broker_main(__doc__, "WQNB_TEST_SQS_ENDPOINT", "moto's server", lambda e, n: _wqnb(e, n, 4, 20),
                lambda e, n: _plain(e, n, 4, 20), title="sqs (moto) end to end, concurrency 4, prefetch 20",
                plain="plain aiobotocore (batched send/receive/delete)", goal=0.8, quick_n=300, full_n=1000,
                cpu=CPU)

if __name__ == "__main__":
    main()
