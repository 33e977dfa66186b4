"""The one contract between the consumer and a handler, whatever language it is in.

A handler is an async callable taking a :class:`~wqnb.message.Delivery`:

* it returns normally → the consumer acks the delivery;
* it raises → the consumer nacks it, and the timeline's ``error`` column holds ``str(exc)``
  (a Lua handler's ``return nil, err`` raises :class:`~wqnb.errors.HandlerError(err)`);
* it may settle early with ``await delivery.ack()`` / ``await delivery.nack(reason)``;
  the consumer then leaves the delivery alone (settle is single-shot).
* optionally, ``handler.body_fn`` is a callable taking the body alone, for a handler that
  never uses its Delivery; it returns an awaitable, or None when it is already done. The
  consumer then calls it and makes no Delivery (the per-message path of a plain
  ``async def fn(body)``, and of a Lua handler without the ``queue`` module).
* optionally, ``handler.begin(delivery)`` runs the handler until it first waits, in a plain
  call: it returns None when the handler ended well, raises when it failed, or returns an
  awaitable that finishes the work. The consumer prefers it to ``await handler(delivery)``
  (a Lua handler that never waits then costs no coroutine).

Handlers are built once per function entry, before anything runs, from a
:class:`FunctionSpec` and the :class:`HandlerServices` the runtime lends them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..message import Delivery

__all__ = ["FunctionSpec", "Handler", "HandlerServices"]


class Handler(Protocol):
    async def __call__(self, delivery: Delivery) -> None: ...


@dataclass(frozen=True)
class FunctionSpec:
    """A ``function.lua`` or ``function.python`` entry, parsed.

    ``source`` is the code (Lua) or ``module:attr`` (Python); ``source_file`` is the file
    the code came from (``file://`` sources, resolved against the YAML file), or ``None``
    for inline code, and is what error messages name.
    """

    id: str
    kind: str
    source: str
    source_file: Path | None = None
    yaml_file: Path | None = None
    method: str | None = None
    modules: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> str | None:
        """The YAML file the entry is in, for error messages (None for YAML text)."""
        return str(self.yaml_file) if self.yaml_file else None

    @property
    def chunk_name(self) -> str:
        """The name Lua error messages start with: the file name, or the entry id."""
        return self.source_file.name if self.source_file else self.id


@dataclass
class HandlerServices:
    """What the runtime lends handlers: Lua's ``queue`` and ``time`` modules use these.

    ``publish(queue_id, body, headers)`` waits while the queue is full and returns the
    message id; it raises :class:`~wqnb.errors.QueueNotFound` for an unknown queue.
    ``queue_info(queue_id)`` returns ``{"message_count": n, "ready": n, ...}``.
    ``now()`` is Unix time in seconds on the runtime's clock (virtual time in ``simulate``).
    ``sleep(seconds)`` suspends only the caller, on the same clock.
    ``publish_denied(delivery, queue_id)`` is the security check of a publish made from a
    handler (None: allowed; else Wippy's text, see :mod:`wqnb.security`).
    """

    publish: Callable[[str, Any, dict[str, Any] | None], Awaitable[str]]
    queue_info: Callable[[str], dict[str, Any]]
    now: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    publish_denied: Callable[[Delivery | None, str | None], str | None] | None = None
    #: Seconds on the runtime's clock since its timeline began (the timeline's ``t``), for
    #: Lua's ``os.clock()``; None: counted from when the handler was built.
    clock: Callable[[], float] | None = None
