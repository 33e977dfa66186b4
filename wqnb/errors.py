"""Every error wqnb raises on purpose.

    WqnbError
    ├── ConfigError          a YAML file, entry or field is wrong (names all three)
    │   └── CycleError       ``depends_on`` / references form a cycle (names the entries)
    ├── QueueFull            ``publish_nowait`` on a full queue (like ``asyncio.QueueFull``)
    ├── QueueNotFound        publish/info on a queue id the runtime does not know
    ├── AlreadySettled       a second ack/nack of one delivery ("queue.Message already settled")
    ├── MessageReleased      settle/inspect a delivery after its handler returned
    ├── HandlerError         a handler reported failure without raising (Lua ``return nil, err``)
    ├── PermissionDenied     a handler's publish refused by its security policies (Wippy's texts)
    ├── StopTimeout          handlers still running when ``stop_timeout`` ran out (names consumers)
    ├── RuntimeStateError    lifecycle misuse (publish before start on a stopped loop, ...)
    └── VirtualTimeDeadlock  virtual time: nothing is scheduled, so nothing can ever happen

Texts copied from Wippy keep Wippy's wording (``concurrency 1001 exceeds maximum 1000``)
so that people moving between the two recognise them.
"""

from __future__ import annotations

__all__ = [
    "AlreadySettled",
    "ConfigError",
    "CycleError",
    "DriverUnavailable",
    "HandlerError",
    "MessageReleased",
    "PermissionDenied",
    "PublishError",
    "QueueFull",
    "QueueNotFound",
    "RuntimeStateError",
    "StopTimeout",
    "VirtualTimeDeadlock",
    "WqnbError",
]


class WqnbError(Exception):
    """Base class of every error wqnb raises on purpose."""


class ConfigError(WqnbError, ValueError):
    """Bad configuration. The text names the file, the entry and the field where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        entry: str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.entry = entry
        self.field = field
        where = []
        if file:
            where.append(str(file))
        if entry:
            where.append(f"entry {entry}")
        if field:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class CycleError(ConfigError):
    """Entries that depend on each other in a circle; no start order exists."""


class QueueFull(WqnbError):
    """The queue is at ``max_length`` and the caller asked not to wait."""


class QueueNotFound(WqnbError, KeyError):
    """No queue with that registry id is declared ("queue not found")."""

    def __str__(self) -> str:  # KeyError would quote the text
        return str(self.args[0]) if self.args else "queue not found"


class AlreadySettled(WqnbError):
    """A delivery can be acked or nacked once; this was the second time."""


class MessageReleased(WqnbError):
    """The delivery's handler already returned; its message object is no longer live."""


class HandlerError(WqnbError):
    """A handler reported failure by value (Lua's ``return nil, err``), not by raising."""


class PermissionDenied(WqnbError):
    """A publish from a handler that its consumer's ``lifecycle.security`` (or strict mode)
    does not allow: ``queue publishing not allowed`` or ``not allowed to publish to queue:
    <id>``. Raised by ``await message.publish(...)``; a Lua handler gets ``nil, err``."""


class StopTimeout(WqnbError, TimeoutError):
    """Handlers were still running when ``stop_timeout`` ran out; they were requeued."""

    def __init__(self, consumers: list[str], timeouts: list[float],
                 unwound: dict[str, list[int]] | None = None) -> None:
        self.consumers = consumers
        #: consumer -> workers whose handler had not unwound a while after its cancel
        self.unwound = {c: w for c, w in (unwound or {}).items() if w}
        parts = [f"{c} (stop_timeout {t:g}s)" for c, t in zip(consumers, timeouts, strict=True)]
        stuck = "".join(
            f"; {c} worker{'s' if len(w) > 1 else ''} {', '.join(map(str, w))} did not unwind after the cancel"
            for c, w in self.unwound.items()
        )
        super().__init__(
            "consumer stop timed out: " + ", ".join(parts)
            + "; the interrupted messages were requeued at the head of their queues" + stuck
        )


class RuntimeStateError(WqnbError, RuntimeError):
    """A call that the runtime's current state does not allow."""


class VirtualTimeDeadlock(WqnbError, RuntimeError):
    """On virtual time, every task waits and no timer is scheduled: time cannot move."""


class DriverUnavailable(WqnbError, ConnectionError):
    """A broker could not be reached (at start, or past the reconnect budget). The text
    names the driver entry and its address, with any password hidden."""


class PublishError(WqnbError):
    """A publish that did not reach the broker: refused for good, or the broker stayed
    unreachable past the driver's timeout. Never a silent drop: the caller is told."""
