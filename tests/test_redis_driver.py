"""queue.driver.redis beyond the conformance suite: load-time checks, the stream layout a
plain Redis client sees and writes, and a clear error when Redis is down."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import yaml
from servers import free_port

import wqnb
from wqnb.errors import ConfigError, DriverUnavailable

pytest.importorskip("redis.asyncio")


def app(driver: dict, queue: dict | None = None, consumer: dict | None = None) -> str:
    entries = [{"name": "d", "kind": "queue.driver.redis", **driver, "lifecycle": {"auto_start": True}},
               {"name": "q", "kind": "queue.queue", "driver": "t:d", **(queue or {})}]
    if consumer is not None:
        entries.append({"name": "w", "kind": "queue.consumer", "queue": "t:q", "func": "t:h",
                        "lifecycle": {"auto_start": True, "stop_timeout": 5}, **consumer})
    return yaml.safe_dump({"namespace": "t", "entries": entries}, sort_keys=False)


@pytest.mark.parametrize("driver, queue, consumer, entry, field, text", [
    ({}, None, {"auto_ack": True}, "t:w", "auto_ack", "not supported"),
    ({"claim_min_idle": "soon"}, None, None, "t:d", "claim_min_idle", "invalid duration"),
    ({"claim_min_idle": 0}, None, None, "t:d", "claim_min_idle", "more than 0"),
    ({"block": -1}, None, None, "t:d", "block", "negative"),
    ({"url": "amqp://x"}, None, None, "t:d", "url", "redis://"),
    ({"colour": 1}, None, None, "t:d", "colour", "unknown field"),
    ({"addrs": ["a:1", "b:2"]}, None, None, "t:d", "addrs", "one Redis server"),
    ({"db": "x"}, None, None, "t:d", "db", "integer"),
    ({"tls": {"cert_file": "c.pem"}}, None, None, "t:d", "tls.cert_file", "together"),
    ({}, {"driver_options": {"redis": {"max_length": 3}}}, None, "t:q", "driver_options.redis.max_length",
     "options.max_length"),
])
def test_bad_fields_are_load_errors_naming_entry_and_field(driver, queue, consumer, entry, field, text):
    with pytest.raises(ConfigError) as e:
        wqnb.Runtime.from_yaml_string(app(driver, queue, consumer))
    assert e.value.entry == entry and e.value.field == field
    assert text in str(e.value)


def test_wippy_fields_are_accepted_and_passwords_never_printed():
    from wqnb.drivers.redis_config import RedisConfig

    cfg = RedisConfig.parse({"addrs": ["10.0.0.1:6380"], "username": "u", "password": "s3cret", "db": 2,
                             "client_name": "w", "tls": {"enabled": True, "insecure_skip_verify": True}})
    assert cfg.url == "redis://u:s3cret@10.0.0.1:6380/2" and cfg.tls_enabled
    assert "s3cret" not in cfg.safe_url and cfg.safe_url == "redis://u:***@10.0.0.1:6380/2"
    assert RedisConfig.parse({}).url == "redis://localhost:6379/0"
    assert (RedisConfig.parse({}).claim_min_idle, RedisConfig.parse({}).block, RedisConfig.parse({}).group) == (
        30.0, 1.0, "wqnb")
    with pytest.raises(ConfigError) as e:
        RedisConfig.parse({"url": "redis://u:s3cret@host:notaport/0"}, entry="t:d")
    assert "s3cret" not in str(e.value)


def test_redis_down_at_start_is_a_clear_error_naming_driver_and_url_without_a_hang():
    port = free_port()  # nothing listens there
    rt = wqnb.Runtime.from_yaml_string(app({"url": f"redis://u:pw9@127.0.0.1:{port}/0",
                                            "connection_timeout": "2s"}))
    t0 = time.monotonic()
    with pytest.raises(DriverUnavailable) as e:
        asyncio.run(rt.start())
    assert time.monotonic() - t0 < 5
    text = str(e.value)
    assert "queue.driver.redis t:d" in text and f"redis://u:***@127.0.0.1:{port}/0" in text
    assert "pw9" not in text


def test_a_plain_xadd_is_consumed_as_attempt_one_and_the_stream_is_emptied(redis_url):
    import redis.asyncio as aioredis

    name = f"wqnb-plain-{uuid.uuid4().hex[:8]}"
    got: list[tuple[object, str, int, dict]] = []

    async def handler(body, message):
        got.append((body, message.id, message.attempt, dict(message.headers)))

    async def main():
        plain = aioredis.Redis.from_url(redis_url)
        rt = wqnb.Runtime.from_yaml_string(app({"url": redis_url, "claim_min_idle": "1s"},
                                               {"queue_name": name}, {}))
        rt.register_function("t:h", handler)
        await rt.start("t:d")
        eid = (await plain.xadd(name, {"body": "hello from redis-cli"})).decode()
        own = await rt.publish("t:q", b"\x00\xff", headers={"k": 1})
        await rt.start()
        await rt.drain(timeout=20)
        groups = await plain.xinfo_groups(name)
        length = await plain.xlen(name)
        await rt.stop()
        consumers = await plain.xinfo_consumers(name, "wqnb")
        fields = None
        await plain.delete(name, f"{name}:wqnb-released")
        await plain.aclose()
        return eid, own, groups, length, consumers, fields

    eid, own, groups, length, consumers, _ = asyncio.run(main())
    assert got[0] == ("hello from redis-cli", f"{name}/{eid}", 1, {})
    assert got[1][0] == b"\x00\xff" and got[1][1] == own and got[1][3]["k"] == 1
    assert [g["name"] for g in groups] == [b"wqnb"] and groups[0]["pending"] == 0
    assert length == 0  # acked entries are deleted (XACK + XDEL)
    assert consumers == []  # a consumer owning nothing is forgotten at stop


def test_wire_fields_a_plain_client_reads(redis_url):
    import redis.asyncio as aioredis

    name = f"wqnb-wire-{uuid.uuid4().hex[:8]}"

    async def main():
        plain = aioredis.Redis.from_url(redis_url)
        rt = wqnb.Runtime.from_yaml_string(app({"url": redis_url}, {"queue_name": name}))
        await rt.start()
        mid = await rt.publish("t:q", "text", headers={"a": [1, 2]})
        entries = await plain.xrange(name)
        await rt.stop()
        await plain.delete(name)
        await plain.aclose()
        return mid, entries

    mid, [(_, fields)] = asyncio.run(main())
    assert fields[b"id"] == mid.encode() and fields[b"body"] == b"text" and fields[b"t"] == b"s"
    assert fields[b"attempts"] == b"1"
    import json
    assert json.loads(fields[b"headers"])["a"] == [1, 2]


def test_a_fast_consumer_sends_its_acks_with_its_next_read_and_loses_nothing(redis_url):
    """One publish at a time, a no-op handler: acks ride with the read loop's next read
    (one script: XACK + XDEL + XREADGROUP), each message handled once, the stream emptied."""
    import redis.asyncio as aioredis

    name = f"wqnb-ride-{uuid.uuid4().hex[:8]}"
    got: list[str] = []

    async def handler(body):
        got.append(body)

    async def main():
        plain = aioredis.Redis.from_url(redis_url)
        rt = wqnb.Runtime.from_yaml_string(app({"url": redis_url}, {"queue_name": name},
                                               {"concurrency": 4, "prefetch": 100}))
        rt.register_function("t:h", handler)
        await rt.start()
        sent = [f"m{i}" for i in range(300)]
        for body in sent:
            await rt.publish("t:q", body)
        await rt.drain(timeout=30)
        stats = dict(rt.drivers["t:d"].stats)
        length, pending = await plain.xlen(name), (await plain.xpending(name, "wqnb"))["pending"]
        await rt.stop()
        await plain.delete(name, f"{name}:wqnb-released")
        await plain.aclose()
        return sent, stats, length, pending

    sent, stats, length, pending = asyncio.run(main())
    assert sorted(got) == sorted(sent) and len(got) == len(set(got))
    assert stats.get("acks_with_read", 0) > 0, stats
    assert (length, pending) == (0, 0)


def test_the_redis_consumer_is_named_after_the_consumer_entry_host_and_pid(redis_url):
    """``<consumer entry>@<socket.gethostname()>:<pid>:<n>``, as XINFO CONSUMERS shows it."""
    import os
    import re
    import socket

    import redis.asyncio as aioredis

    name = f"wqnb-name-{uuid.uuid4().hex[:8]}"
    handled = asyncio.Event()

    async def handler(body):
        handled.set()

    async def main():
        plain = aioredis.Redis.from_url(redis_url)
        rt = wqnb.Runtime.from_yaml_string(app({"url": redis_url}, {"queue_name": name}, {}))
        rt.register_function("t:h", handler)
        await rt.start()
        await rt.publish("t:q", "x")
        await asyncio.wait_for(handled.wait(), 20)
        consumers = await plain.xinfo_consumers(name, "wqnb")
        await rt.stop()
        await plain.delete(name, f"{name}:wqnb-released")
        await plain.aclose()
        return [c["name"].decode() for c in consumers]

    [consumer] = asyncio.run(main())
    host = re.escape(f"{socket.gethostname()}:{os.getpid()}")
    assert re.fullmatch(rf"t:w@{host}:\d+", consumer), consumer


def test_publish_while_redis_is_down_retries_and_returns_once_it_is_back(private_redis):
    """Redis killed: ``publish()`` keeps retrying (no error within ``publish_timeout``) and
    returns once Redis is back; ``publish_nowait``'s outbox keeps what it accepted across the
    outage and flushes it in order. Nothing is lost (AOF: what was stored before survives)."""
    server = private_redis
    got: list[str] = []

    async def handler(body):
        got.append(body)

    async def main():
        rt = wqnb.Runtime.from_yaml_string(app(
            {"url": server.url, "publish_timeout": "60s", "connection_timeout": "1s",
             "reconnect_delay": "50ms", "reconnect_max_delay": "200ms"},
            {"queue_name": "outage"}, {"concurrency": 1, "prefetch": 10, "lifecycle": {"auto_start": False}}))
        rt.register_function("t:h", handler)
        await rt.start()
        driver = rt.drivers["t:d"]
        before = [f"before{i}" for i in range(5)]
        for body in before:
            await rt.publish("t:q", body)
        await asyncio.to_thread(server.kill)
        during = asyncio.create_task(rt.publish("t:q", "during"))
        queued = [f"nowait{i}" for i in range(5)]
        for body in queued:
            rt.publish_nowait("t:q", body)
        deadline = time.monotonic() + 30
        while driver.stats["retries"] < 3:  # the publish is retrying, not failing
            assert time.monotonic() < deadline, "publish never retried"
            await asyncio.sleep(0.02)
        assert not during.done()
        assert driver._outbox.pending("t:q") == 5  # kept while Redis is down
        await asyncio.to_thread(server.restart)  # same port and data dir
        await asyncio.wait_for(during, 30)
        deadline = time.monotonic() + 30
        while driver._outbox.pending("t:q"):
            assert time.monotonic() < deadline, "the outbox never flushed"
            await asyncio.sleep(0.02)
        await rt.start("t:w")
        await rt.drain(timeout=30)
        await rt.stop()
        return before, queued

    before, queued = asyncio.run(main())
    assert sorted(got) == sorted([*before, "during", *queued]) and len(got) == len(set(got))
    assert [b for b in got if b.startswith("nowait")] == queued  # the outbox kept their order
    assert got[:5] == before
