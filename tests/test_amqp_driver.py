"""``queue.driver.amqp`` at the driver level (wqnb/drivers/amqp.py, amqp_config.py, amqp_wire.py).

The first half needs no broker (field validation, safe URLs, the wire mapping, a broker
that does not answer): it runs everywhere aio-pika is installed. The rest takes the
``amqp_url`` fixture (skipped locally without ``WQNB_TEST_AMQP_URL``, a failure under CI)
or ``private_rabbitmq`` for the tests that stop the broker. Every test uses queues of its
own (a random suffix) and deletes them.
"""

from __future__ import annotations

import asyncio
import socket
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("aio_pika")

import aio_pika  # noqa: E402

from wqnb.drivers import amqp_wire  # noqa: E402
from wqnb.drivers.amqp import AmqpDriver  # noqa: E402
from wqnb.drivers.amqp_config import AmqpConfig, safe_url  # noqa: E402
from wqnb.drivers.base import QueueSpec  # noqa: E402
from wqnb.errors import ConfigError, DriverUnavailable, PublishError, QueueFull  # noqa: E402
from wqnb.message import Message  # noqa: E402
from wqnb.registry import Registry  # noqa: E402

SECRET = "s3cr3t-pw"


def load(body: str) -> Registry:
    text = "namespace: app\nentries:\n" + textwrap.indent(textwrap.dedent(body), "  ")
    reg = Registry().load_string(text, name="app.yaml")
    reg.check()
    return reg


DRIVER = """\
- name: rmq
  kind: queue.driver.amqp
"""


# --- fields, checked at load time (no broker) -----------------------------------------------

BAD = [
    ("  url: http://localhost/\n", "app:rmq", "url", "expected amqp://"),
    (f"  url: amqp://guest:{SECRET}@host:notaport/\n", "app:rmq", "url", "invalid URL"),
    ("  connection_timeout: soon\n", "app:rmq", "connection_timeout", "invalid duration"),
    ("  connection_timeout: 0\n", "app:rmq", "connection_timeout", "more than 0"),
    ("  reconnect_delay: -1\n", "app:rmq", "reconnect_delay", "negative"),
    ("  reconnect_delay: 5s\n  reconnect_max_delay: 1s\n", "app:rmq", "reconnect_max_delay", "less than"),
    ("  prefetch_count: many\n", "app:rmq", "prefetch_count", "integer"),
    ("  heartbeat: true\n", "app:rmq", "heartbeat", "duration"),
    ("  auth_mechanism: AMQPLAIN\n", "app:rmq", "auth_mechanism", "PLAIN or EXTERNAL"),
    ("  tls:\n    enabled: true\n    cert: /c.pem\n", "app:rmq", "tls.cert", "together"),
    ("  tls:\n    ca: x\n    ca_env: Y\n", "app:rmq", "tls.ca", "mutually exclusive"),
    ("  tls: yes\n", "app:rmq", "tls", "mapping"),
    ("  conection_timeout: 1s\n", "app:rmq", "conection_timeout", "unknown field"),
]


