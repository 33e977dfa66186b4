"""Messages as they travel, and deliveries as a handler sees them.

A :class:`Message` is what a queue holds: an id, a body that is already text or bytes
(DESIGN §3: anything else is JSON-encoded once, on publish), headers, and the number of
the delivery it will get next (``attempt``, 1 for a fresh message).

A :class:`Delivery` is one attempt at handling a message by one consumer. It can be
settled once, by the handler (``await delivery.ack()``) or by the consumer after the
handler returns or raises; a second settle raises :class:`~wqnb.errors.AlreadySettled`.
After the handler returns the delivery is *released* and every method raises
:class:`~wqnb.errors.MessageReleased`, as Wippy's ``queue.Message`` does.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from .errors import AlreadySettled, MessageReleased, RuntimeStateError

__all__ = ["Delivery", "Message", "IdSource", "encode_body"]


def encode_body(body: Any) -> str | bytes:
    """``str`` and ``bytes`` travel unchanged; any other body is JSON-encoded once.

    NaN and infinities are refused (``ValueError``): Python's json would write ``NaN``,
    which is not JSON, and every JSON reader downstream (Lua's ``json.decode``, Go's)
    would fail on the message instead of the publisher getting the error."""
    if isinstance(body, (str, bytes)):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        if "not JSON compliant" not in str(e):
            raise
        raise ValueError(
            "message body holds NaN or Infinity, which JSON cannot express: publish None (null), "
            "a string, or a finite number instead"
        ) from None


_MISSING = object()

_LAST_TWO = tuple(f"{i:02x}" for i in range(256))


class IdSource:
    """Message ids shaped like UUID 4: 74 random bits per source, then a 48-bit counter.

    ``uuid.uuid4()`` costs about 2 µs, as much as the rest of a message's trip through
    the memory driver; a random prefix plus a counter costs under 0.1 µs (see
    :meth:`name`), stays unique across runtimes (74 random bits) and sorts in publish
    order within one.
    """

    __slots__ = ("prefix", "_next", "_block", "_head")

    def __init__(self, rng: random.Random | None = None) -> None:
        bits = (rng or random.SystemRandom()).getrandbits(80)
        h = f"{bits:020x}"
        variant = "89ab"[int(h[12], 16) & 3]
        self.prefix = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-"
        self._next = 0
        self._block = -1  # see name()
        self._head = ""

    def name(self, seq: int) -> str:
        """The id of message ``seq``: ``prefix`` + ``seq`` as 12 hex digits.

        The same string as ``f"{prefix}{seq:012x}"``, in a third of the time: the first
        ten digits change once every 256 messages, so they are formatted then and kept,
        and the last two come from a table. (``publish`` returns an id for every message.)
        """
        block = seq >> 8
        if block != self._block:
            self._head = f"{self.prefix}{block:010x}"
            self._block = block
        return self._head + _LAST_TWO[seq & 255]


class Message:
    """A message in a queue. ``seq`` is the runtime-local number the recorder stores.

    ``id`` and ``headers`` are built on first use: a runtime gives ``id=None`` with the
    id's ``prefix`` (the id is ``prefix`` + ``seq`` as 12 hex digits) and the publish
    ``timestamp``, so a message nobody asks about costs neither a string nor a dict.
    """

    __slots__ = ("_id", "seq", "body", "_headers", "attempt", "_prefix", "_ts", "nacked_at", "spins",
                 "receipt", "redelivered")

    def __init__(
        self,
        id: str | None,
        seq: int,
        body: str | bytes,
        headers: dict[str, Any] | None = None,
        attempt: int = 1,
        prefix: str = "",
        timestamp: float | None = None,
    ) -> None:
        self._id = id
        self.seq = seq
        self.body = body
        self._headers = headers
        self.attempt = attempt
        self._prefix = prefix
        self._ts = timestamp
        # nacked_at / spins (the livelock guard's count of nacks at one instant) are set by
        # the first nack; until then reading them raises AttributeError.
        # receipt / redelivered are set by a broker driver's fetch (its delivery tag,
        # stream id or receipt handle, and whether the broker delivered it before); an
        # in-process message has neither: read them with getattr(m, "receipt", None).

    @property
    def id(self) -> str:
        i = self._id
        if i is None:
            i = self._id = f"{self._prefix}{self.seq:012x}"
        return i

    @property
    def headers(self) -> dict[str, Any]:
        h = self._headers
        if h is None:
            ts = self._ts if self._ts is not None else time.time()
            h = self._headers = {"timestamp": int(ts)}
        return h

    @headers.setter
    def headers(self, value: dict[str, Any]) -> None:
        self._headers = value

    def next_attempt(self) -> Message:
        """The copy a nack (or an interrupted handler) puts back: same id, body and
        headers (a copy of the dict), ``attempt + 1``. The handler that held this one
        keeps its own view (Wippy's clone-on-nack); a broker driver finds the original's
        receipt on the copy, to settle the original."""
        h = self._headers
        c = Message(self._id, self.seq, self.body, dict(h) if h is not None else None, self.attempt + 1,
                    self._prefix, self._ts)
        for slot in ("receipt", "redelivered", "nacked_at", "spins"):
            v = getattr(self, slot, _MISSING)
            if v is not _MISSING:
                setattr(c, slot, v)
        return c

    def __repr__(self) -> str:
        return f"Message(id={self.id!r}, attempt={self.attempt}, body={self.body!r:.60})"


class Delivery:
    """One attempt at handling a message: what a handler may ask for.

    Settling is single-shot. ``await delivery.ack()`` / ``await delivery.nack(reason)``
    settle early (before the handler returns); the consumer then skips its own settle.
    """

    __slots__ = ("message", "queue", "consumer", "worker", "_settle", "settled", "released")

    def __init__(
        self, message: Message, queue: str, consumer: str, worker: int, settle: Any
    ) -> None:
        self.message = message
        self.queue = queue
        self.consumer = consumer
        self.worker = worker
        self._settle = settle  # the consumer: has async _ack(delivery) / _nack(delivery, err)
        self.settled: str | None = None  # "ack" or "nack" once settled
        self.released = False

    # -- what the handler reads -------------------------------------------------------
    @property
    def id(self) -> str:
        self._check_live()
        return self.message.id

    @property
    def body(self) -> str | bytes:
        self._check_live()
        return self.message.body

    @property
    def headers(self) -> dict[str, Any]:
        self._check_live()
        return self.message.headers

    def header(self, key: str, default: Any = None) -> Any:
        self._check_live()
        return self.message.headers.get(key, default)

    @property
    def attempt(self) -> int:
        """Which delivery this is: 1 for the first, 2 after one nack, ..."""
        self._check_live()
        return self.message.attempt

    # -- publishing -------------------------------------------------------------------
    async def publish(self, queue: str, body: Any, headers: dict[str, Any] | None = None) -> str:
        """Publish as this delivery's consumer; returns the message id.

        Checked as Wippy's Lua ``queue.publish`` is, against the consumer's
        ``lifecycle.security`` (and strict mode): raises
        :class:`~wqnb.errors.PermissionDenied` with Wippy's text when refused. If the
        handler lets it propagate, the delivery is nacked with that text as its error."""
        self._check_live()
        publish = getattr(getattr(self._settle, "host", None), "publish_from_handler", None)
        if publish is None:
            raise RuntimeStateError("this delivery has no runtime to publish through")
        return await publish(self, queue, body, headers)

    # -- settling -------------------------------------------------------------------
    async def ack(self) -> None:
        """Acknowledge now: the message is done, whatever the handler does next."""
        self._claim("ack")
        await self._settle._ack(self)

    async def nack(self, reason: str = "nacked by handler") -> None:
        """Reject now: requeue (or dead-letter) the message, whatever the handler does next."""
        self._claim("nack")
        await self._settle._nack(self, reason)

    def _claim(self, how: str) -> None:
        self._check_live()
        if self.settled is not None:
            raise AlreadySettled("queue.Message already settled")
        self.settled = how

    def _check_live(self) -> None:
        if self.released:
            raise MessageReleased("queue.Message released")

    def __repr__(self) -> str:
        if self.released:
            return "queue.Message{released}"
        return f"queue.Message{{id={self.message.id}}}"
