"""``queue.driver.sqs``: wqnb queues on Amazon SQS (or anything speaking its API), through aiobotocore.

The contract is :mod:`wqnb.drivers.base`; the mapping is notes/brokers.md §6.2, which
closes the holes of Wippy's SQS driver (§3.3: no visibility heartbeat, the publisher's id
lost). Tested against moto's SQS server (no AWS is reachable from CI).

* **wire**: a message is an SQS message whose body is the text itself, and one String
  message attribute ``wqnb`` (SQS allows ten per message) holding JSON ``{"id", "a"
  (attempt), "h" (headers), "t" ("b" for bytes), "e" ("b64" / "empty")}``: bytes bodies,
  text SQS may not carry (``\\x00``…) and empty bodies (SQS needs one character) are
  base64 or a placeholder, marked. A plain ``SendMessage`` from any client is consumed as
  attempt 1 with SQS's ``MessageId`` as its id and its String attributes as headers. The
  headers ``sqs.delay_seconds``, ``sqs.message_group_id`` and
  ``sqs.message_deduplication_id`` also go to SendMessage's typed fields (Wippy's names).
* **publish**: ``SendMessageBatch`` in tens. Calls that arrive while a batch is on the
  wire go together in the next one (20 concurrent ``publish()`` calls cost two requests,
  not twenty). ``max_length`` is approximate: a publish waits (backoff, asking SQS again)
  while the cached ``ApproximateNumberOfMessages`` (+ delayed) is at the cap; another
  process may overshoot it between two refreshes. ``publish_nowait`` goes through the
  shared outbox (:mod:`._outbox`). A ``.fifo`` queue needs ``sqs.message_group_id`` on every
  publish, checked before the call; its deduplication id defaults to wqnb's id (with the
  attempt for a nack's copy), and its sends go one batch at a time, in order.
* **receive**: per subscription, up to four pollers run ``ReceiveMessage`` with
  ``MaxNumberOfMessages = min(room, 10)`` and a long poll of ``wait_time``; they reserve
  room first, so buffered + fetched-unsettled ≤ ``prefetch + concurrency``. A poll is never
  cancelled (what a cancelled poll was sent would stay invisible until its timeout): a stop
  lets it end (at most ``wait_time``) and makes what it returned visible again at once.
* **visibility heartbeat**: while a message waits in a buffer, runs, or waits out a
  ``requeue_delay``, ``ChangeMessageVisibility`` pushes its timeout forward every third of
  it, so a live consumer never gets a duplicate however long a handler takes. A consumer
  that dies stops the heartbeat: its messages come back after the visibility timeout.
* **settle**: ack = ``DeleteMessageBatch`` (coalesced like publishes); nack = a copy with
  ``attempt + 1`` sent, then the original deleted (a crash in between is a duplicate,
  never a loss; the attempt must travel in the copy, which ``ChangeMessageVisibility``
  could not change); store (a dead letter) = a send without the cap; release (a stop) =
  visibility 0 (a standard queue has no order: ``release_in_order = False``).
  ``requeue_delay`` is the consumer's timer, the message held (and heartbeated) meanwhile.
* **depth** = ``ApproximateNumberOfMessages`` + ``…Delayed``, asked every
  ``depth_refresh`` and corrected locally between (``exact_depth = False``); :meth:`info`
  asks SQS (``in_flight`` = ``ApproximateNumberOfMessagesNotVisible``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import exceptions as bexc

from ..errors import ConfigError, DriverUnavailable, PublishError, QueueFull, QueueNotFound
from ..message import Message
from ._inbox import Inbox
from ._outbox import Outbox
from ._tasks import cancel_and_wait
from .base import Driver, QueueSpec
from .sqs_config import SqsConfig, SqsConsumerOptions, SqsQueueOptions, is_fifo_name

__all__ = ["DRIVER", "SqsDriver"]

log = logging.getLogger("wqnb.drivers.sqs")

BATCH = 10  # AWS: entries per *Batch call, messages per receive
MAX_POLLERS = 4
MAX_MESSAGE = 262_144  # bytes of body + attributes (AWS's classic limit; moto's)
_FULL_BACKOFF = (0.02, 0.5)
_RETRY = (0.05, 2.0)
_NO_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
_THROTTLED = ("ThrottlingException", "RequestThrottled", "ServiceUnavailable", "InternalError",
              "KMSThrottlingException", "RequestThrottledException")
_PLAIN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: Headers that go to SendMessage's typed fields (Wippy's names).
DELAY, GROUP, DEDUP = "sqs.delay_seconds", "sqs.message_group_id", "sqs.message_deduplication_id"


def _transient(e: BaseException) -> bool:
    """Worth retrying: the endpoint is unreachable, slow, throttling or failing inside."""
    if isinstance(e, bexc.ClientError):
        err = e.response.get("Error", {})
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return err.get("Code") in _THROTTLED or status >= 500
    return isinstance(e, (bexc.EndpointConnectionError, bexc.ConnectionClosedError, bexc.ReadTimeoutError,
                          bexc.ConnectTimeoutError, bexc.HTTPClientError, TimeoutError, ConnectionError, OSError))


def _code(e: BaseException) -> str:
    return e.response.get("Error", {}).get("Code", "") if isinstance(e, bexc.ClientError) else ""


class _Coalescer:
    """Items submitted while a call is on the wire go together into the next calls: up
    to :data:`BATCH` items a call, up to ``parallel`` calls at once (1 keeps order). The
    submitting coroutine waits for its own items; ``send`` returns a per-item error (or
    None) list."""

    def __init__(self, send: Callable[[list[Any]], Awaitable[list[BaseException | None]]], parallel: int,
                 linger: float = 0.0) -> None:
        self._send = send
        self.parallel = parallel
        self.linger = linger  # wait this long for a batch to fill (deletes: nobody waits on them)
        self._pending: collections.deque[tuple[Any, asyncio.Future[None]]] = collections.deque()
        self._running = 0
        self._kicked = False

    async def submit(self, items: Sequence[Any]) -> None:
        loop = asyncio.get_running_loop()
        futures = []
        for it in items:
            fut = loop.create_future()
            self._pending.append((it, fut))
            futures.append(fut)
        if not self._kicked:  # next tick: what else is submitted in this one joins the batch
            self._kicked = True
            if self.linger and len(self._pending) < BATCH and not self._running:
                loop.call_later(self.linger, self._kick)
            else:
                loop.call_soon(self._kick)
        results = await asyncio.gather(*(asyncio.shield(f) for f in futures), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    def _kick(self) -> None:
        self._kicked = False
        loop = asyncio.get_running_loop()
        while self._pending and self._running < self.parallel:
            chunk = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
            self._running += 1
            loop.create_task(self._run(chunk))

    async def _run(self, chunk: list[tuple[Any, asyncio.Future[None]]]) -> None:
        try:
            errors = await self._send([it for it, _ in chunk])
        except BaseException as e:  # noqa: BLE001 - handed to every waiting submitter
            errors = [e] * len(chunk)
        finally:
            self._running -= 1
        for (_, fut), err in zip(chunk, errors, strict=True):
            if fut.done():
                continue
            if err is None:
                fut.set_result(None)
            else:
                fut.set_exception(err)
        self._kick()


@dataclass
class _QueueState:
    """One declared queue: its URL, the cached depth, and its batched calls."""

    spec: QueueSpec
    name: str
    fifo: bool
    url: str = ""
    visibility: int = 30  # the queue's VisibilityTimeout
    ready: int = 0  # visible + delayed at the last refresh
    delta: int = 0  # own sends minus receives since that refresh
    declared: bool = False
    sends: _Coalescer | None = None
    deletes: _Coalescer | None = None


@dataclass
class _Subscription:
    """This process's receiver of one queue, and what it holds (receipt → last extended)."""

    queue_id: str
    qos: int
    visibility: int
    wait_time: int
    explicit_visibility: bool = False
    buffer: Inbox = field(default_factory=Inbox)
    held: dict[str, float] = field(default_factory=dict)
    by_sqs_id: dict[str, Message] = field(default_factory=dict)  # held messages by SQS MessageId
    sqs_ids: dict[str, str] = field(default_factory=dict)  # receipt -> SQS MessageId
    deleting: set[str] = field(default_factory=set)  # acked, the delete on its way
    reserved: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)
    pollers: list[asyncio.Task[None]] = field(default_factory=list)
    generation: int = 0
    stopped: bool = True

    def free(self) -> int:
        return self.qos - len(self.held) - self.reserved


