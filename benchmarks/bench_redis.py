"""wqnb on Redis Streams end to end against a plain redis-py Streams program (issue 10).

    WQNB_TEST_REDIS_URL=redis://127.0.0.1:6379/0 python benchmarks/bench_redis.py [--quick]

Both sides, interleaved in one run (A B, B A, ...): publish ``n`` messages one after the
other, each awaited, while one consumer (concurrency 4, prefetch 100, a no-op handler)
takes them and acks them. The plain program reads with ``XREADGROUP COUNT 100 BLOCK`` and
acks in batches (one ``XACK`` + ``XDEL`` per read batch); wqnb acks each message as it is
handled (one script; acks that wait for the wire go together, and the read loop sends the
acks of what it handed out with its next read). A run ends when the last message is acked.
Goal: ≥ 0.8×.

Besides wall-clock rates it prints messages per CPU-second of this process (the client's
cost, ``time.process_time``): on a loaded shared host the wall-clock ratio moves ±20 %, the
CPU ratio much less. (Redis's own CPU is in neither.)
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
  - {name: rds, kind: queue.driver.redis, url: "%(url)s", lifecycle: {auto_start: true}}
  - {name: tasks, kind: queue.queue, driver: bench:rds, queue_name: "%(queue)s"}
  - name: worker
    kind: queue.consumer
    queue: bench:tasks
    func: bench:noop
    concurrency: %(concurrency)d
    prefetch: %(prefetch)d
    lifecycle: {auto_start: true}
"""


#: Messages per CPU-second of this process, per run and side (the warm-up pair included).
CPU: dict[str, list[float]] = {"wqnb": [], "plain": []}


async def _noop(body: object) -> None:
    return None


async def _delete(url: str, *keys: str) -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    await r.delete(*keys)
    await r.aclose()


async def _wqnb(url: str, n: int, concurrency: int, prefetch: int) -> float:
    queue = f"bench-wqnb-{uuid.uuid4().hex[:8]}"
    rt = wqnb.Runtime.from_yaml_string(APP % dict(url=url, queue=queue, concurrency=concurrency,
                                                  prefetch=prefetch))
    rt.register_function("bench:noop", _noop)
    await rt.start()
    try:
        publish = rt.publish
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            await publish("bench:tasks", '{"id": %d}' % i)
        await rt.drain()
        elapsed = time.perf_counter() - t0
        CPU["wqnb"].append(n / (time.process_time() - c0))
    finally:
        await rt.stop()
        await _delete(url, queue, f"{queue}:wqnb-released")
    acked = int((rt.timeline.df["event"] == "ack").sum())
    assert acked == n, acked
    return n / elapsed


async def _plain(url: str, n: int, concurrency: int, prefetch: int) -> float:
    """What a careful redis-py user writes: XADD per message, one reader with
    XREADGROUP COUNT prefetch, ``concurrency`` workers, one XACK + XDEL per read batch."""
    import redis.asyncio as aioredis

    stream = f"bench-plain-{uuid.uuid4().hex[:8]}"
    r = aioredis.Redis.from_url(url)
    reader = aioredis.Redis.from_url(url, single_connection_client=True)
    await r.xgroup_create(stream, "g", id="0", mkstream=True)
    local: asyncio.Queue[tuple[bytes, dict]] = asyncio.Queue()
    done = asyncio.get_running_loop().create_future()
    acked = 0
    stop = False

    async def read() -> None:
        nonlocal acked
        while not stop:
            res = await reader.xreadgroup("g", "c", {stream: ">"}, count=prefetch, block=100)
            if not res:
                continue
            entries = res[0][1]
            batch = [asyncio.get_running_loop().create_future() for _ in entries]
            for e, f in zip(entries, batch, strict=True):
                local.put_nowait((e, f))
            await asyncio.gather(*batch)
            ids = [e[0] for e in entries]
            pipe = r.pipeline(transaction=True)
            pipe.xack(stream, "g", *ids)
            pipe.xdel(stream, *ids)
            await pipe.execute()
            acked += len(ids)
            if acked >= n and not done.done():
                done.set_result(None)

    async def worker() -> None:
        while True:
            (eid, fields), fut = await local.get()
            await _noop(fields)
            fut.set_result(None)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    rd = asyncio.create_task(read())
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        await r.xadd(stream, {"id": uuid.uuid4().hex, "body": b'{"id": %d}' % i})
    await done
    elapsed = time.perf_counter() - t0
    CPU["plain"].append(n / (time.process_time() - c0))
    stop = True
    await rd
    for w in workers:
        w.cancel()
    await r.delete(stream)
    await reader.aclose()
    await r.aclose()
    return n / elapsed


def main() -> None:
    broker_main(__doc__, "WQNB_TEST_REDIS_URL", "a Redis", lambda u, n: _wqnb(u, n, 4, 100),
                lambda u, n: _plain(u, n, 4, 100), title="redis end to end, concurrency 4, prefetch 100",
                plain="plain redis-py (batched XACK)", goal=0.8, cpu=CPU)

if __name__ == "__main__":
    main()