@pytest.mark.parametrize(("extra", "entry", "field", "text"), BAD, ids=[b[2] for b in BAD])
def test_bad_driver_field_is_a_load_error_naming_entry_and_field(extra: str, entry: str, field: str, text: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(DRIVER + extra)
    assert (e.value.entry, e.value.field) == (entry, field)
    assert text in str(e.value) and "app.yaml" in str(e.value)
    assert SECRET not in str(e.value)


QUEUE = DRIVER + """\
- name: tasks
  kind: queue.queue
  driver: rmq
"""

BAD_QUEUE = [
    ("  driver_options: {amqp: {queue_type: stream}}\n", "driver_options.amqp.queue_type", "classic or quorum"),
    ("  driver_options: {amqp: {durable: maybe}}\n", "driver_options.amqp.durable", "true or false"),
    ("  driver_options: {amqp: {message_ttl: 15000x}}\n", "driver_options.amqp.message_ttl", "invalid duration"),
    ("  driver_options: {amqp: {queue_type: quorum, durable: false}}\n", "driver_options.amqp.durable", "always durable"),
    ("  driver_options: {amqp: {max_length: 5}}\n", "driver_options.amqp.max_length", "options.max_length"),
    ("  driver_options: {amqp: {exclusiv: true}}\n", "driver_options.amqp.exclusiv", "unknown field"),
    ("  queue_name: 7\n", "queue_name", "string"),
]


@pytest.mark.parametrize(("extra", "field", "text"), BAD_QUEUE, ids=[b[1] for b in BAD_QUEUE])
def test_bad_queue_option_is_a_load_error(extra: str, field: str, text: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(QUEUE + extra)
    assert (e.value.entry, e.value.field) == ("app:tasks", field)
    assert text in str(e.value)


CONSUMER = QUEUE + """\
- name: worker
  kind: queue.consumer
  queue: tasks
  func: handler
"""


@pytest.mark.parametrize(("extra", "field"), [
    ("  auto_ack: yes please\n", "auto_ack"),
    ("  driver_options: {amqp: {exclusive: 1}}\n", "driver_options.amqp.exclusive"),
    ("  driver_options: {amqp: {consumer_tag: [a]}}\n", "driver_options.amqp.consumer_tag"),
])
def test_bad_consumer_option_is_a_load_error(extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(CONSUMER + extra)
    assert (e.value.entry, e.value.field) == ("app:worker", field)


def test_fields_at_top_level_or_under_options_and_queue_defaults() -> None:
    reg = load("""\
        - name: rmq
          kind: queue.driver.amqp
          url: amqp://u:p@example:5673/
          heartbeat: 30s
          options: {heartbeat: 5s, vhost: jobs, connection_timeout: 2s}
        - name: mem
          kind: queue.driver.memory
        - name: tasks
          kind: queue.queue
          driver: rmq
          driver_options: {amqp: {queue_type: quorum}}
        - name: other
          kind: queue.queue
          driver: rmq
          queue_name: renamed
          options: {max_length: 7}
        - name: local
          kind: queue.queue
          driver: mem
        - name: worker
          kind: queue.consumer
          queue: tasks
          func: handler
          auto_ack: true
          driver_options: {amqp: {exclusive: true, consumer_tag: w}}
        """)
    cfg = AmqpConfig.parse(reg.entries["app:rmq"].options)
    assert (cfg.url, cfg.heartbeat, cfg.vhost, cfg.connection_timeout) == ("amqp://u:p@example:5673/", 30.0, "jobs", 2.0)
    assert (cfg.reconnect_delay, cfg.reconnect_max_delay, cfg.publish_timeout) == (1.0, 30.0, 30.0)
    tasks, other, local = (reg.entries[f"app:{n}"] for n in ("tasks", "other", "local"))
    assert tasks.max_length is None and tasks.broker_name == "tasks"  # no cap on a broker unless set
    assert other.max_length == 7 and other.broker_name == "renamed"
    assert local.max_length == 1000  # the memory driver keeps its default
    assert tasks.driver_options == {"amqp": {"queue_type": "quorum"}}
    w = reg.entries["app:worker"]
    assert w.auto_ack is True and w.driver_options == {"amqp": {"exclusive": True, "consumer_tag": "w"}}
    assert AmqpConfig.parse(None).url == "amqp://guest:guest@localhost:5672/"


def test_two_queues_on_one_broker_queue_is_a_load_error_naming_both() -> None:
    with pytest.raises(ConfigError) as e:
        load(QUEUE + """\
            - name: jobs
              kind: queue.queue
              driver: rmq
              queue_name: tasks
            """.replace("            ", ""))
    assert "app:tasks" in str(e.value) and "app:jobs" in str(e.value) and e.value.field == "queue_name"


def test_safe_url_hides_the_password() -> None:
    assert safe_url(f"amqp://guest:{SECRET}@h:5672/v") == "amqp://guest:***@h:5672/v"
    assert safe_url("amqps://h/") == "amqps://h/"
    assert safe_url("amqp://only-user@h") == "amqp://only-user@h"
    assert SECRET not in safe_url(f"amqp://u:{SECRET}@h:bad/")
    d = AmqpDriver("app:rmq", {"url": f"amqp://u:{SECRET}@h:1/"})
    assert SECRET not in d.safe_url and SECRET not in repr(d.config.safe_url)


# --- the wire mapping (no broker) ---------------------------------------------------------------

def roundtrip(m: Message) -> Message:
    body, props = amqp_wire.encode(m)
    return amqp_wire.decode(props, body)


@pytest.mark.parametrize("body", ["text é ✓", "", b"\xff\x00\xfe", b"", b"valid utf-8 bytes"])
def test_bodies_keep_their_type(body: str | bytes) -> None:
    back = roundtrip(Message("id-1", 0, body, {}))
    assert back.body == body and type(back.body) is type(body) and back.id == "id-1"


def test_headers_keep_json_types_and_properties_map_like_wippy() -> None:
    headers = {"i": 7, "neg": -2, "big": 2**40, "f": 1.1, "b": True, "n": None, "s": "x",
               "l": [1, "a", {"z": 2.5}], "d": {"x": {"y": 1}}, "timestamp": 1_700_000_000,
               "correlation_id": "c-1", "reply_to": "replies", "message_type": "order",
               "encoding": "gzip", "amqp.priority": 5, "amqp.expiration": "60000",
               "content_type": "application/json"}
    body, props = amqp_wire.encode(Message("id-2", 0, '{"a": 1}', dict(headers), attempt=3))
    assert (props.correlation_id, props.reply_to, props.message_type, props.content_encoding) == (
        "c-1", "replies", "order", "gzip")
    assert (props.priority, props.expiration, props.delivery_mode, props.message_id) == (5, "60000", 2, "id-2")
    assert props.content_type == "application/json" and props.headers["x-wqnb-attempt"] == 3
    back = amqp_wire.decode(props, body)
    assert back.headers == headers and back.attempt == 3 and back.body == '{"a": 1}'
    assert {k: type(v) for k, v in back.headers.items()} == {k: type(v) for k, v in headers.items()}


def test_bytes_with_a_custom_content_type_stay_bytes() -> None:
    back = roundtrip(Message("i", 0, b"abc", {"content_type": "image/png"}))
    assert back.body == b"abc" and back.headers == {"content_type": "image/png"}


def test_a_plain_clients_message() -> None:
    from pamqp.commands import Basic

    m = amqp_wire.decode(Basic.Properties(), b"hello")
    assert (m.body, m.attempt, m.headers) == ("hello", 1, {})
    assert uuid.UUID(m.id).version == 4  # no message_id: a fresh one
    assert amqp_wire.decode(Basic.Properties(), b"\xff").body == b"\xff"
    assert amqp_wire.decode(Basic.Properties(content_type="application/octet-stream"), b"hi").body == b"hi"


def test_what_cannot_travel_is_an_error_naming_the_message() -> None:
    with pytest.raises(ValueError, match="id-3.*header"):
        amqp_wire.encode(Message("id-3", 0, "x", {"huge": 2**70}))
    with pytest.raises(ValueError, match="id-4.*Unicode"):
        amqp_wire.encode(Message("id-4", 0, "\ud800", {}))


# --- a broker that is not there (no broker needed) --------------------------------------------

def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 60) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(main())


def test_broker_down_at_start_is_driver_unavailable_within_connection_timeout() -> None:
    # A port that accepts TCP and never answers: the worst case (no refusal to see).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        d = AmqpDriver("app:rmq", {"url": f"amqp://guest:{SECRET}@127.0.0.1:{port}/",
                                   "connection_timeout": "0.5s"})
        t0 = time.monotonic()
        with pytest.raises(DriverUnavailable) as e:
            run(d.start, timeout=10)
        took = time.monotonic() - t0
    assert took < 5, took
    text = str(e.value)
    assert "app:rmq" in text and f"amqp://guest:***@127.0.0.1:{port}/" in text and SECRET not in text