class SqsDriver(Driver):
    """SQS through aiobotocore: see the module docstring for every semantic."""

    kind = "queue.driver.sqs"
    exact_depth = False
    fifo = False  # a standard queue has no order (a .fifo queue keeps it per group)
    release_in_order = False
    durable = True  # on AWS; moto's server keeps nothing across a restart

    def __init__(self, id: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(id, options)
        self.config = SqsConfig.parse(self.options, entry=id)
        self._queues: dict[str, _QueueState] = {}
        self._subs: dict[str, _Subscription] = {}
        self._client: Any = None
        self._exit: contextlib.AsyncExitStack | None = None
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: Outbox[Message] = Outbox(id, self.config.outbox_size, self._send_outbox, log,
                                               target=self.config.where)
        self._depth_listeners: list[Callable[[], None]] = []
        self._acking: set[asyncio.Task[None]] = set()  # deletes on their way
        #: Counters a test or a notebook can read.
        self.stats = collections.Counter[str]()

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def where(self) -> str:
        return self.config.where

    async def start(self) -> None:
        if self._started:
            return
        cfg = self.config
        region, key, secret = cfg.aws.resolve(f"{self.kind} {self.id}")
        client_cfg = AioConfig(
            connect_timeout=cfg.connection_timeout,
            read_timeout=cfg.wait_time + cfg.connection_timeout + 5,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=64,
            use_fips_endpoint=cfg.use_fips,
            use_dualstack_endpoint=cfg.use_dual_stack,
        )
        stack = contextlib.AsyncExitStack()
        kw: dict[str, Any] = {"region_name": region, "config": client_cfg}
        if cfg.endpoint:
            kw["endpoint_url"] = cfg.endpoint
        if key is not None:
            kw["aws_access_key_id"], kw["aws_secret_access_key"] = key, secret
        try:
            client = await stack.enter_async_context(get_session().create_client("sqs", **kw))
            await asyncio.wait_for(client.list_queues(MaxResults=1), cfg.connection_timeout)
        except (TimeoutError, Exception) as e:  # noqa: BLE001 - any failure to answer
            await stack.aclose()
            if isinstance(e, bexc.NoCredentialsError):
                raise DriverUnavailable(
                    f"{self.kind} {self.id}: no AWS credentials for {self.where}: give the driver a "
                    "config.aws entry (access_key_id_env, secret_access_key_env) or set "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or a profile)") from None
            raise DriverUnavailable(
                f"{self.kind} {self.id}: cannot reach {self.where} within connection_timeout "
                f"{cfg.connection_timeout:g}s: {self._reason(e)}") from None
        self._client, self._exit, self._started = client, stack, True
        for state in self._queues.values():
            state.declared = False
            await self._declare_on_server(state)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._refresh_depths(), name=f"{self.id}:depth"),
                       loop.create_task(self._heartbeat(), name=f"{self.id}:heartbeat"),
                       self._outbox.start(loop)]
        for sub in self._subs.values():
            if not sub.stopped:
                self._start_pollers(sub)

    async def stop(self) -> None:
        """Send what the outbox holds (up to ``publish_timeout``), let every poll in flight
        end and hand back what it and the buffers hold, then close."""
        if not self._started:
            return
        undelivered = await self._outbox.close(self.config.publish_timeout)
        if self._acking:
            await asyncio.gather(*self._acking, return_exceptions=True)
        for sub in self._subs.values():
            await self._end_pollers(sub, wait=True)
        self._started = False
        await cancel_and_wait(self._tasks)
        self._tasks = []
        for sub in self._subs.values():
            sub.held.clear()
            sub.sqs_ids.clear()
            sub.by_sqs_id.clear()
        if self._exit is not None:
            with contextlib.suppress(Exception):
                await self._exit.aclose()
        self._client = self._exit = None
        if undelivered:
            raise PublishError(
                f"{self.kind} {self.id}: {undelivered} message(s) accepted by publish_nowait could "
                f"not be sent to {self.where} within publish_timeout {self.config.publish_timeout:g}s")

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, bexc.ClientError):
            err = exc.response.get("Error", {})
            return f"{err.get('Code', 'ClientError')}: {err.get('Message', '')}".rstrip(": ")
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return text.replace(self.config.endpoint, self.where) if self.config.endpoint else text

    async def _retrying(self, what: str, op: Callable[[], Awaitable[Any]], error: type[Exception] = PublishError) -> Any:
        """``op()`` until it succeeds; transient failures retry with backoff up to
        ``publish_timeout``, then raise ``error`` naming the driver, endpoint and ``what``."""
        if not self._started:
            raise error(f"{self.kind} {self.id}: {what}: driver not started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.publish_timeout
        delay = _RETRY[0]
        while True:
            try:
                return await op()
            except Exception as e:
                if not _transient(e):
                    raise
                if loop.time() + delay > deadline or not self._started:
                    raise error(f"{self.kind} {self.id}: {what}: {self.where} failing for publish_timeout "
                                f"{self.config.publish_timeout:g}s ({self._reason(e)})") from None
                self.stats["retries"] += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY[1])

    # -- queues -------------------------------------------------------------------------
    async def declare(self, spec: QueueSpec) -> None:
        raw = spec.options.get("sqs", spec.options) if isinstance(spec.options, dict) else {}
        SqsQueueOptions.parse(raw, entry=spec.id)
        state = self._queues.get(spec.id)
        if state is not None:
            state.spec = spec
            if state.declared:
                return
        else:
            name = spec.broker_name
            state = self._queues[spec.id] = _QueueState(spec, name, is_fifo_name(name))
            state.sends = _Coalescer(lambda items, s=state: self._send_batch(s, items), 1 if state.fifo else 4)
            # one delete on the wire at a time: the acks of the workers gather behind it into
            # full batches (a call per ack otherwise: moto and AWS cost ~10-20 ms a call)
            state.deletes = _Coalescer(lambda items, s=state: self._delete_batch(s, items), 1, linger=0.01)
        if self._started:
            await self._declare_on_server(state)

    async def _declare_on_server(self, state: _QueueState) -> None:
        """``GetQueueUrl``, else ``CreateQueue`` with the entry's attributes (an existing
        queue's attributes are never changed, as Wippy)."""
        cfg = self.config
        qopts = SqsQueueOptions.parse(state.spec.options.get("sqs", state.spec.options), entry=state.spec.id)

        async def find_or_create() -> str:
            try:
                return (await self._client.get_queue_url(QueueName=state.name))["QueueUrl"]
            except bexc.ClientError as e:
                if _code(e) not in _NO_QUEUE:
                    raise
            attrs: dict[str, str] = {}
            if qopts.default_visibility_timeout is not None:
                attrs["VisibilityTimeout"] = str(qopts.default_visibility_timeout)
            if cfg.message_retention_period:
                attrs["MessageRetentionPeriod"] = str(cfg.message_retention_period)
            if cfg.default_delay_seconds:
                attrs["DelaySeconds"] = str(cfg.default_delay_seconds)
            if state.fifo:
                attrs["FifoQueue"] = "true"
            try:
                return (await self._client.create_queue(QueueName=state.name, Attributes=attrs))["QueueUrl"]
            except bexc.ClientError as e:
                if _transient(e):
                    raise
                raise ConfigError(f"cannot create SQS queue {state.name!r} on {self.where}: {self._reason(e)}",
                                  entry=state.spec.id, field="queue_name") from None

        state.url = await self._retrying(f"declare {state.spec.id}", find_or_create, DriverUnavailable)
        attrs = await self._attributes(state, "VisibilityTimeout")
        state.visibility = int(attrs.get("VisibilityTimeout", 30))
        state.declared = True
        await self._refresh_one(state)

    def has_queue(self, queue_id: str) -> bool:
        return queue_id in self._queues

    def _state(self, queue_id: str) -> _QueueState:
        try:
            return self._queues[queue_id]
        except KeyError:
            raise QueueNotFound(f"queue not found: {queue_id}") from None

    async def _attributes(self, state: _QueueState, *names: str) -> dict[str, str]:
        res = await self._client.get_queue_attributes(QueueUrl=state.url, AttributeNames=list(names))
        return res.get("Attributes", {})

    # -- the wire -----------------------------------------------------------------------
    def _entry(self, state: _QueueState, m: Message) -> dict[str, Any]:
        """``m`` as a SendMessage entry (without ``Id``); ValueError naming what cannot travel."""
        meta: dict[str, Any] = {"id": m.id, "a": int(m.attempt)}
        headers = m.headers
        if headers:
            meta["h"] = headers
        body = m.body
        if isinstance(body, str):
            text = body
            if not text or _PLAIN.search(text):
                try:
                    data = text.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValueError(f"message {m.id}: body is not valid Unicode ({e.reason})") from None
                text, meta["e"] = (base64.b64encode(data).decode("ascii"), "b64") if data else ("-", "empty")
        else:
            data = bytes(body)
            meta["t"] = "b"
            text, meta["e"] = (base64.b64encode(data).decode("ascii"), "b64") if data else ("-", "empty")
        try:
            attr = json.dumps(meta, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"message {m.id}: headers are not JSON ({e})") from None
        size = len(text.encode("utf-8")) + len(attr) + 16
        if size > MAX_MESSAGE:
            raise ValueError(f"message {m.id}: {size} bytes on the wire, over SQS's limit of {MAX_MESSAGE}")
        entry: dict[str, Any] = {"MessageBody": text,
                                 "MessageAttributes": {"wqnb": {"DataType": "String", "StringValue": attr}}}
        delay = headers.get(DELAY) if headers else None
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= 900:
                raise ValueError(f"message {m.id}: {DELAY} must be an integer 0–900, got {delay!r}")
            if state.fifo:
                raise ValueError(f"message {m.id}: {DELAY} is not allowed on a FIFO queue (SQS refuses it)")
            entry["DelaySeconds"] = delay
        if state.fifo:
            group = headers.get(GROUP) if headers else None
            if not isinstance(group, str) or not group:
                raise ValueError(f"message {m.id}: sqs fifo publish missing {GROUP}")
            entry["MessageGroupId"] = group
            dedup = headers.get(DEDUP)
            if dedup is None:
                dedup = m.id if m.attempt <= 1 else f"{m.id}.{m.attempt}"
            entry["MessageDeduplicationId"] = str(dedup)[:128]
        return entry

    def _decode(self, raw: dict[str, Any]) -> Message:
        attrs = raw.get("MessageAttributes") or {}
        meta_raw = (attrs.get("wqnb") or {}).get("StringValue")
        body: str | bytes = raw.get("Body", "")
        meta: dict[str, Any] | None = None
        if meta_raw:
            try:
                meta = json.loads(meta_raw)
            except ValueError:
                meta = None
        if isinstance(meta, dict):
            enc = meta.get("e")
            if enc == "empty":
                data = b""
            elif enc == "b64":
                data = base64.b64decode(body)
            else:
                data = None
            if data is not None:
                body = data if meta.get("t") == "b" else data.decode("utf-8", "replace")
            headers = meta.get("h") if isinstance(meta.get("h"), dict) else {}
            msg_id = str(meta.get("id") or raw["MessageId"])
            try:
                attempt = max(1, int(meta.get("a", 1)))
            except (TypeError, ValueError):
                attempt = 1
        else:  # a plain SendMessage from another program
            headers = {k: v.get("StringValue") for k, v in attrs.items() if "StringValue" in v}
            msg_id, attempt = raw["MessageId"], 1
        m = Message(msg_id, -1, body, headers, attempt)
        m.receipt = raw["ReceiptHandle"]
        m.redelivered = int((raw.get("Attributes") or {}).get("ApproximateReceiveCount", "1")) > 1
        return m

    # -- publishing ---------------------------------------------------------------------
    def _entries(self, state: _QueueState, messages: Sequence[Message], what: str) -> list[dict[str, Any]]:
        try:
            return [self._entry(state, m) for m in messages]
        except ValueError as e:
            raise PublishError(f"{self.kind} {self.id}: {what} to {state.spec.id}: {e}") from None

    async def _send_batch(self, state: _QueueState, entries: list[dict[str, Any]]) -> list[BaseException | None]:
        """One ``SendMessageBatch``; entries SQS failed on its side are sent again."""
        errors: list[BaseException | None] = [None] * len(entries)
        todo = list(range(len(entries)))
        delay = _RETRY[0]
        while todo:
            batch = [{**entries[i], "Id": str(i)} for i in todo]
            res = await self._retrying(f"send to {state.spec.id}", lambda b=batch: self._client.send_message_batch(
                QueueUrl=state.url, Entries=b))
            again = []
            for f in res.get("Failed", []):
                i = int(f["Id"])
                if f.get("SenderFault"):
                    errors[i] = PublishError(f"{self.kind} {self.id}: send to {state.spec.id} refused: "
                                             f"{f.get('Code')}: {f.get('Message', '')}")
                else:
                    again.append(i)
            todo = again
            if todo:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY[1])
        return errors

    async def publish(self, queue_id: str, messages: Sequence[Message] | Message) -> None:
        if isinstance(messages, Message):
            messages = [messages]
        await self._publish(self._state(queue_id), list(messages), "publish", capped=True)

    async def store(self, queue_id: str, messages: Sequence[Message]) -> None:
        """A send without the capacity check (a dead letter): never refused for room."""
        await self._publish(self._state(queue_id), list(messages), "store", capped=False)

    async def _publish(self, state: _QueueState, messages: list[Message], what: str, *, capped: bool) -> None:
        entries = self._entries(state, messages, what)
        if not self._started:
            raise PublishError(f"{self.kind} {self.id}: {what} to {state.spec.id}: driver not started")
        cap = state.spec.max_length if capped else None
        backoff = _FULL_BACKOFF[0]
        while entries:
            n = len(entries)
            if cap is not None:
                n = min(n, cap - max(0, state.ready + state.delta))
                if n <= 0:  # full by the cached figure: wait, then ask SQS again
                    self.stats["refused"] += 1
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _FULL_BACKOFF[1])
                    await self._retrying(f"{what} to {state.spec.id}", lambda: self._refresh_one(state))
                    continue
                backoff = _FULL_BACKOFF[0]
            chunk, entries = entries[:n], entries[n:]
            state.delta += len(chunk)  # counted before the call: concurrent publishers see it
            try:
                assert state.sends is not None
                await state.sends.submit(chunk)
            except BaseException:
                state.delta -= len(chunk)
                raise

    def publish_nowait(self, queue_id: str, message: Message) -> None:
        state = self._state(queue_id)
        cap = state.spec.max_length
        if cap is not None and max(0, state.ready + state.delta) + self._outbox.pending(queue_id) >= cap:
            raise QueueFull(f"queue is full: {queue_id} holds max_length={cap} messages (approximately)")
        self._entries(state, [message], "publish_nowait")  # refuse what cannot travel, now
        self._outbox.put(queue_id, message)

    async def _send_outbox(self, queue_id: str, messages: list[Message]) -> None:
        await self._publish(self._queues[queue_id], messages, "publish_nowait", capped=True)

    # -- consuming ----------------------------------------------------------------------
    async def subscribe(self, queue_id: str, *, prefetch: int, concurrency: int, auto_ack: bool = False,
                        options: dict[str, Any] | None = None) -> None:
        state = self._state(queue_id)
        if auto_ack:
            raise ConfigError("auto_ack: true is not supported on queue.driver.sqs", entry=state.spec.id,
                              field="auto_ack")
        opts = SqsConsumerOptions.parse(options or {}, entry=state.spec.id)
        qos = max(1, prefetch + concurrency)
        sub = self._subs.get(queue_id)
        visibility = opts.visibility_timeout or state.visibility or 30
        wait = opts.wait_time if opts.wait_time is not None else self.config.wait_time
        if sub is None:
            sub = self._subs[queue_id] = _Subscription(queue_id, 0, visibility, wait)
        if sub.stopped:
            sub.qos, sub.stopped = qos, False
            sub.visibility, sub.wait_time = visibility, wait
            sub.explicit_visibility = bool(opts.visibility_timeout) or not state.visibility
            sub.generation += 1
            if self._started:
                self._start_pollers(sub)
        else:
            sub.qos += qos
            self._start_pollers(sub)
        sub.room.set()

    def _start_pollers(self, sub: _Subscription) -> None:
        loop = asyncio.get_running_loop()
        sub.pollers = [t for t in sub.pollers if not t.done()]
        want = max(1, min(MAX_POLLERS, -(-sub.qos // BATCH)))
        mine = sum(1 for t in sub.pollers if getattr(t, "wqnb_generation", None) == sub.generation)
        for _ in range(want - mine):
            t = loop.create_task(self._poll(sub, sub.generation), name=f"{self.id}:{sub.queue_id}:poll")
            t.wqnb_generation = sub.generation  # type: ignore[attr-defined]
            sub.pollers.append(t)

    async def unsubscribe(self, queue_id: str) -> None:
        """No more receives: polls in flight end on their own (never cancelled) and hand
        back what they get; what the buffer holds that no fetch returned goes back now."""
        sub = self._subs.get(queue_id)
        if sub is None or sub.stopped:
            return
        await self._end_pollers(sub, wait=False)

    async def _end_pollers(self, sub: _Subscription, *, wait: bool) -> None:
        sub.stopped = True
        sub.generation += 1
        sub.room.set()
        left = list(sub.buffer)
        sub.buffer.clear()
        if left:
            await self.release(sub.queue_id, left)
        live = [t for t in sub.pollers if not t.done()]
        if wait and live:
            log.debug("%s: waiting up to %ds for the receive in flight on %s", self.id, sub.wait_time, sub.queue_id)
            _, late = await asyncio.wait(live, timeout=sub.wait_time + self.config.connection_timeout + 5)
            for t in late:  # a poll that never answered: what it got comes back after its timeout
                log.warning("%s: a receive on %s did not end; its messages (if any) come back after "
                            "the visibility timeout", self.id, sub.queue_id)
                t.cancel()
            await asyncio.gather(*live, return_exceptions=True)
            sub.pollers = []

    async def _poll(self, sub: _Subscription, generation: int) -> None:
        state = self._state(sub.queue_id)
        loop = asyncio.get_running_loop()
        delay = _RETRY[0]
        while sub.generation == generation and self._started:
            n = min(sub.free(), BATCH)
            # a receive for fewer than ten only when no other is out: small receives
            # cost a request each, and the one out will make room for a full one
            if n <= 0 or (n < BATCH and sub.reserved):
                sub.room.clear()
                await sub.room.wait()
                continue
            kw: dict[str, Any] = {"QueueUrl": state.url, "MaxNumberOfMessages": n, "WaitTimeSeconds": sub.wait_time,
                                  "MessageAttributeNames": ["All"],
                                  "MessageSystemAttributeNames": ["ApproximateReceiveCount"]}
            if sub.explicit_visibility:
                kw["VisibilityTimeout"] = sub.visibility
            sub.reserved += n
            sent_at = loop.time()  # the visibility clock starts after this, at SQS
            try:
                res = await self._client.receive_message(**kw)
            except Exception as e:  # noqa: BLE001 - classified below
                if _code(e) in _NO_QUEUE:
                    log.warning("%s: %s is gone; declaring it again", self.id, state.name)
                    with contextlib.suppress(Exception):
                        await self._declare_on_server(state)
                elif not _transient(e):
                    log.error("%s: receive on %s failed: %s", self.id, sub.queue_id, self._reason(e))
                else:
                    log.warning("%s: receive on %s failed (%s); retrying in %gs", self.id, sub.queue_id,
                                self._reason(e), delay)
                self.stats["receive_errors"] += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY[1])
                continue
            finally:
                sub.reserved -= n
                sub.room.set()  # another poller may now take a small receive
            delay = _RETRY[0]
            got = []
            for raw in res.get("Messages", ()):
                again = sub.by_sqs_id.get(raw["MessageId"])
                if again is not None:  # one we hold, received a second time: keep the newest
                    self.stats["duplicate_receives"] += 1  # receipt (AWS deletes only by that)
                    sub.held.pop(again.receipt, None)
                    sub.sqs_ids.pop(again.receipt, None)
                    again.receipt = raw["ReceiptHandle"]
                    sub.held[again.receipt] = sent_at
                    sub.sqs_ids[again.receipt] = raw["MessageId"]
                    continue
                m = self._decode(raw)
                got.append(m)
                sub.held[m.receipt] = sent_at
                sub.sqs_ids[m.receipt] = raw["MessageId"]
                sub.by_sqs_id[raw["MessageId"]] = m
            if not got:
                continue
            state.delta -= len(got)
            if sub.generation != generation:  # stopped while the poll was out: hand them back now
                await self.release(sub.queue_id, got)
                return
            sub.buffer.extend(got)
            sub.buffer.wake()

    async def fetch(self, queue_id: str, max_messages: int) -> list[Message]:
        sub = self._subs.get(queue_id)
        if sub is None or sub.stopped:  # fetch without subscribe: the bound is the fetch's size
            await self.subscribe(queue_id, prefetch=max(1, max_messages), concurrency=0)
            sub = self._subs[queue_id]
        return await sub.buffer.take(max_messages)

    # -- settling -----------------------------------------------------------------------
    @staticmethod
    def _receipts(messages: Sequence[Message]) -> list[str]:
        return [m.receipt for m in messages if getattr(m, "receipt", None) is not None]

    def _forget(self, queue_id: str, receipts: list[str]) -> None:
        """Settled (or given up on): no more heartbeat, room for the pollers."""
        sub = self._subs.get(queue_id)
        if sub is not None:
            for r in receipts:
                sub.held.pop(r, None)
                sub.deleting.discard(r)
                sid = sub.sqs_ids.pop(r, None)
                if sid is not None:
                    sub.by_sqs_id.pop(sid, None)
            sub.room.set()

    async def _delete_batch(self, state: _QueueState, receipts: list[str]) -> list[BaseException | None]:
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
        res = await self._retrying(f"delete on {state.spec.id}", lambda: self._client.delete_message_batch(
            QueueUrl=state.url, Entries=entries))
        for f in res.get("Failed", []):  # a stale receipt: SQS will deliver the message again
            self.stats["failed_deletes"] += 1
            log.warning("%s: delete on %s failed (%s: %s); the message will be delivered again", self.id,
                        state.spec.id, f.get("Code"), f.get("Message", ""))
        return [None] * len(receipts)

    async def _settle(self, what: str, queue_id: str, receipts: list[str], op: Callable[[], Awaitable[Any]]) -> None:
        try:
            await op()
        except PublishError as e:  # SQS unreachable too long: the message comes back, a duplicate
            self.stats["dropped_settles"] += 1
            log.error("%s; the message will be delivered again", e)
        finally:
            self._forget(queue_id, receipts)

    async def ack(self, queue_id: str, messages: Sequence[Message]) -> None:
        """``DeleteMessageBatch``, sent in the background as AMQP's ``basic.ack`` is: the
        worker goes on at once, and the acks that gather while a delete is on the wire go
        in the next one (up to ten). Until its delete lands a message stays held (its room
        taken, its heartbeat kept), so a crash meanwhile means a duplicate, never a loss;
        :meth:`stop` and ``drain()`` wait for every delete."""
        state = self._state(queue_id)
        receipts = self._receipts(messages)
        if receipts:
            assert state.deletes is not None
            sub = self._subs.get(queue_id)
            if sub is not None:
                sub.deleting.update(receipts)
            task = asyncio.get_running_loop().create_task(
                self._settle(f"ack on {queue_id}", queue_id, receipts, lambda: state.deletes.submit(receipts)))
            self._acking.add(task)
            task.add_done_callback(self._acking.discard)

    async def nack(self, queue_id: str, messages: Sequence[Message]) -> None:
        """The copies (``attempt`` already raised by the consumer) are sent, then the
        originals deleted: a crash in between is a duplicate, never a loss."""
        state = self._state(queue_id)
        live = [m for m in messages if getattr(m, "receipt", None) is not None]
        if not live:
            return
        receipts = self._receipts(live)

        async def op() -> None:
            await self._publish(state, live, "nack", capped=False)
            assert state.deletes is not None
            await state.deletes.submit(receipts)
        await self._settle(f"nack on {queue_id}", queue_id, receipts, op)

    async def release(self, queue_id: str, messages: Sequence[Message]) -> None:
        """Visible again at once (visibility 0), same attempt; no order on SQS."""
        state = self._state(queue_id)
        receipts = self._receipts(messages)
        if not receipts:
            return
        state.delta += len(receipts)

        async def op() -> None:
            for i in range(0, len(receipts), BATCH):
                await self._change_visibility(state, receipts[i:i + BATCH], 0)
        await self._settle(f"release on {queue_id}", queue_id, receipts, op)

    async def _change_visibility(self, state: _QueueState, receipts: list[str], seconds: int) -> list[str]:
        """``ChangeMessageVisibilityBatch``; returns the receipts SQS refused (stale)."""
        entries = [{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": seconds} for i, r in enumerate(receipts)]
        res = await self._retrying(f"visibility on {state.spec.id}", lambda: self._client.change_message_visibility_batch(
            QueueUrl=state.url, Entries=entries))
        return [receipts[int(f["Id"])] for f in res.get("Failed", [])]

    async def _heartbeat(self) -> None:
        """Push the visibility timeout of every held message forward once a quarter of it
        has passed since the last push (timed from before the request that set it, and
        all due batches at once), so a live consumer is never robbed: a push may take up
        to half the timeout to reach SQS."""
        loop = asyncio.get_running_loop()
        while True:
            subs = [s for s in self._subs.values() if s.held]
            tick = min((s.visibility for s in subs), default=4) / 8
            await asyncio.sleep(max(0.05, tick))
            calls = []
            for sub in list(self._subs.values()):
                now = loop.time()
                due = [r for r, t in sub.held.items() if now - t >= sub.visibility / 4]
                calls += [self._extend(sub, due[i:i + BATCH], now) for i in range(0, len(due), BATCH)]
            if calls:
                await asyncio.gather(*calls)

    async def _extend(self, sub: _Subscription, receipts: list[str], sent_at: float) -> None:
        try:
            stale = await self._change_visibility(self._state(sub.queue_id), receipts, sub.visibility)
        except Exception as e:  # noqa: BLE001 - logged; the next tick tries again
            log.warning("%s: heartbeat on %s failed (%s)", self.id, sub.queue_id, self._reason(e))
            return
        self.stats["heartbeats"] += 1
        for r in receipts:
            if r in sub.held:
                sub.held[r] = sent_at
        stale = [r for r in stale if r in sub.held and r not in sub.deleting]  # not just settled
        if stale:
            self.stats["stale_receipts"] += len(stale)
            log.warning("%s: %d message(s) on %s were no longer ours to extend (settled, or their "
                        "timeout passed before the heartbeat)", self.id, len(stale), sub.queue_id)

    # -- reading ------------------------------------------------------------------------
    def on_depth_drop(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever a refresh lowers a cached depth (drain listens)."""
        self._depth_listeners.append(callback)

    def depth(self, queue_id: str) -> int:
        state = self._queues.get(queue_id)
        if state is None:
            return 0
        sub = self._subs.get(queue_id)
        return max(0, state.ready + state.delta) + (len(sub.buffer) if sub is not None else 0)

    async def _counts(self, state: _QueueState) -> tuple[int, int, int]:
        a = await self._attributes(state, "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                                   "ApproximateNumberOfMessagesDelayed")
        return (int(a.get("ApproximateNumberOfMessages", 0)), int(a.get("ApproximateNumberOfMessagesDelayed", 0)),
                int(a.get("ApproximateNumberOfMessagesNotVisible", 0)))

    async def _refresh_one(self, state: _QueueState) -> None:
        before = self.depth(state.spec.id)
        delta_before = state.delta
        visible, delayed, _ = await self._counts(state)
        state.ready = visible + delayed
        state.delta -= delta_before
        if self.depth(state.spec.id) < before:
            for callback in self._depth_listeners:
                callback()

    async def _refresh_depths(self) -> None:
        while True:
            await asyncio.sleep(self.config.depth_refresh)
            for state in list(self._queues.values()):
                if not state.declared:
                    continue
                try:
                    await self._refresh_one(state)
                except Exception as e:  # noqa: BLE001 - the next refresh tries again
                    log.debug("%s: depth of %s: %s", self.id, state.spec.id, self._reason(e))
                    break

    async def info(self, queue_id: str) -> dict[str, Any]:
        """Asked of SQS: ``ready`` (visible + delayed, plus what this process buffered and
        no consumer took yet), ``in_flight`` (not visible: received, unsettled, in any process)."""
        state = self._state(queue_id)
        visible, delayed, hidden = await self._retrying(f"info of {queue_id}", lambda: self._counts(state),
                                                        DriverUnavailable)
        state.ready, state.delta = visible + delayed, 0
        sub = self._subs.get(queue_id)
        local = len(sub.buffer) if sub is not None else 0
        ready = visible + delayed + local
        in_flight = max(0, hidden - local)
        return {"message_count": ready + in_flight, "ready": ready, "in_flight": in_flight, "delayed": delayed}


DRIVER = SqsDriver
