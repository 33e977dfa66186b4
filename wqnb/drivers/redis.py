"""``queue.driver.redis``: wqnb queues on Redis Streams, at-least-once, through redis.asyncio.

The contract is :mod:`wqnb.drivers.base`; the design is notes/brokers.md §6.2 and §10,
which closes each of the four loss traps of Wippy's removed driver (§1 fact 6):

* **layout**: one stream per queue (its ``queue_name``), one consumer group (``group``,
  default ``wqnb``) created at ``0`` with ``MKSTREAM`` (``BUSYGROUP`` ignored), consumer
  names ``<consumer entry>@<hostname>:<pid>:<n>`` (one per queue in this process; a bare
  ``fetch`` without a consumer uses the queue entry). An
  entry has the fields ``id``, ``body``, ``t`` (``s`` text / ``b`` bytes), ``headers`` (JSON)
  and ``attempts``. A plain ``XADD <name> * body <text>`` from any client is consumed as
  attempt 1, text if it is valid UTF-8, with the id ``<name>/<entry id>``.
* **publish** runs a Lua script that refuses while ready (``XLEN`` − pending) ≥
  ``max_length`` and ``XADD``\\ s otherwise (never ``MAXLEN``: trimming drops pending
  entries). :meth:`RedisDriver.publish` retries with backoff (5 ms → 100 ms) while
  refused; while Redis is unreachable it retries up to ``publish_timeout`` and then raises
  :class:`~wqnb.errors.PublishError`. **publish_nowait** puts the message in the bounded
  :class:`~._outbox.Outbox` that one task publishes in order; it raises :class:`~wqnb.errors.QueueFull` when
  the outbox is full or the cached depth is at ``max_length``.
* **fetch** pops what a per-subscription read loop took: its own pending entries first
  (at start and after a reconnect), then ``XAUTOCLAIM`` of entries idle past
  ``claim_min_idle`` (a dead consumer's, or released ones), then ``XREADGROUP … >`` with a
  ``BLOCK`` of at most ``block``. The read loop is never cancelled during a blocking read
  (a cancelled read can be handed an entry whose reply is lost): it ends by a flag, and
  :meth:`unsubscribe` wakes it with ``CLIENT UNBLOCK`` (a timeout reply, nothing delivered).
  A cancelled :meth:`fetch` only stops waiting on the local buffer. The loop keeps
  buffered + fetched-unsettled ≤ ``prefetch + concurrency``.
* **ack** = ``XACK`` + ``XDEL`` in one script; acks queued while one is on the wire share
  the next, and after a read that returned new entries the read loop waits up to
  ``_ACK_LINGER`` for their acks and sends them with its next read (one script: ``XACK``,
  ``XDEL``, ``XREADGROUP … >`` without ``BLOCK``); **nack** = one script: ``XACK``, and if the entry was
  still pending, ``XADD`` of the copy with ``attempts`` + 1 and ``XDEL`` of the original
  (atomic, never refused for capacity); **store** (a dead letter) = ``XADD`` without the
  capacity check; **release** = ``XCLAIM … IDLE <huge> JUSTID`` to self, so the next take
  of any consumer claims them first, in id order.
* **refresher**: every ``claim_min_idle / 3`` each subscription re-claims (``XCLAIM … 0
  JUSTID``, only entries it still owns) what it holds, so a handler longer than
  ``claim_min_idle`` in a live process is never run twice. ``XGROUP DELCONSUMER`` is only
  sent, by :meth:`stop`, from a script that checks the consumer owns nothing.
* **depth** = ``XLEN`` − pending, refreshed every 0.5 s plus local corrections
  (``exact_depth = False``); :meth:`info` asks Redis: ``ready`` and ``in_flight`` (the
  group's pending entries, every process's).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc

from ..errors import ConfigError, DriverUnavailable, PublishError, QueueFull, QueueNotFound
from ..message import Message
from ._config import safe_url
from ._inbox import Inbox
from ._outbox import Outbox
from ._tasks import cancel_and_wait
from .base import Driver, QueueSpec
from .redis_config import RedisConfig

__all__ = ["DRIVER", "RedisDriver"]

log = logging.getLogger("wqnb.drivers.redis")

#: Errors that mean "Redis went away": retry after a pause.
_LOST = (rexc.ConnectionError, rexc.TimeoutError, ConnectionError, OSError, rexc.BusyLoadingError)
_FULL_BACKOFF = (0.005, 0.1)
_DEPTH_REFRESH = 0.5
#: How often a read loop also asks whether another consumer released entries (taken first).
_RELEASED_POLL = 0.05
#: How long a read loop whose entries were all taken waits for their acks, to send them with
#: its next read (one command for both; otherwise a lone fast consumer acks one by one).
_ACK_LINGER = 0.002
_ACK_CHUNK = 5000  # ids per script call (Lua's unpack has a limit)
_RELEASED_IDLE = 10**12  # ms: "idle forever", claimed at once by the next XAUTOCLAIM
_NAMES = itertools.count(1)
_POOL_SIZE = 32

# KEYS[1] stream; ARGV[1] group, ARGV[2] cap (-1: none), ARGV[3] fields per message,
# then the messages' fields. Adds the longest prefix that fits; returns how many.
_PUBLISH = """
local cap = tonumber(ARGV[2])
local per = tonumber(ARGV[3])
local n = (#ARGV - 3) / per
if cap >= 0 then
  local pending = 0
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
  if type(p) == 'table' and p[1] then pending = p[1] end
  local room = cap - (redis.call('XLEN', KEYS[1]) - pending)
  if room < n then n = math.max(room, 0) end
end
for i = 0, n - 1 do
  local b = 4 + i * per
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, b, b + per - 1))
end
return n
"""

# KEYS[1] stream; ARGV[1] group; then entry ids: an ack (one command, atomic like MULTI).
_ACK = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""

# KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] count; then entry ids: the read
# loop's acks of what it handed out, and its next (non-blocking) read of new entries.
_ACK_READ = """
if #ARGV >= 4 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 4))
  redis.call('XDEL', KEYS[1], unpack(ARGV, 4))
