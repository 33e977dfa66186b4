"""The :class:`Runtime`: wires entries into drivers, queues and consumers, and runs them.

It is event-loop aware: every method that waits is ``async`` and runs on whichever loop
calls it: a Jupyter kernel's (top-level ``await``; the runtime keeps running between
cells), ``asyncio.run``'s in a script, or a :class:`~wqnb.clock.VirtualTimeLoop` in
:func:`wqnb.simulate`. Code without a loop uses :meth:`Runtime.sync`, which runs the
runtime on a private loop in a background thread (works in a notebook cell too, with no
``nest_asyncio``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from time import time as _unix_now
from typing import Any, TypeVar

from .clock import clock_fn, is_virtual
from .consumer import Consumer
from .drivers.base import Driver, QueueSpec
from .drivers.memory import MemoryDriver
from .errors import (
    ConfigError,
    PermissionDenied,
    QueueFull,
    QueueNotFound,
    RuntimeStateError,
    StopTimeout,
)
from .handlers.base import FunctionSpec, Handler, HandlerServices
from .handlers.python import import_callable, python_handler
from .message import Delivery, IdSource, Message, encode_body
from .registry import ConsumerEntry, DriverEntry, QueueEntry, Registry
from .routes import ConsumerHost, Route
from .security import PublishGate
from .retention import Trimmer
from .timeline import ConsumerInfo, QueueInfo, Recorder, Timeline

__all__ = ["Runtime", "SyncRuntime", "DRIVERS"]

_log = logging.getLogger("wqnb.runtime")

T = TypeVar("T")

#: Driver classes by entry kind; the Redis and AMQP drivers add themselves when imported.
DRIVERS: dict[str, type[Driver]] = {"queue.driver.memory": MemoryDriver}

#: How often ``drain()`` asks a broker again while its queues are not empty there.
BROKER_DRAIN_POLL = 0.05

#: Unix time at virtual t = 0, so that virtual runs are identical whatever the date.
VIRTUAL_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Runtime:
    """An app of YAML entries, running on the current event loop.

    >>> rt = Runtime.from_yaml_string(APP)                     # doctest: +SKIP
    >>> rt.register_function("app.queue:task_handler", handle)  # doctest: +SKIP
    >>> await rt.start(); await rt.publish("app.queue:tasks", {"id": 1})  # doctest: +SKIP
    >>> await rt.drain(); await rt.stop(); rt.timeline.df        # doctest: +SKIP
    """

    def __init__(self, registry: Registry | None = None, *, recorder: Recorder | None = None,
                 process: str | None = None, strict_security: bool | None = None,
                 max_events: int | None = None, spill: str | Path | None = None) -> None:
        """``max_events``: keep at most about this many timeline rows (the oldest are
        dropped in chunks, counted, and with ``spill`` (a folder) written to Parquet
        first); see :mod:`wqnb.retention`. Default: keep every event."""
        if recorder is not None and (max_events is not None or spill is not None):
            raise ValueError("give max_events=/spill= or recorder=, not both (Recorder(max_events=...) "
                             "takes them)")
        self.registry = registry or Registry()
        self.registry.check()
        #: Checks every publish a handler makes (DESIGN §8). ``strict_security`` (default:
        #: the YAML's ``security: {strict_mode: ...}``, else False) refuses publishes from
        #: handlers whose consumer has no actor and scope; ``rt.security.strict`` may change it.
        self.security = PublishGate(
            self.registry.entries,
            self.registry.strict_security if strict_security is None else strict_security,
        )
        self.recorder = recorder or Recorder(max_events, spill=spill)
        self.recorder.on_forget = self._forget_foreign
        self._trimmer: Trimmer | None = None
        self._ids = IdSource()
        self._foreign: dict[str, int] = {}  # wire id -> seq, for messages published elsewhere
        self.recorder.id_prefix = self._ids.prefix
        self.recorder.process = process or f"{socket.gethostname()}:{os.getpid()}"
        self._w = self.recorder.write
        self._functions: dict[str, Callable[..., Any]] = {}
        self._offload: dict[str, bool | None] = {}
        self.drivers: dict[str, Driver] = {}
        self.routes: dict[str, Route] = {}
        self.consumers: dict[str, Consumer] = {}
        self._started: list[str] = []
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unix0 = 0.0
        self._unix_shift = 0.0
        self._virtual = False
        self.state = "created"
        self._stopping: asyncio.Future[None] | None = None
        self._host = ConsumerHost(
            recorder=self.recorder, settled=self._notify_settled, drain_waiters=self._drain_waiters,
            unix_time=self.unix_time, intern=self._intern, clock=lambda: self._now,
            publish_from_handler=self._publish_from_handler,
        )
        self._wire()

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, *paths: str | Path | Iterable[str | Path], **options: Any) -> Runtime:
        """Load YAML files and/or folders (every ``.yaml``/``.yml``/``.json`` below them);
        ``options`` go to the constructor (``max_events=``, ``process=``, …)."""
        flat: list[str | Path] = []
        for p in paths:
            flat.extend([p] if isinstance(p, (str, Path)) else p)
        if not flat:
            raise ConfigError("from_yaml needs at least one file or folder")
        return cls(Registry().load(flat), **options)

    @classmethod
    def from_yaml_string(cls, text: str, base_dir: str | Path = ".", *, name: str = "<string>",
                         **options: Any) -> Runtime:
        """Load entries from YAML text; ``file://`` sources resolve against ``base_dir``;
        ``options`` go to the constructor (``max_events=``, ``process=``, …)."""
        return cls(Registry().load_string(text, base_dir=base_dir, name=name), **options)

    def _wire(self) -> None:
        reg = self.registry
        for d in reg.drivers:
            cls = DRIVERS.get(d.kind)
            if cls is None:
                _load_driver_module(d)
                cls = DRIVERS[d.kind]
            self.drivers[d.id] = cls(d.id, d.options)
        for q in reg.queues:
            self._add_route(q, self.drivers[q.driver])
        for q in reg.queues:
            if q.dead_letter:
                route = self.routes[q.id]
                route.dead_letter = self.routes[q.dead_letter]
                route.max_attempts = q.max_attempts
        for f in reg.functions:
            if f.kind == "function.lua":
                _check_lua(f)

    def _add_route(self, q: QueueEntry, driver: Driver) -> None:
        """A route per queue entry. In-process queues are declared now, so that publishing
        works before ``start`` (as in Wippy); broker queues at start, once connected."""
        key = driver.kind.rpartition(".")[2]
        options = q.driver_options.get(key) if isinstance(q.driver_options.get(key), dict) else {}
        spec = QueueSpec(q.id, q.max_length, q.dead_letter, q.max_attempts, dict(options or {}), q.queue_name)
        qi = self.recorder.queue_index(q.id)
        route = self.routes[q.id] = Route(spec, driver, qi)
        declare_now = getattr(driver, "declare_now", None)  # in-process drivers (memory)
        if declare_now is not None:
            declare_now(spec)
            route.bind()
        self.recorder.queues[q.id] = QueueInfo(q.id, q.max_length, q.dead_letter, q.max_attempts)

    async def _declare_queues(self, driver: Driver) -> None:
        """After ``driver`` started: declare its queues there (again after a restart)."""
        for route in self.routes.values():
            if route.driver is driver and route.local is None:
                await driver.declare(route.spec)
                route.bind()

    def register_function(self, function_id: str, fn: Callable[..., Any], *, offload: bool | None = None) -> None:
        """Use a Python callable for ``function_id`` (a consumer's ``func``).

        ``fn(body)`` or ``fn(body, message)``, sync or async. A sync function runs in a
        thread on real time unless ``offload=False``; see :mod:`wqnb.handlers.python`.
        """
        if not callable(fn):
            raise TypeError(f"register_function({function_id!r}, ...): expected a callable, got {fn!r}")
        if ":" not in function_id:
            raise ValueError(f"function id must be 'namespace:name', got {function_id!r}")
        self._functions[function_id] = fn
        self._offload[function_id] = offload

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, *entry_ids: str) -> None:
        """Start the ``auto_start`` drivers and consumers (or the ones named), in dependency order.

        Every consumer's ``func`` is resolved first, so a missing function fails here,
        naming the consumer and the field, before anything runs.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop and self.state in ("running", "stopping"):
            raise RuntimeStateError("this runtime is running on another event loop")
        if self.state == "stopping" and self._stopping is not None:
            # start() during stop(): let the stop finish (nothing is lost), then start again
            await asyncio.shield(self._stopping)
        self._bind(loop)
        order = self.registry.start_order()
        wanted = set(entry_ids) if entry_ids else None
        if wanted:
            unknown = wanted - set(order)
            if unknown:
                raise ConfigError(f"no such entry: {', '.join(sorted(unknown))}")
        to_start = [
            eid for eid in order
            if isinstance(self.registry.entries[eid], (DriverEntry, ConsumerEntry))
            and (eid in wanted if wanted else self.registry.entries[eid].lifecycle.auto_start)
        ]
        handlers = {
            eid: self._handler_for(self.registry.entries[eid])
            for eid in to_start if isinstance(self.registry.entries[eid], ConsumerEntry)
        }
        for eid in to_start:
            if eid in self._started:
                continue
            entry = self.registry.entries[eid]
            if isinstance(entry, DriverEntry):
                driver = self.drivers[eid]
                await driver.start()
                await self._declare_queues(driver)
                on_drop = getattr(driver, "on_depth_drop", None)  # a broker's cached depth fell:
                if on_drop is not None:  # drain() may be waiting on it
                    on_drop(self._notify_settled)
            else:
                route = self.routes[entry.queue]
                if not route.declared:
                    raise RuntimeStateError(
                        f"consumer {eid}: its queue {entry.queue} is on driver {route.driver.id}, which is "
                        "not started (give the driver lifecycle.auto_start: true, or start it first)"
                    )
                consumer = self.consumers.get(eid)
                if consumer is None:
                    consumer = self.consumers[eid] = Consumer(entry, route, handlers[eid], self._host)
                    self.recorder.consumers[eid] = ConsumerInfo(eid, entry.queue, entry.concurrency, entry.prefetch)
                else:
                    consumer.handler = handlers[eid]
                await consumer.start()
            self._started.append(eid)
        self.state = "running"
        if self.recorder.retention is not None and not self._virtual and self._trimmer is None:
            self._trimmer = Trimmer(self.recorder, loop)  # real time only: see wqnb.retention
            self._trimmer.start()

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop:
            return
        previous = self._now() if self._loop is not None else None  # where the old clock ended
        self._loop = loop
        now = clock_fn(loop)
        self._virtual = is_virtual(loop)
        if self.recorder.t0 is None:
            self.recorder.t0 = loop.time()
            self._unix0 = VIRTUAL_EPOCH if self._virtual else time.time()
            self.recorder.origin_unix = self._unix0
        else:
            # A new loop keeps t0, so the timeline's t stays continuous; a new virtual loop
            # starts its clock at 0 again, so this runtime's clock goes on from where the
            # old one ended (a shift, paid only by a runtime run on a second loop).
            end = max(previous or 0.0, self.recorder.last_t() or 0.0)
            shift = end - loop.time()
            if shift > 0:
                now = _shifted(now, shift)
        self._now = now
        self._unix_shift = self._unix0 - self.recorder.t0  # virtual Unix time = the clock + this

    def _handler_for(self, c: ConsumerEntry) -> Handler:
        fn = self._functions.get(c.func)
        virtual = is_virtual(self._loop)

        def offload(asked: bool | None) -> bool:  # threads on real time, unless told; never on virtual
            return not virtual and (asked is None or asked)

        if fn is not None:
            return python_handler(fn, offload=offload(self._offload.get(c.func)), threads=c.concurrency, name=c.id)
        spec = self.registry.entries.get(c.func)
        if not isinstance(spec, FunctionSpec):
            raise ConfigError(
                f"function not found: {c.func} (neither a function entry nor registered with "
                "rt.register_function)",
                file=c.file, entry=c.id, field="func",
            )
        if spec.kind == "function.python":
            return python_handler(import_callable(spec), offload=offload(spec.options.get("offload")),
                                  threads=c.concurrency, name=c.id)
        try:
            from .handlers.lua import load_lua_function
        except ImportError as e:
            raise ConfigError(
                f"function.lua needs lupa: pip install 'wqnb[lua]' ({e})",
                file=spec.file, entry=spec.id, field="kind",
            ) from None
        return load_lua_function(spec, self.services)

    @property
    def services(self) -> HandlerServices:
        """What handlers may use: publish, queue info, the clock."""
        return HandlerServices(
            publish=self.publish, queue_info=self.queue_info, now=self.unix_time, sleep=asyncio.sleep,
            publish_denied=self._publish_denied, clock=self._timeline_t,
        )

    def _timeline_t(self) -> float:
        """Seconds since the timeline began (its ``t``), on the runtime's clock."""
        if self._loop is None:
            return 0.0
        return self._now() - (self.recorder.t0 or 0.0)

    def _publish_denied(self, delivery: Delivery | None, queue_id: str | None) -> str | None:
        """The security check of a handler's publish: None, or Wippy's refusal text."""
        return self.security.denied(getattr(getattr(delivery, "_settle", None), "entry", None), queue_id)

    async def _publish_from_handler(self, delivery: Delivery, queue_id: str, body: Any,
                                    headers: dict[str, Any] | None = None) -> str:
        """``await message.publish(...)`` in a Python handler: checked, then published."""
        denied = self._publish_denied(delivery, queue_id)
        if denied is not None:
            raise PermissionDenied(denied)
        return await self.publish(queue_id, body, headers)

    async def stop(self) -> None:
        """Stop consumers (concurrently), then drivers, in reverse start order.

        Raises :class:`~wqnb.errors.StopTimeout` naming the consumers whose handlers
        were still running after their ``stop_timeout`` (their messages were requeued).
        """
        if self.state == "stopping" and self._stopping is not None:
            await asyncio.shield(self._stopping)  # a second stop() waits for the first
            return
        if self.state != "running":
            return
        self.state = "stopping"
        self._stopping = asyncio.get_running_loop().create_future()
        try:
            consumers = [self.consumers[e] for e in reversed(self._started) if e in self.consumers]
            results = await asyncio.gather(*(c.stop() for c in consumers))
            for eid in reversed(self._started):
                if eid in self.drivers:
                    await self.drivers[eid].stop()
                    for route in self.routes.values():  # broker queues: declared again at start
                        if route.driver is self.drivers[eid] and route.local is None:
                            route.declared = False
            self._started = []
        finally:
            self.state = "stopped"
            if self._trimmer is not None:
                self._trimmer.stop()
                self._trimmer = None
            self.recorder.trim()
            self._stopping.set_result(None)
            self._stopping = None
        self._notify_settled()
        timed_out = [c for c, clean in zip(consumers, results, strict=True) if not clean]
        if timed_out:
            raise StopTimeout([c.id for c in timed_out], [c.entry.lifecycle.stop_timeout for c in timed_out],
                              {c.id: list(getattr(c, "unwound", [])) for c in timed_out})

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- publishing -----------------------------------------------------------------------------
    def _route(self, queue_id: str) -> Route:
        route = self.routes.get(queue_id)
        if route is None:
            known = ", ".join(self.routes) or "none"
            raise QueueNotFound(f"queue not found: {queue_id} (declared queues: {known})")
        return route

    def _message(self, body: Any, headers: dict[str, Any] | None, now: float, named: bool = False,
                 id: str | None = None) -> Message:
        """A new message published at ``now`` (the loop's clock, read once by the caller
        for the message and its ``publish`` row); its id string is made now if ``named``,
        else when first asked for. A caller-set ``id`` is kept (Wippy keeps it)."""
        ids = self._ids
        seq = ids._next
        ids._next = seq + 1
        if id:
            if not isinstance(id, str):
                ids._next = seq
                raise TypeError(f"message id must be a string, got {id!r}")
            self._foreign[id] = seq
            self.recorder.intern_foreign(seq, id)
            named = False
        # unix_time(), without its call: this runs for every message
        ts = now + self._unix_shift if self._virtual else _unix_now()
        if type(body) is not str:
            body = encode_body(body)
        return Message(
            id or (ids.name(seq) if named else None), seq, body,
            {"timestamp": int(ts), **headers} if headers else None, 1, ids.prefix, ts,
        )

    def _unuse(self, msg: Message) -> None:
        """A message refused before it was published: its seq (and a caller-set id) are free again."""
        self._ids._next -= 1
        if self.recorder.foreign_ids.pop(msg.seq, None) is not None:
            self._foreign.pop(msg.id, None)

    def _forget_foreign(self, ids: list[str]) -> None:
        """A bounded recorder dropped every row of these foreign messages: forget their seq."""
        for mid in ids:
            self._foreign.pop(mid, None)

    def _intern(self, msg: Message) -> None:
        """Give a message fetched from a broker its local ``seq``: the one it was published
        with if this runtime published it (its id is our prefix + seq), else a new one,
        the same every time the same wire id comes back (a nack's copy, a redelivery)."""
        if msg.seq >= 0:
            return
        mid = msg.id
        prefix = self._ids.prefix
        if len(mid) == len(prefix) + 12 and mid.startswith(prefix):
            try:
                msg.seq = int(mid[len(prefix):], 16)
                return
            except ValueError:
                pass
        seq = self._foreign.get(mid)
        if seq is None:
            seq = self._foreign[mid] = self._ids._next
            self._ids._next = seq + 1
            self.recorder.intern_foreign(seq, mid)
        msg.seq = seq

    def _broker_route(self, route: Route) -> Route:
        if not route.declared:
            raise RuntimeStateError(
                f"queue {route.queue_id} is on driver {route.driver.id} ({route.driver.kind}), which connects "
                "at start: await rt.start() before publishing to it"
            )
        return route

    async def publish(self, queue_id: str, body: Any, headers: dict[str, Any] | None = None,
                      id: str | None = None) -> str:
        """Append a message; wait while the queue is full. Returns the message id.

        ``str``/``bytes`` bodies travel unchanged; anything else is JSON-encoded once. On a
        broker it returns once the broker has the message (publisher confirms). ``id``:
        the publisher's own message id, kept end to end (empty: a fresh one).
        """
        route = self.routes.get(queue_id) or self._route(queue_id)
        if self._loop is None:
            self._bind(asyncio.get_running_loop())
        now = self._now()
        msg = self._message(body, headers, now, named=True, id=id)  # publish returns the id: make it now
        local = route.local
        if local is None:  # a broker: the driver publishes (and retries while full) itself
            await self._broker_route(route).driver.publish(queue_id, [msg])
            now = self._now()
        elif not local.put(msg):
            self.recorder.publish_wait(now, route.qi, msg.seq, len(route.ready))
            try:
                while not local.put(msg):
                    await local.wait_room()
            except asyncio.CancelledError:
                self.recorder.publish_cancelled(self._now(), route.qi, msg.seq, len(route.ready))
                raise
            now = self._now()
        # recorded before anyone is woken, so the message's story starts with its publish
        self._w(route.publish_pk(now, msg.seq, 1, len(route.ready), -1, -1, -1))
        if local is not None:
            local.wake()
        return msg._id  # type: ignore[return-value]  # (named above: the id property would only return it)

    async def publish_many(self, queue_id: str, bodies: Iterable[Any], headers: dict[str, Any] | None = None) -> list[str]:
        """Publish several messages in one call, in order; waits while the queue is full,
        as :meth:`publish` does (a broker gets them as one batch). One ``publish`` row
        each. Returns their ids."""
        route = self.routes.get(queue_id) or self._route(queue_id)
        if route.local is not None:
            return [await self.publish(queue_id, b, headers) for b in bodies]
        if self._loop is None:
            self._bind(asyncio.get_running_loop())
        now = self._now()
        msgs = [self._message(b, headers, now, named=True) for b in bodies]
        await self._broker_route(route).driver.publish(queue_id, msgs)
        now = self._now()
        for m in msgs:
            self._w(route.publish_pk(now, m.seq, 1, len(route.ready), -1, -1, -1))
        return [m.id for m in msgs]

    async def update_consumer(self, consumer_id: str, *, concurrency: int | None = None,
                              prefetch: int | None = None) -> None:
        """Change a running (or stopped) consumer's ``concurrency`` and/or ``prefetch``, as
        Wippy's consumer manager applies an update. Within the entry's limits (1..1000,
        1..10000). See :meth:`wqnb.consumer.Consumer.update` for what happens to running
        handlers and buffered messages."""
        from .registry import CONCURRENCY_MAX, PREFETCH_MAX

        for name, value, top in (("concurrency", concurrency, CONCURRENCY_MAX), ("prefetch", prefetch, PREFETCH_MAX)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top):
                raise ValueError(f"update_consumer({consumer_id!r}): {name} must be a whole number from 1 to {top}, "
                                 f"got {value!r}")
        consumer = self.consumers.get(consumer_id)
        if consumer is None:
            known = ", ".join(self.consumers) or "none started"
            raise ConfigError(f"no such consumer: {consumer_id} (consumers: {known})")
        await consumer.update(concurrency=concurrency, prefetch=prefetch)

    def publish_nowait(self, queue_id: str, body: Any, headers: dict[str, Any] | None = None,
                       id: str | None = None) -> str:
        """Append a message now or raise :class:`~wqnb.errors.QueueFull` (for sync code on the loop)."""
        return self._publish_nowait(queue_id, body, headers, id).id

    def _publish_nowait(self, queue_id: str, body: Any, headers: dict[str, Any] | None = None,
                        id: str | None = None) -> Message:
        """``publish_nowait``, returning the message (whose id is only formatted if asked for)."""
        route = self.routes.get(queue_id) or self._route(queue_id)
        if self._loop is None:
            try:
                self._bind(asyncio.get_running_loop())
            except RuntimeError:
                raise RuntimeStateError(
                    "publish_nowait needs the runtime's event loop; call it from code running on "
                    "that loop (a notebook cell, a widget callback), or use rt.sync()"
                ) from None
        now = self._now()
        msg = self._message(body, headers, now, id=id)
        local = route.local
        if local is None:
            try:
                self._broker_route(route).driver.publish_nowait(queue_id, msg)  # a broker: its outbox
            except BaseException:
                self._unuse(msg)
                raise
        elif not local.put(msg):
            self._unuse(msg)
            raise QueueFull(
                f"queue is full: {queue_id} holds max_length={self.recorder.queues[queue_id].max_length} messages"
            )
        self._w(route.publish_pk(now, msg.seq, 1, len(route.ready), -1, -1, -1))
        if local is not None:
            local.wake()
        return msg

    # -- waiting for quiet -------------------------------------------------------------------------
    def _drained(self) -> bool:
        for c in self.consumers.values():
            if c.running and (not c.idle() or c.route.depth() > 0):
                return False
        return True

    def _notify_settled(self) -> None:
        waiters = self._drain_waiters
        if waiters and self._drained():
            waiters = waiters[:]
            self._drain_waiters.clear()  # in place: consumers hold this list (ConsumerHost)
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the queues that running consumers read are empty and nothing is unsettled.

        A queue nobody consumes (an unread dead-letter queue) is not waited for.
        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        try:
            await self._drain(loop, timeout)
        except TimeoutError:
            raise TimeoutError(self._drain_timeout_text(timeout)) from None
        except (asyncio.CancelledError, KeyboardInterrupt):
            # An interrupted notebook cell: the runtime lives on the kernel's loop and keeps
            # consuming (that is what a live runtime does); say so, and how to stop it.
            if self.state == "running":
                busy = ", ".join(f"{c.id} ({c.unsettled} unsettled, {c.route.depth()} ready)"
                                 for c in self.consumers.values() if c.running)
                _log.warning("drain() was interrupted; the runtime is still running (%s). "
                             "Run `await rt.stop()` to stop it: nothing is lost.", busy or "no consumers")
            raise

    def _drain_timeout_text(self, timeout: float | None) -> str:
        """What ``drain`` was still waiting for: unsettled counts, and the messages that go
        round and round (a poison message without dead_letter), with attempts and errors."""
        parts = []
        for c in self.consumers.values():
            if not c.running:
                continue
            if c.unsettled or c.route.depth():
                parts.append(f"{c.id}: {c.route.depth()} ready in {c.route.queue_id}, {c.unsettled} unsettled")
            cycling = sorted(c.cycling.items(), key=lambda kv: -kv[1][0])
            if cycling:
                shown = "; ".join(f"{mid} (attempt {a}, last error: {e})" for mid, (a, e) in cycling[:5])
                more = f" and {len(cycling) - 5} more" if len(cycling) > 5 else ""
                parts.append(f"{c.id}: messages still cycling: {shown}{more}")
        detail = ". ".join(parts) if parts else "the broker still reports messages"
        return (f"drain timed out after {timeout:g} s: {detail}. A message whose handler always fails "
                "goes round forever unless its queue has a dead_letter {queue, max_attempts}")

    async def _drain(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        async with asyncio.timeout(timeout):
            while True:
                while not self._drained():
                    fut = loop.create_future()
                    self._drain_waiters.append(fut)
                    await fut
                # Locally quiet again after the broker answered: a message taken while we
                # asked (a nack's copy fetched at once) is unsettled here, not drained.
                if await self._broker_drained() and self._drained():
                    return
                await asyncio.sleep(BROKER_DRAIN_POLL)

    async def _broker_drained(self) -> bool:
        """Locally quiet: ask each broker that its consumed queues are empty there too
        (our cached depth may lag, and other processes may still be publishing)."""
        for c in self.consumers.values():
            route = c.route
            if c.running and route.local is None:
                info = await route.driver.info(route.queue_id)
                if info.get("ready", 0) or info.get("in_flight", 0) > c.unsettled:
                    return False
        return True

    # -- reading --------------------------------------------------------------------------------------
    def queue_info(self, queue_id: str) -> dict[str, Any]:
        """Wippy's ``queue.info``: ``message_count`` and ``ready``, plus wqnb's ``unsettled``.

        Synchronous (Lua's ``queue.info`` calls it): on a broker ``ready`` is the driver's
        cached figure; ``await rt.info(queue_id)`` asks the broker."""
        route = self._route(queue_id)
        n = route.depth()
        info: dict[str, Any] = {"message_count": n, "ready": n}
        return self._with_local_counts(route, info)

    async def info(self, queue_id: str) -> dict[str, Any]:
        """``queue_info`` asked of the driver (the broker's own counts)."""
        route = self._route(queue_id)
        if not route.declared:
            return self.queue_info(queue_id)
        return self._with_local_counts(route, dict(await route.driver.info(queue_id)))

    def _with_local_counts(self, route: Route, info: dict[str, Any]) -> dict[str, Any]:
        info["unsettled"] = sum(c.unsettled for c in self.consumers.values() if c.route is route)
        info["consumers"] = sum(1 for c in self.consumers.values() if c.route is route and c.running)
        return info

    def unix_time(self) -> float:
        """Unix time on the runtime's clock (virtual runs start at 2026-01-01T00:00Z)."""
        if self._loop is None or not self._virtual:
            return time.time()
        return self._now() + self._unix_shift

    @property
    def timeline(self) -> Timeline:
        """Every event so far, as a :class:`~wqnb.timeline.Timeline` (built on each access)."""
        return self.recorder.timeline()

    def sync(self) -> SyncRuntime:
        """A blocking facade running this runtime on a private loop in a thread."""
        return SyncRuntime(self)

    def __repr__(self) -> str:
        return (
            f"<Runtime {self.state}: {len(self.drivers)} drivers, {len(self.routes)} queues, "
            f"{len(self.registry.consumers)} consumers>"
        )


def _shifted(now: Callable[[], float], shift: float) -> Callable[[], float]:
    def shifted() -> float:
        return now() + shift
    return shifted


def _now_unbound() -> float:
    raise RuntimeStateError("runtime not bound to a loop")


Runtime._now = staticmethod(_now_unbound)  # type: ignore[assignment]


def _check_lua(spec: FunctionSpec) -> None:
    try:
        from .handlers.lua import check_lua_function
    except ImportError:
        return  # reported at start() by the consumer that needs it
    check_lua_function(spec)


#: Broker drivers, imported on first use (each module's ``DRIVER`` is its class).
BROKER_MODULES = {
    "queue.driver.amqp": "wqnb.drivers.amqp",
    "queue.driver.redis": "wqnb.drivers.redis",
    "queue.driver.sqs": "wqnb.drivers.sqs",
}


def _load_driver_module(entry: DriverEntry) -> None:
    import importlib

    module_name = BROKER_MODULES[entry.kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        extra = entry.kind.rpartition(".")[2]
        raise ConfigError(
            f"{entry.kind} is not available here: pip install 'wqnb[{extra}]' ({e})",
            file=entry.file, entry=entry.id, field="kind",
        ) from None
    driver = getattr(module, "DRIVER", None)
    if driver is not None:
        DRIVERS[entry.kind] = driver
    if entry.kind not in DRIVERS:
        raise ConfigError(f"{entry.kind} is not implemented yet", file=entry.file, entry=entry.id, field="kind")


class SyncRuntime:
    """Drive a :class:`Runtime` from code that does not use asyncio.

    The runtime runs on a private event loop in a daemon thread; each method submits a
    coroutine there and waits for it. It works in scripts and in notebook cells alike::

        with wqnb.Runtime.from_yaml("app/").sync() as app:
            app.publish("app.queue:tasks", {"id": 1})
            app.drain()
        app.timeline.df
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _check_open(self) -> None:
        if self._loop is None:
            raise RuntimeStateError("SyncRuntime is not open: use 'with rt.sync() as app:' or app.open()")

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result()

    def open(self) -> SyncRuntime:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="wqnb-runtime", daemon=True)
            self._thread.start()
        try:
            self._call(self.runtime.start())
        except BaseException:
            # (a failed start, e.g. an unregistered function, must not leave the thread behind)
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            self._call(self.runtime.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join()
            self._thread = None
            self._loop.close()
            self._loop = None

    def __enter__(self) -> SyncRuntime:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, queue_id: str, body: Any, headers: dict[str, Any] | None = None,
                id: str | None = None) -> str:
        self._check_open()
        return self._call(self.runtime.publish(queue_id, body, headers, id))

    def drain(self, timeout: float | None = None) -> None:
        self._check_open()
        self._call(self.runtime.drain(timeout))

    def stop(self) -> None:
        self._check_open()
        self._call(self.runtime.stop())

    @property
    def timeline(self) -> Timeline:
        return self.runtime.timeline