def test_refused_connection_is_driver_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        d = AmqpDriver("app:rmq", {"url": f"amqp://127.0.0.1:{port}/", "connection_timeout": 2})
        with pytest.raises(DriverUnavailable, match=f"app:rmq.*127.0.0.1:{port}"):
            run(d.start, timeout=10)


# --- against a broker -----------------------------------------------------------------------

async def until(cond: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    """Wait on a condition with a deadline (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def fetch_n(d: AmqpDriver, qid: str, n: int, timeout: float = 10) -> list[Message]:
    out: list[Message] = []
    while len(out) < n:
        out += await asyncio.wait_for(d.fetch(qid, n - len(out)), timeout)
    return out


class Broker:
    """Drivers and queues of one test, cleaned up afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.drivers: list[AmqpDriver] = []
        self.names: list[str] = []

    async def driver(self, **options: Any) -> AmqpDriver:
        d = AmqpDriver(f"test:amqp{len(self.drivers)}", {"url": self.url, **options})
        await d.start()
        self.drivers.append(d)
        return d

    async def queue(self, d: AmqpDriver, max_length: int | None = None, **amqp: Any) -> str:
        name = f"wqnb-test-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        qid = f"test:{name}"
        await d.declare(QueueSpec(qid, max_length, name=name, options=amqp))
        return qid

    async def close(self) -> None:
        for d in self.drivers:
            try:
                await d.stop()
            except Exception:  # a test that broke the driver on purpose
                pass
        conn = await aio_pika.connect(self.url)
        async with conn:
            for name in self.names:
                ch = await conn.channel()
                await ch.queue_delete(name)


def with_broker(url: str, body: Callable[[Broker], Awaitable[None]], timeout: float = 60) -> None:
    async def main() -> None:
        b = Broker(url)
        try:
            await asyncio.wait_for(body(b), timeout)
        finally:
            await b.close()

    asyncio.run(main())


def msgs(*ids: str, **headers: Any) -> list[Message]:
    return [Message(i, n, f"body of {i}", dict(headers)) for n, i in enumerate(ids)]


def test_round_trip_bodies_headers_ids(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d)
        sent = [Message("s", 0, "text ✓", {"i": 1, "f": 0.1, "b": False, "n": None, "nest": {"l": [1, "x"]}}),
                Message("b", 1, b"\xff\xfe\x00", {"timestamp": 1_700_000_000}),
                Message("e", 2, "", {"correlation_id": "c", "amqp.priority": 1})]
        await d.publish(q, sent)
        await d.subscribe(q, prefetch=10, concurrency=0)
        got = await fetch_n(d, q, 3)
        assert [(m.id, m.body, m.headers, m.attempt, m.redelivered) for m in got] == [
            (m.id, m.body, m.headers, 1, False) for m in sent]
        assert all(m.seq == -1 and m.receipt is not None for m in got)
        await d.ack(q, got)
        assert d.stats["multiple_frames"] == 1  # the whole window in one frame
        assert await d.settled(q)

    with_broker(amqp_url, body)


def test_publish_waits_while_full_and_publish_nowait_raises(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d, max_length=2)
        await d.publish(q, msgs("m1", "m2"))
        with pytest.raises(QueueFull):
            d.publish_nowait(q, Message("n1", 0, "x", {}))  # cached depth at max_length
        blocked = asyncio.ensure_future(d.publish(q, msgs("m3")))
        await until(lambda: d.stats["refused"] >= 2, what="the broker refusing m3 (reject-publish)")
        assert not blocked.done()
        assert (await d.info(q))["ready"] == 2  # nothing dropped, nothing added
        await d.subscribe(q, prefetch=1, concurrency=0)
        first = await fetch_n(d, q, 1)
        await d.ack(q, first)
        await asyncio.wait_for(blocked, 10)  # room: the retry went through
        rest = await fetch_n(d, q, 1)
        await d.ack(q, rest)
        rest += await fetch_n(d, q, 1)
        assert [m.id for m in first + rest] == ["m1", "m2", "m3"]

    with_broker(amqp_url, body)


def test_publish_nowait_outbox_delivers_everything_it_accepted(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver(outbox_size=5)
        q = await b.queue(d, max_length=3)
        for m in msgs("a", "b", "c"):
            d.publish_nowait(q, m)
        with pytest.raises(QueueFull):
            d.publish_nowait(q, Message("d", 0, "x", {}))  # 3 accepted = max_length
        free = await b.queue(d)
        for m in msgs("f1", "f2", "f3", "f4", "f5")[:2]:
            d.publish_nowait(free, m)
        await d.subscribe(q, prefetch=10, concurrency=0)
        got = await fetch_n(d, q, 3)
        assert [m.id for m in got] == ["a", "b", "c"]
        await d.ack(q, got)
        await until(lambda: d.depth(free) == 2, what="the outbox flushed")

    with_broker(amqp_url, body)


def test_nack_publishes_a_copy_with_attempt_plus_one_and_acks_the_original(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d)
        await d.publish(q, msgs("m1", "m2", "m3", k="v"))
        await d.subscribe(q, prefetch=10, concurrency=0)
        m1, m2, m3 = await fetch_n(d, q, 3)
        m1.attempt += 1  # the consumer raises it
        await d.nack(q, [m1])
        await d.ack(q, [m2, m3])
        (again,) = await fetch_n(d, q, 1)
        assert (again.id, again.attempt, again.headers, again.redelivered) == ("m1", 2, {"k": "v"}, False)
        await d.ack(q, [again])
        assert await d.settled(q)
        await d.stop()  # nothing unacked comes back: the original was acked
        d2 = await b.driver()
        await d2.declare(QueueSpec(q, None, name=q.partition(":")[2]))
        assert (await d2.info(q))["ready"] == 0

    with_broker(amqp_url, body)


def test_nack_into_a_full_queue_requeues_the_original_and_keeps_the_attempt(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d, max_length=1)
        await d.publish(q, msgs("m1"))
        await d.subscribe(q, prefetch=1, concurrency=0)
        (m1,) = await fetch_n(d, q, 1)
        await d.publish(q, msgs("m2"))  # the queue is full again
        m1.attempt += 1
        await d.nack(q, [m1])  # the copy is refused: basic.nack(requeue) instead
        assert d.stats["nack_requeued_full"] == 1
        (back,) = await fetch_n(d, q, 1)
        assert (back.id, back.attempt, back.redelivered) == ("m1", 2, True)
        await d.ack(q, [back])
        (m2,) = await fetch_n(d, q, 1)
        assert m2.id == "m2"
        await d.ack(q, [m2])

    with_broker(amqp_url, body)


def test_release_puts_messages_back_in_order(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d)
        ids = [f"m{i}" for i in range(5)]
        await d.publish(q, msgs(*ids))
        await d.subscribe(q, prefetch=5, concurrency=0)
        got = await fetch_n(d, q, 5)
        await d.release(q, got[1:4:2])  # m1 m3: not contiguous, one frame each
        frames = d.stats["multiple_frames"]
        back = await fetch_n(d, q, 2)
        assert [(m.id, m.redelivered, m.attempt) for m in back] == [("m1", True, 1), ("m3", True, 1)]
        held = [got[0], back[0], got[2], back[1], got[4]]
        await d.release(q, held)  # every outstanding delivery: one multiple frame
        assert d.stats["multiple_frames"] == frames + 1
        again = await fetch_n(d, q, 5)
        assert [m.id for m in again] == ids and all(m.redelivered for m in again)
        await d.ack(q, again)

    with_broker(amqp_url, body)


def test_auto_ack_sends_no_acks_and_nack_still_retries(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d)
        await d.publish(q, msgs("a1", "a2", "a3"))
        await d.subscribe(q, prefetch=2, concurrency=1, auto_ack=True)
        got = await fetch_n(d, q, 3)
        await d.ack(q, got[:1])  # no frame: in no-ack mode it would close the channel
        got[1].attempt += 1
        await d.nack(q, got[1:2])
        (retry,) = await fetch_n(d, q, 1)
        assert (retry.id, retry.attempt) == ("a2", 2)
        assert (await d.info(q))["ready"] == 0 and not d.stats["dropped_settles"]
        await d.stop()  # a3 was never acked, and it is gone anyway: at-most-once
        d2 = await b.driver()
        await d2.declare(QueueSpec(q, None, name=q.partition(":")[2]))
        assert (await d2.info(q))["ready"] == 0

    with_broker(amqp_url, body)


def test_interop_with_a_plain_aio_pika_program(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d)
        name = q.partition(":")[2]
        conn = await aio_pika.connect(amqp_url)
        async with conn:
            ch = await conn.channel()
            # plain client -> wqnb: bytes, no wqnb headers: attempt 1, str where it is UTF-8
            await ch.default_exchange.publish(aio_pika.Message(b"plain hello"), routing_key=name)
            await ch.default_exchange.publish(aio_pika.Message(b"\xff\x01", message_id="given"), routing_key=name)
            await d.subscribe(q, prefetch=5, concurrency=0)
            a, bb = await fetch_n(d, q, 2)
            assert (a.body, a.attempt) == ("plain hello", 1) and a.id
            # aio-pika's defaults come back as Wippy's receive keys (not persistent: mode 1)
            assert a.headers == {"amqp.priority": 0, "amqp.delivery_mode": 1}
            assert (bb.body, bb.id, bb.attempt) == (b"\xff\x01", "given", 1)
            await d.ack(q, [a, bb])
            await d.unsubscribe(q)
            # wqnb -> plain client: the body as sent, message_id = wqnb's id
            await d.publish(q, [Message("wqnb-id-1", 0, "from wqnb", {"k": 1}), Message("wqnb-id-2", 1, b"\x00", {})])
            queue = await ch.get_queue(name)
            got = []
            for _ in range(2):
                m = None
                deadline = time.monotonic() + 10
                while m is None and time.monotonic() < deadline:
                    m = await queue.get(fail=False, no_ack=True)
                    if m is None:
                        await asyncio.sleep(0.01)
                assert m is not None
                got.append(m)
            assert [(m.body, m.message_id) for m in got] == [(b"from wqnb", "wqnb-id-1"), (b"\x00", "wqnb-id-2")]
            assert got[0].headers == {"k": 1} and got[0].content_type == "text/plain; charset=utf-8"
            assert got[0].delivery_mode == 2  # persistent

    with_broker(amqp_url, body)


def test_quorum_queue_round_trip_and_nack(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d, max_length=10, queue_type="quorum")
        await d.publish(q, msgs("q1", "q2"))
        await d.subscribe(q, prefetch=4, concurrency=0)
        q1, q2 = await fetch_n(d, q, 2)
        q1.attempt += 1
        await d.nack(q, [q1])
        await d.ack(q, [q2])
        (again,) = await fetch_n(d, q, 1)
        assert (again.id, again.attempt) == ("q1", 2)
        await d.ack(q, [again])

    with_broker(amqp_url, body)


def test_broker_restart_reconnects_and_publish_errors_when_it_stays_down(private_rabbitmq: Any) -> None:
    server = private_rabbitmq

    async def body(b: Broker) -> None:
        d = await b.driver(reconnect_delay="0.1s", reconnect_max_delay="0.5s", publish_timeout="1s")
        q = await b.queue(d)
        await d.publish(q, msgs("before"))
        await d.subscribe(q, prefetch=5, concurrency=0)
        (held,) = await fetch_n(d, q, 1)
        await asyncio.to_thread(server.kill)
        t0 = time.monotonic()
        with pytest.raises(PublishError, match="unreachable"):
            await d.publish(q, msgs("lost?"))
        assert time.monotonic() - t0 < 5
        await asyncio.to_thread(server.restart)
        await until(lambda: d.stats["reconnects"] >= 1, 30, "the driver reconnecting")
        await d.ack(q, [held])  # its channel is gone: dropped, the broker redelivers it
        await d.publish(q, msgs("after"))
        got = await fetch_n(d, q, 2, timeout=20)
        assert sorted((m.id, m.redelivered) for m in got) == [("after", False), ("before", True)]
        await d.ack(q, got)

    with_broker(server.url, body, timeout=120)


def test_a_consumer_channel_closed_by_the_broker_is_reopened_and_old_acks_dropped(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d)
        await d.publish(q, msgs("m1", "m2"))
        await d.subscribe(q, prefetch=5, concurrency=0)
        first = await fetch_n(d, q, 2)
        sub = d._subs[q]
        old = sub.raw
        await old.basic_ack(999_999)  # an unknown tag: RabbitMQ closes the channel (406)
        await until(lambda: sub.raw is not None and sub.raw is not old and not sub.raw.is_closed,
                    what="the consumer channel reopened")
        again = await fetch_n(d, q, 2)
        assert [(m.id, m.redelivered) for m in again] == [("m1", True), ("m2", True)]
        await d.ack(q, first)  # deliveries of the dead channel: no frame (it would close this one)
        assert d.stats["stale_acks"] == 2
        await d.ack(q, again)
        assert await d.settled(q)

    with_broker(amqp_url, body)


def test_unsubscribe_releases_what_no_fetch_took(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d)
        ids = [f"m{i}" for i in range(5)]
        await d.publish(q, msgs(*ids))
        await d.subscribe(q, prefetch=4, concurrency=1)
        await until(lambda: len(d._subs[q].buffer) == 5, what="5 deliveries pushed here")
        taken = await d.fetch(q, 2)
        await d.unsubscribe(q)
        assert (await d.info(q))["ready"] == 3
        await d.ack(q, taken)  # handlers that were running still settle
        assert not d.stats["stale_acks"] and not d.stats["dropped_settles"]
        await d.subscribe(q, prefetch=4, concurrency=1)
        rest = await fetch_n(d, q, 3)
        assert [m.id for m in taken + rest] == ids
        await d.ack(q, rest)
        assert await d.settled(q)

    with_broker(amqp_url, body)


def test_outbox_retries_a_refused_publish_until_there_is_room(amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from wqnb.drivers import amqp as amqp_module

    monkeypatch.setattr(amqp_module, "_DEPTH_REFRESH", 3600.0)  # the cached depth stays 0

    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d, max_length=1)
        conn = await aio_pika.connect(amqp_url)
        async with conn:  # another process fills the queue behind the cache's back
            ch = await conn.channel()
            await ch.default_exchange.publish(aio_pika.Message(b"other"), routing_key=q.partition(":")[2])
        d.publish_nowait(q, Message("mine", 0, "x", {}))  # accepted: the cache says 0
        await until(lambda: d.stats["refused"] >= 1, what="the broker refusing the outbox's publish")
        with pytest.raises(QueueFull):
            d.publish_nowait(q, Message("more", 0, "y", {}))  # now known full
        await d.subscribe(q, prefetch=1, concurrency=0)
        (other,) = await fetch_n(d, q, 1)
        await d.ack(q, [other])
        (mine,) = await fetch_n(d, q, 1)  # retried, not dropped
        assert (other.body, mine.id) == ("other", "mine")
        await d.ack(q, [mine])

    with_broker(amqp_url, body)


def test_auto_ack_buffer_is_bounded_without_losing_order(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d)
        ids = [f"m{i:02d}" for i in range(60)]
        await d.publish(q, msgs(*ids))
        await d.subscribe(q, prefetch=2, concurrency=1, auto_ack=True)  # RabbitMQ ignores qos here
        got: list[Message] = []
        while len(got) < len(ids):
            got += await asyncio.wait_for(d.fetch(q, 1), 10)
        assert [m.id for m in got] == ids
        assert d.stats["paused"] >= 1  # the driver stopped the push while its buffer was full
        assert (await d.info(q))["ready"] == 0

    with_broker(amqp_url, body)


def test_runtime_on_rabbitmq_retries_dead_letters_and_drains(amqp_url: str) -> None:
    """The whole path through the runtime: publish, consume, nack → copy with attempt + 1,
    dead letter after max_attempts (confirmed publish to the DLQ, then ack), drain()."""
    import wqnb

    suffix = uuid.uuid4().hex[:8]
    yaml_text = textwrap.dedent(f"""\
        namespace: app
        entries:
          - {{name: rmq, kind: queue.driver.amqp, url: "{amqp_url}", lifecycle: {{auto_start: true}}}}
          - name: tasks
            kind: queue.queue
            driver: rmq
            queue_name: wqnb-test-tasks-{suffix}
            dead_letter: {{queue: dead, max_attempts: 2}}
          - {{name: dead, kind: queue.queue, driver: rmq, queue_name: wqnb-test-dead-{suffix}}}
          - name: worker
            kind: queue.consumer
            queue: tasks
            func: handler
            concurrency: 2
            prefetch: 5
            lifecycle: {{auto_start: true}}
        """)
    calls: list[tuple[str, int]] = []

    def handler(body: str, message: Any) -> None:
        calls.append((body, message.attempt))
        if body.startswith("bad"):
            raise ValueError("bad message")

    async def body(b: Broker) -> None:
        b.names += [f"wqnb-test-tasks-{suffix}", f"wqnb-test-dead-{suffix}"]
        rt = wqnb.Runtime.from_yaml_string(yaml_text)
        rt.register_function("app:handler", handler, offload=False)
        await rt.start()
        try:
            for i in range(20):
                await rt.publish("app:tasks", f"ok {i}")
            await rt.publish("app:tasks", "bad 1")
            await asyncio.wait_for(rt.drain(), 30)
            assert (await rt.info("app:tasks"))["ready"] == 0
            assert (await rt.info("app:dead"))["ready"] == 1
        finally:
            await rt.stop()
        assert sorted(c for c in calls if c[0].startswith("ok")) == sorted((f"ok {i}", 1) for i in range(20))
        assert [c for c in calls if c[0] == "bad 1"] == [("bad 1", 1), ("bad 1", 2)]
        d = await b.driver()
        dlq = f"test:wqnb-test-dead-{suffix}"
        await d.declare(QueueSpec(dlq, None, name=f"wqnb-test-dead-{suffix}"))
        await d.subscribe(dlq, prefetch=1, concurrency=0)
        (dead,) = await fetch_n(d, dlq, 1)
        assert dead.body == "bad 1" and dead.attempt == 1
        assert dead.headers["x_original_queue"] == "app:tasks" and dead.headers["attempts"] == 2
        assert "bad message" in dead.headers["x_dead_letter_reason"]
        await d.ack(dlq, [dead])

    with_broker(amqp_url, body, timeout=90)


def test_a_queue_deleted_under_the_driver_is_declared_again_not_published_into_the_void(amqp_url: str) -> None:
    async def body(b: Broker) -> None:
        d = await b.driver()
        q = await b.queue(d)
        conn = await aio_pika.connect(amqp_url)
        async with conn:
            ch = await conn.channel()
            await ch.queue_delete(q.partition(":")[2])
        await d.publish(q, msgs("after-delete"))  # mandatory: returned, redeclared, sent again
        assert d.stats["unroutable"] >= 1
        await d.subscribe(q, prefetch=1, concurrency=0)
        (m,) = await fetch_n(d, q, 1)
        assert m.id == "after-delete"
        await d.ack(q, [m])

    with_broker(amqp_url, body)