end
return redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
"""

# KEYS[1] stream; ARGV[1] group; then (entry id, fields count, fields...) per message.
# A nack: the copy is added only if the original was still pending (not acked elsewhere).
_NACK = """
local i = 2
local done = 0
while i <= #ARGV do
  local eid = ARGV[i]
  local per = tonumber(ARGV[i + 1])
  if redis.call('XACK', KEYS[1], ARGV[1], eid) == 1 then
    redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 2, i + 1 + per))
    redis.call('XDEL', KEYS[1], eid)
    done = done + 1
  end
  i = i + 2 + per
end
return done
"""

# KEYS[1] stream, KEYS[2] released counter; ARGV[1] group, ARGV[2] consumer, ARGV[3] idle
# ms to set, ARGV[4] 1 = a release (bump the counter); then ids. Claims to self only the
# ids this consumer still owns (never steals one back that another consumer claimed).
_RECLAIM = """
local want = {}
for i = 5, #ARGV do want[ARGV[i]] = true end
if #ARGV == 4 then return 0 end
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000000, ARGV[2])
local ids = {}
for _, e in ipairs(mine) do
  if want[e[1]] then ids[#ids + 1] = e[1] end
end
for s = 1, #ids, 1000 do
  local cmd = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for j = s, math.min(s + 999, #ids) do cmd[#cmd + 1] = ids[j] end
  if ARGV[3] ~= '0' then
    cmd[#cmd + 1] = 'IDLE'
    cmd[#cmd + 1] = ARGV[3]
  end
  cmd[#cmd + 1] = 'JUSTID'
  redis.call(unpack(cmd))
end
if ARGV[4] == '1' and #ids > 0 then redis.call('INCR', KEYS[2]) end
return #ids
"""

# KEYS[1] stream; ARGV[1] group, ARGV[2] consumer: forget the consumer only if it owns nothing.
_FORGET = """
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if type(p) ~= 'table' or #p > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


@dataclass
class _QueueState:
    """One declared queue: its stream and the cached depth."""

    spec: QueueSpec
    name: str
    ready: int = 0  # XLEN - pending at the last refresh
    delta: int = 0  # own publishes minus takes since that refresh
    declared: bool = False
    acks: list[tuple[list[bytes], asyncio.Future[None]]] = field(default_factory=list)
    acking: bool = False  # a flush of acks is on the wire

    @property
    def released_key(self) -> str:
        return f"{self.name}:wqnb-released"


@dataclass
class _Subscription:
    """This process's reader of one queue: a Redis consumer and what it holds."""

    queue_id: str
    consumer: str
    qos: int
    buffer: Inbox = field(default_factory=Inbox)
    held: dict[bytes, None] = field(default_factory=dict)  # entry ids taken, not settled
    room: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None
    conn: Any = None  # the reader's own client (one connection: CLIENT UNBLOCK targets it)
    client_id: int | None = None
    stopped: bool = True
    own_first: bool = True  # read own pending entries before new ones (start, reconnect)
    own_cursor: bytes = b"0"
    claim_due: bool = True
    cursor: bytes = b"0-0"
    released_seen: int | None = None
    linger: bool = False  # the last read returned new entries: wait a moment for their acks
    collecting: bool = False  # lingering: an ack wakes the read loop instead of a flush
    acked: asyncio.Event = field(default_factory=asyncio.Event)

    def free(self) -> int:
        return self.qos - len(self.held)


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """A stream entry's fields as a script returns them (a flat list) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=False))


class RedisDriver(Driver):
    """Redis Streams through redis.asyncio: see the module docstring for every semantic."""

    kind = "queue.driver.redis"
    exact_depth = False
    fifo = True
    release_in_order = True
    durable = True
    names_consumers = True

    def __init__(self, id: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(id, options)
        self.config = RedisConfig.parse(self.options, entry=id)
        self._queues: dict[str, _QueueState] = {}
        self._subs: dict[str, _Subscription] = {}
        self._client: Any = None
        self._ack_conn: Any = None  # single connections: see start()
        self._pub_conn: Any = None
        self._pub_busy = False
        self._scripts: dict[str, Any] = {}
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: Outbox[Message] = Outbox(
            id, self.config.outbox_size, self._send_outbox, log, target=self.config.safe_url)
        self._depth_listeners: list[Callable[[], None]] = []
        self._host = f"{socket.gethostname()}:{os.getpid()}"
        #: Counters a test or a notebook can read.
        self.stats = collections.Counter[str]()

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def safe_url(self) -> str:
        return self.config.safe_url

    def _new_client(self, **extra: Any) -> Any:
        cfg = self.config
        kw: dict[str, Any] = {
            "socket_connect_timeout": cfg.connection_timeout,
            "socket_timeout": cfg.block + cfg.connection_timeout + 5.0,
            "client_name": cfg.client_name or None,
            "health_check_interval": 0,
            "retry_on_timeout": False,
        }
        if cfg.tls_enabled:
            kw["ssl"] = True
            t = cfg.tls
            kw["ssl_ca_certs"] = t.ca_file or None
            kw["ssl_certfile"] = t.cert_file or None
            kw["ssl_keyfile"] = t.key_file or None
            if t.insecure_skip_verify:
                kw["ssl_cert_reqs"] = "none"
                kw["ssl_check_hostname"] = False
        url = cfg.url
        if cfg.tls_enabled and url.startswith("redis://"):
            url = "rediss://" + url[len("redis://"):]
        if extra.get("single_connection_client"):
            return aioredis.Redis.from_url(url, **kw, **extra)
        # A bounded pool that waits for a free connection (500 concurrent publishes must
        # queue, not fail with "Too many connections").
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=_POOL_SIZE, timeout=cfg.publish_timeout, **kw)
        return aioredis.Redis(connection_pool=pool)

    async def start(self) -> None:
        if self._started:
            return
        client = self._new_client()
        try:
            await asyncio.wait_for(client.ping(), self.config.connection_timeout)
        except Exception as e:  # noqa: BLE001 - any failure to answer is "unavailable"
            await client.aclose(close_connection_pool=True)
            raise DriverUnavailable(
                f"{self.kind} {self.id}: cannot connect to {self.safe_url} within "
                f"connection_timeout {self.config.connection_timeout:g}s: {self._reason(e)}"
            ) from None
        self._client = client
        self._scripts = {name: client.register_script(src) for name, src in
                         (("publish", _PUBLISH), ("ack", _ACK), ("ack_read", _ACK_READ), ("nack", _NACK),
                          ("reclaim", _RECLAIM), ("forget", _FORGET))}
        # Acks go one flush at a time per queue, and a lone publish needs no pool round:
        # a connection each (redis-py's pool costs about as much CPU as the command).
        self._ack_conn = self._new_client(single_connection_client=True)
        self._pub_conn = self._new_client(single_connection_client=True)
        self._started = True
        for state in self._queues.values():
            state.declared = False
            await self._declare_on_server(state)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._refresh_depths(), name=f"{self.id}:depth"),
                       loop.create_task(self._refresh_claims(), name=f"{self.id}:refresher")]
        self._outbox.start(loop)
        for sub in self._subs.values():
            if not sub.stopped:
                self._start_reader(sub)

    async def stop(self) -> None:
        """Flush the outbox (up to ``publish_timeout``), end the read loops (each hands
        back what it buffered), forget consumers that own nothing, and close."""
        if not self._started:
            return
        undelivered = await self._outbox.close(self.config.publish_timeout)
        for sub in self._subs.values():
            await self._end_reader(sub)
        self._started = False
        await cancel_and_wait(self._tasks)
        self._tasks = []
        for sub in self._subs.values():
            if sub.stopped and not sub.held:
                try:
                    await self._scripts["forget"](keys=[self._state(sub.queue_id).name],
                                                  args=[self.config.group, sub.consumer])
                except (*_LOST, rexc.ResponseError):
                    pass
            sub.held.clear()
        for c in (self._ack_conn, self._pub_conn, self._client):
            try:
                await c.aclose(close_connection_pool=True)
            except Exception:  # noqa: BLE001, S110 - already gone
                pass
        self._client = self._ack_conn = self._pub_conn = None
        if undelivered:
            raise PublishError(
                f"{self.kind} {self.id}: {undelivered} message(s) accepted by publish_nowait could "
                f"not be published to {self.safe_url} within publish_timeout {self.config.publish_timeout:g}s")

    def _reason(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        pw = None
        try:
            from urllib.parse import urlsplit

            pw = urlsplit(self.config.url).password
        except ValueError:
            pass
        if pw:
            text = text.replace(pw, "***")
        return text.replace(self.config.url, safe_url(self.config.url))

    async def _retrying(self, what: str, op: Callable[[], Any], error: type[Exception] = PublishError) -> Any:
        """Run ``op()`` until it succeeds; while Redis is unreachable retry with backoff up
        to ``publish_timeout``, then raise ``error`` naming the driver, URL and ``what``."""
        if not self._started:
            raise error(f"{self.kind} {self.id}: {what}: driver not started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.publish_timeout
        delay = self.config.reconnect_delay
        while True:
            try:
                return await op()
            except _LOST as e:
                if loop.time() + delay > deadline or not self._started:
                    raise error(f"{self.kind} {self.id}: {what}: {self.safe_url} unreachable for "
                                f"publish_timeout {self.config.publish_timeout:g}s ({self._reason(e)})"
                                ) from None
                self.stats["retries"] += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.reconnect_max_delay)

    # -- queues -------------------------------------------------------------------------
    async def declare(self, spec: QueueSpec) -> None:
        raw = spec.options.get("redis", spec.options) if isinstance(spec.options, dict) else {}
        if raw:
            raise ConfigError(f"unknown driver_options.redis fields: {', '.join(map(str, raw))}",
                              entry=spec.id, field="driver_options.redis")
        state = self._queues.get(spec.id)
        if state is not None:
            state.spec = spec
            if state.declared:
                return
        else:
            state = self._queues[spec.id] = _QueueState(spec, spec.broker_name)
        if self._started:
            await self._declare_on_server(state)

    async def _declare_on_server(self, state: _QueueState) -> None:
        async def create() -> None:
            try:
                await self._client.xgroup_create(state.name, self.config.group, id="0", mkstream=True)
            except rexc.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise ConfigError(f"cannot create consumer group {self.config.group!r} on stream "
                                      f"{state.name!r}: {e}", entry=state.spec.id, field="queue_name") from None
        await self._retrying(f"declare {state.spec.id}", create, DriverUnavailable)
        state.declared = True
        await self._refresh_one(state)

    def has_queue(self, queue_id: str) -> bool:
        return queue_id in self._queues

    def _state(self, queue_id: str) -> _QueueState:
        try:
            return self._queues[queue_id]
        except KeyError:
            raise QueueNotFound(f"queue not found: {queue_id}") from None

    # -- the wire -----------------------------------------------------------------------
    @staticmethod
    def _fields(m: Message) -> list[Any]:
        body = m.body
        if isinstance(body, str):
            try:
                data, t = body.encode("utf-8"), "s"
            except UnicodeEncodeError as e:
                raise ValueError(f"message {m.id}: body is not valid Unicode ({e.reason})") from None
        else:
            data, t = bytes(body), "b"
        try:
            headers = json.dumps(m.headers, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"message {m.id}: headers are not JSON ({e})") from None
        return ["id", m.id, "body", data, "t", t, "headers", headers, "attempts", str(int(m.attempt))]

    def _decode(self, state: _QueueState, eid: bytes, raw: dict[bytes, bytes]) -> Message:
        data = raw.get(b"body", b"")
        t = raw.get(b"t")
        body: str | bytes
        if t == b"b":
            body = data
        else:
            try:
                body = data.decode("utf-8")
            except UnicodeDecodeError:
                body = data
        mid = raw.get(b"id")
        msg_id = mid.decode("utf-8", "replace") if mid else f"{state.name}/{eid.decode()}"
        headers: dict[str, Any] = {}
        h = raw.get(b"headers")
        if h:
            try:
                loaded = json.loads(h)
                if isinstance(loaded, dict):
                    headers = loaded
            except ValueError:
                headers = {"redis.headers": h.decode("utf-8", "replace")}
        try:
            attempt = max(1, int(raw.get(b"attempts", b"1")))
        except ValueError:
            attempt = 1
        m = Message(msg_id, -1, body, headers, attempt)
        m.receipt = eid
        m.redelivered = False
        return m

    # -- publishing ---------------------------------------------------------------------
    async def publish(self, queue_id: str, messages: Sequence[Message] | Message) -> None:
        if isinstance(messages, Message):
            messages = [messages]
        await self._publish(self._state(queue_id), list(messages), "publish", capped=True)

    async def store(self, queue_id: str, messages: Sequence[Message]) -> None:
        """``XADD`` without the capacity check (a dead letter): never refused."""
        await self._publish(self._state(queue_id), list(messages), "store", capped=False)

    def _encode(self, state: _QueueState, messages: Sequence[Message], what: str) -> list[list[Any]]:
        try:
            return [self._fields(m) for m in messages]
        except ValueError as e:
            raise PublishError(f"{self.kind} {self.id}: {what} to {state.spec.id}: {e}") from None

    async def _publish(self, state: _QueueState, messages: list[Message], what: str, *, capped: bool) -> None:
        frames = self._encode(state, messages, what)
        cap = state.spec.max_length if capped and state.spec.max_length is not None else -1
        where = f"{what} to {state.spec.id}"
        backoff = _FULL_BACKOFF[0]
        while frames:
            batch = frames[:500]
            args: list[Any] = [self.config.group, cap, len(batch[0])]
            for f in batch:
                args.extend(f)
            n = int(await self._retrying(where, lambda a=args: self._eval_publish([state.name], a)))
            state.delta += n
            frames = frames[n:]
            if n < len(batch):
                self.stats["refused"] += len(batch) - n
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _FULL_BACKOFF[1])
            else:
                backoff = _FULL_BACKOFF[0]

    async def _eval_publish(self, keys: list[str], args: list[Any]) -> Any:
        """The publish script on the publish connection, or on the pool while it is busy."""
        if self._pub_busy:
            return await self._eval("publish", keys, args)
        self._pub_busy = True
        try:
            return await self._eval("publish", keys, args, self._pub_conn)
        finally:
            self._pub_busy = False

    async def _eval(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        """``EVALSHA`` of a registered script (loaded again after a restart emptied
        Redis's script cache), without redis-py's Script wrapper."""
        client = client or self._client
        script = self._scripts[name]
        try:
            return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except rexc.NoScriptError:
            await client.script_load(script.script)
            return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    def publish_nowait(self, queue_id: str, message: Message) -> None:
        state = self._state(queue_id)
        cap = state.spec.max_length
        if cap is not None and self.depth(queue_id) + self._outbox.pending(queue_id) >= cap:
            raise QueueFull(f"queue is full: {queue_id} holds max_length={cap} messages")
        self._encode(state, [message], "publish_nowait")  # refuse what cannot travel now
        self._outbox.put(queue_id, message)

    async def _send_outbox(self, queue_id: str, messages: list[Message]) -> None:
        """The outbox's ``send``: one batch through the capped publish script, in order."""
        await self._publish(self._queues[queue_id], messages, "publish_nowait", capped=True)

    # -- consuming ----------------------------------------------------------------------
    async def subscribe(self, queue_id: str, *, prefetch: int, concurrency: int, auto_ack: bool = False,
                        options: dict[str, Any] | None = None, consumer: str | None = None) -> None:
        """Start this process's read loop on ``queue_id``, holding at most ``prefetch +
        concurrency`` entries, as the Redis consumer ``<consumer>@<host>:<pid>:<n>``
        (``consumer``: the consumer entry's id; the queue's id for a bare fetch). A second
        consumer entry on the same queue in this process shares it (the bound adds up, the
        name stays the first one's). ``auto_ack`` is refused (see redis_config)."""
        state = self._state(queue_id)
        if auto_ack:
            raise ConfigError("auto_ack: true is not supported on queue.driver.redis",
                              entry=state.spec.id, field="auto_ack")
        if options:
            raise ConfigError(f"unknown driver_options.redis fields: {', '.join(map(str, options))}",
                              entry=state.spec.id, field="driver_options.redis")
        qos = max(1, prefetch + concurrency)
        sub = self._subs.get(queue_id)
        if sub is None:
            name = f"{consumer or queue_id}@{self._host}:{next(_NAMES)}"
            sub = self._subs[queue_id] = _Subscription(queue_id, name, 0)
        if sub.stopped:
            sub.qos, sub.stopped, sub.own_first, sub.claim_due = qos, False, True, True
            sub.own_cursor = b"0"
            if self._started:
                self._start_reader(sub)
        else:
            sub.qos += qos
        sub.room.set()

    def _start_reader(self, sub: _Subscription) -> None:
        if sub.reader is None or sub.reader.done():
            sub.reader = asyncio.get_running_loop().create_task(
                self._read_loop(sub), name=f"{self.id}:{sub.queue_id}:reader")

    async def unsubscribe(self, queue_id: str) -> None:
        """End the read loop (woken by ``CLIENT UNBLOCK``, never cancelled mid-read), then
        release what it buffered that no fetch returned."""
        sub = self._subs.get(queue_id)
        if sub is None or sub.stopped:
            return
        await self._end_reader(sub)

    async def _end_reader(self, sub: _Subscription) -> None:
        sub.stopped = True
        sub.room.set()
        reader = sub.reader
        if reader is not None and not reader.done():
            while not reader.done():  # wake a blocking read: it replies "nothing", never an entry
                if sub.client_id is not None and self._client is not None:
                    try:
                        await self._client.client_unblock(sub.client_id)
                    except (*_LOST, rexc.ResponseError):
                        pass
                await asyncio.wait({reader}, timeout=0.05)
            await asyncio.gather(reader, return_exceptions=True)
        sub.reader = None
        left = list(sub.buffer)
        sub.buffer.clear()
        if left:
            await self.release(sub.queue_id, left)

    async def _linger(self, sub: _Subscription) -> None:
        """Wait up to ``_ACK_LINGER`` for an ack of what this loop handed out."""
        sub.collecting = True
        sub.acked.clear()
        try:
            async with asyncio.timeout(_ACK_LINGER):
                await sub.acked.wait()
        except TimeoutError:
            pass
        finally:
            sub.collecting = False

    async def _read_loop(self, sub: _Subscription) -> None:
        state = self._state(sub.queue_id)
        group, name = self.config.group, sub.consumer
        block_ms = max(1, int(self.config.block * 1000))
        claim_every = self.config.claim_min_idle / 4
        min_idle_ms = max(1, int(self.config.claim_min_idle * 1000))
        loop = asyncio.get_running_loop()
        last_claim = 0.0
        last_released = -_RELEASED_POLL
        delay = self.config.reconnect_delay
        conn = sub.conn = self._new_client(single_connection_client=True)
        try:
            while not sub.stopped:
                # held counts what waits in sub.buffer too: subtracting the buffer again
                # left a consumer short of prefetch + concurrency until its next settle
                room = sub.free()
                if room <= 0:
                    sub.room.clear()
                    await sub.room.wait()
                    continue
                if sub.linger:
                    sub.linger = False
                    if sub.held and not state.acks:
                        await self._linger(sub)
                # Queued acks ride with the next read when it is one of new entries.
                can_ride = not (sub.own_first or sub.claim_due or loop.time() - last_claim >= claim_every)
                if not can_ride:
                    self._start_ack_flush(state, sub.queue_id)
                try:
                    if sub.client_id is None:
                        sub.client_id = int(await conn.client_id())
                    ride = self._take_acks(state) if can_ride and not state.acking else []
                    self._start_ack_flush(state, sub.queue_id)  # what does not ride
                    got: list[tuple[bytes, dict[bytes, bytes]]] = []
                    again = False
                    if ride:  # the acks of what we handed out, with the next read of new entries
                        try:
                            res = await self._eval("ack_read", [state.name], [
                                group, name, room, *(e for chunk, _ in ride for e in chunk)], conn)
                        except BaseException:  # not known to be done: the flusher sends them again
                            state.acks[:0] = ride
                            self._start_ack_flush(state, sub.queue_id)
                            raise
                        self._acks_done(sub, ride)
                        self.stats["acks_with_read"] += 1
                        got = [(e, _pairs(f)) for e, f in (res[0][1] if res else []) if f]
                    elif sub.own_first:  # own pending entries, paged from the oldest
                        res = await conn.xreadgroup(group, name, {state.name: sub.own_cursor}, count=room)
                        entries = res[0][1] if res else []
                        buffered = {m.receipt for m in sub.buffer}
                        got = [(e, f) for e, f in entries if f and e not in sub.held and e not in buffered]
                        if len(entries) >= room:
                            sub.own_cursor = entries[-1][0]
                        else:
                            sub.own_first, sub.own_cursor = False, b"0"
                        again = True
                    elif sub.claim_due or loop.time() - last_claim >= claim_every:
                        last_claim = loop.time()
                        sub.claim_due = False
                        res = await conn.xautoclaim(
                            state.name, group, name, min_idle_ms, start_id=sub.cursor, count=room)
                        cursor, entries = res[0], res[1]
                        sub.cursor = cursor if isinstance(cursor, bytes) else str(cursor).encode()
                        got = [(e, f) for e, f in entries if f and e not in sub.held]
                        if sub.cursor != b"0-0" or len(entries) >= room:
                            sub.claim_due = True
                        again = True
                    else:
                        if loop.time() - last_released >= _RELEASED_POLL:
                            last_released = loop.time()
                            pipe = conn.pipeline(transaction=False)
                            pipe.get(state.released_key)
                            pipe.xreadgroup(group, name, {state.name: ">"}, count=room, block=block_ms)
                            released, res = await pipe.execute()
                            if released != sub.released_seen:
                                if sub.released_seen is not None:
                                    sub.claim_due, sub.cursor = True, b"0-0"
                                sub.released_seen = released
                        else:  # one command, not a pipeline: about half the client's CPU
                            res = await conn.xreadgroup(group, name, {state.name: ">"}, count=room,
                                                        block=block_ms)
                        got = [(e, f) for e, f in (res[0][1] if res else []) if f]
                        if not got:
                            sub.claim_due = sub.claim_due or loop.time() - last_claim >= claim_every
                    sub.linger = bool(got) and not again
                    delay = self.config.reconnect_delay
                except rexc.ResponseError as e:
                    if "NOGROUP" in str(e):  # the stream was deleted (or Redis lost it)
                        log.warning("%s: %s lost its group; declaring it again", self.id, state.name)
                        await self._declare_on_server(state)
                        continue
                    raise
                except _LOST as e:
                    if sub.stopped:
                        break
                    log.warning("%s: read of %s failed (%s); retrying in %gs", self.id, sub.queue_id,
                                self._reason(e), delay)
                    self.stats["read_errors"] += 1
                    sub.client_id = None
                    sub.own_first, sub.own_cursor = True, b"0"  # a reply lost with the connection: in our PEL
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.config.reconnect_max_delay)
                    continue
                if not got:
                    continue
                for eid, fields in got:
                    m = self._decode(state, eid, fields)
                    m.redelivered = again
                    sub.held[eid] = None
                    sub.buffer.append(m)
                state.delta -= len(got)
                sub.buffer.wake()
        finally:
            self._start_ack_flush(state, sub.queue_id)  # acks left for this loop: flushed anyway
            sub.client_id = None
            sub.conn = None
            try:
                await conn.aclose()
            except Exception:  # noqa: BLE001, S110 - already gone
                pass

    async def fetch(self, queue_id: str, max_messages: int) -> list[Message]:
        sub = self._subs.get(queue_id)
        if sub is None or sub.stopped:  # fetch without subscribe: the bound is the fetch's size
            await self.subscribe(queue_id, prefetch=max(1, max_messages), concurrency=0)
            sub = self._subs[queue_id]
        out = await sub.buffer.take(max_messages)
        return out

    # -- settling -----------------------------------------------------------------------
    @staticmethod
    def _receipts(messages: Sequence[Message]) -> list[bytes]:
        return [m.receipt for m in messages if getattr(m, "receipt", None) is not None]

    @staticmethod
    def _forget_held(sub: _Subscription | None, ids: list[bytes]) -> None:
        """Settled (or given up on): no longer refreshed, room for the read loop. Only
        after the settle reached Redis: until then the refresher keeps the entry ours,
        so no XAUTOCLAIM hands it out again meanwhile."""
        if sub is not None:
            for e in ids:
                sub.held.pop(e, None)
            sub.room.set()

    async def ack(self, queue_id: str, messages: Sequence[Message]) -> None:
        """``MULTI {XACK; XDEL}``. Acks that arrive while one is on the wire go together in
        the next one (workers acking one message each share a round trip)."""
        state = self._state(queue_id)
        ids = self._receipts(messages)
        if not ids:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        state.acks.append((ids, done))
        sub = self._subs.get(queue_id)
        if sub is not None and sub.collecting:
            sub.acked.set()  # the read loop sends it with its next read
        else:
            self._start_ack_flush(state, queue_id)
        await done  # one future per caller: cancelling it leaves the flush to the others

    def _start_ack_flush(self, state: _QueueState, queue_id: str) -> None:
        if state.acks and not state.acking:
            state.acking = True
            asyncio.get_running_loop().create_task(self._flush_acks(state, queue_id))

    def _take_acks(self, state: _QueueState) -> list[tuple[list[bytes], asyncio.Future[None]]]:
        """Queued acks for the read loop to send (up to one script call's worth)."""
        out, n = [], 0
        while state.acks and n + len(state.acks[0][0]) <= _ACK_CHUNK:
            out.append(state.acks.pop(0))
            n += len(out[-1][0])
        return out

    def _acks_done(self, sub: _Subscription, batch: list[tuple[list[bytes], asyncio.Future[None]]]) -> None:
        self._forget_held(sub, [e for chunk, _ in batch for e in chunk])
        for _, done in batch:
            if not done.done():
                done.set_result(None)

    async def _flush_acks(self, state: _QueueState, queue_id: str) -> None:
        try:
            while state.acks:
                batch, state.acks = state.acks, []
                ids = [e for chunk, _ in batch for e in chunk]

                async def op(ids: list[bytes] = ids) -> None:
                    for s in range(0, len(ids), _ACK_CHUNK):
                        await self._eval("ack", [state.name], [self.config.group, *ids[s:s + _ACK_CHUNK]],
                                         self._ack_conn)
                try:
                    await self._settle_op(f"ack on {queue_id}", op)
                finally:
                    self._forget_held(self._subs.get(queue_id), ids)
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            state.acking = False

    async def _settle_op(self, what: str, op: Callable[[], Any]) -> None:
        try:
            await self._retrying(what, op)
        except PublishError as e:  # the entry stays pending and is claimed again: a duplicate
            self.stats["dropped_settles"] += 1
            log.error("%s; the message will be delivered again", e)

    async def nack(self, queue_id: str, messages: Sequence[Message]) -> None:
        state = self._state(queue_id)
        live = [m for m in messages if getattr(m, "receipt", None) is not None]
        if not live:
            return
        args: list[Any] = [self.config.group]
        for m in live:
            f = self._encode(state, [m], "nack")[0]
            args += [m.receipt, len(f), *f]

        async def op() -> None:
            await self._scripts["nack"](keys=[state.name], args=args)
        state.delta += len(live)  # the copies are ready before the script returns (drain reads depth)
        try:
            await self._settle_op(f"nack on {queue_id}", op)
        finally:
            self._forget_held(self._subs.get(queue_id), self._receipts(live))

    async def release(self, queue_id: str, messages: Sequence[Message]) -> None:
        state = self._state(queue_id)
        sub = self._subs.get(queue_id)
        ids = self._receipts(messages)
        if not ids or sub is None:
            return
        state.delta += len(ids)

        async def op() -> None:
            await self._scripts["reclaim"](keys=[state.name, state.released_key],
                                           args=[self.config.group, sub.consumer, _RELEASED_IDLE, 1, *ids])
        try:
            await self._settle_op(f"release on {queue_id}", op)
        finally:
            self._forget_held(sub, ids)
        if not sub.stopped:
            sub.own_first, sub.own_cursor = True, b"0"  # take them back first here too

    async def _refresh_claims(self) -> None:
        """Keep every held entry claimed by its live consumer (idle reset to 0)."""
        every = self.config.claim_min_idle / 3
        while True:
            await asyncio.sleep(every)
            for sub in list(self._subs.values()):
                ids = list(sub.held)
                if not ids:
                    continue
                state = self._state(sub.queue_id)
                try:
                    await self._scripts["reclaim"](keys=[state.name, state.released_key],
                                                   args=[self.config.group, sub.consumer, 0, 0, *ids])
                    self.stats["refreshes"] += 1
                except (*_LOST, rexc.ResponseError) as e:
                    log.warning("%s: refresh of %s failed (%s)", self.id, sub.queue_id, self._reason(e))

    # -- reading ------------------------------------------------------------------------
    def on_depth_drop(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever a refresh lowers a cached depth (drain listens)."""
        self._depth_listeners.append(callback)

    def depth(self, queue_id: str) -> int:
        state = self._queues.get(queue_id)
        if state is None:
            return 0
        sub = self._subs.get(queue_id)
        local = len(sub.buffer) if sub is not None else 0
        return max(0, state.ready + state.delta) + local

    async def _counts(self, state: _QueueState) -> tuple[int, int]:
        pipe = self._client.pipeline(transaction=True)
        pipe.xlen(state.name)
        pipe.xpending(state.name, self.config.group)
        length, pending = await pipe.execute()
        p = int(pending["pending"]) if isinstance(pending, dict) else int(pending[0])
        return int(length) - p, p

    async def _refresh_one(self, state: _QueueState) -> None:
        before = self.depth(state.spec.id)
        delta_before = state.delta
        ready, _ = await self._counts(state)
        state.ready = ready
        state.delta -= delta_before
        if self.depth(state.spec.id) < before:
            for callback in self._depth_listeners:
                callback()

    async def _refresh_depths(self) -> None:
        while True:
            await asyncio.sleep(_DEPTH_REFRESH)
            for state in list(self._queues.values()):
                try:
                    await self._refresh_one(state)
                except (*_LOST, rexc.ResponseError):
                    break

    async def info(self, queue_id: str) -> dict[str, Any]:
        """``ready`` (``XLEN`` − pending) and ``in_flight`` (the group's pending entries,
        every process's), asked of Redis."""
        state = self._state(queue_id)
        ready, pending = await self._retrying(f"info of {queue_id}", lambda: self._counts(state),
                                              DriverUnavailable)
        state.ready, state.delta = ready, 0
        return {"message_count": ready, "ready": ready, "in_flight": pending}


DRIVER = RedisDriver
