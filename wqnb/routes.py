"""Where a queue lives, and what a consumer needs from the runtime that owns it.

A :class:`Route` is built once per ``queue.queue`` entry by the runtime and shared by its
publishers and consumers: the driver, the queue's index in the recorder's name table, and
the in-process queue itself when the driver has one (``driver.local``), detected once.
:class:`ConsumerHost` is the small, typed interface a consumer calls back into its runtime
with, so that the consumer never reaches into the runtime's privates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .drivers.base import Driver, LocalQueue, QueueSpec
from .timeline import EV_PUBLISH, Packer, Recorder

if TYPE_CHECKING:
    from .message import Message

__all__ = ["Route", "ConsumerHost"]


class Route:
    """One declared queue: its driver, its spec, and its recorder index.

    ``len(route.ready)`` is the queue's depth, read for every recorded event: the memory
    driver's deque itself, or a view over a broker driver's cached figure.
    """

    __slots__ = ("spec", "queue_id", "driver", "qi", "local", "ready", "dead_letter", "max_attempts",
                 "publish_pk", "declared")

    def __init__(self, spec: QueueSpec, driver: Driver, qi: int) -> None:
        self.spec = spec
        self.queue_id = spec.id
        self.driver = driver
        self.qi = qi
        self.local: LocalQueue | None = None
        self.ready: Sized = ()  # until declared (bind)
        self.dead_letter: Route | None = None
        self.max_attempts: int | None = spec.max_attempts
        self.publish_pk: Packer = Recorder.packer(EV_PUBLISH, qi)
        self.declared = False

    def bind(self) -> None:
        """After ``declare``: pick up the in-process queue, if the driver has one."""
        self.local = self.driver.local(self.queue_id)
        self.ready = self.local.ready if self.local is not None else self.driver.ready_view(self.queue_id)
        self.declared = True

    def depth(self) -> int:
        return len(self.ready)

    def __repr__(self) -> str:
        return f"<Route {self.queue_id} on {self.driver.id}{' (local)' if self.local is not None else ''}>"


@dataclass(frozen=True)
class ConsumerHost:
    """What a consumer may ask of the runtime that runs it."""

    recorder: Recorder
    #: Call when a delivery settles with nothing left unsettled (wakes ``drain()``).
    settled: Callable[[], None]
    #: Non-empty while someone waits in ``drain()``, so the hot path can skip ``settled``
    #: with a truth test of its own (the runtime empties this list in place, never swaps it).
    drain_waiters: Sized
    #: Unix time on the runtime's clock (virtual runs: 2026-01-01 + virtual time).
    unix_time: Callable[[], float]
    #: Give a message fetched from a broker its local ``seq`` (by its wire id).
    intern: Callable[[Message], None]
    #: The runtime's clock for the loop it is bound to now (``clock()()`` reads it): the
    #: loop's own, or shifted when a runtime runs on a second virtual loop.
    clock: Callable[[], Callable[[], float]]
    #: ``await message.publish(queue, body, headers)`` from a handler: the runtime checks
    #: the consumer's ``lifecycle.security`` (wqnb.security), then publishes.
    publish_from_handler: Callable[..., Awaitable[str]] | None = None
