"""The event recorder and the :class:`Timeline` that notebooks, plots and widgets read.

Recording is on the per-message path, so it is kept cheap: each event is packed with
``struct`` straight into one ``bytearray`` (47 bytes a row, no per-event Python object for
the garbage collector to track), which numpy reads back as a structured array without
parsing; a pandas DataFrame is built only when someone asks for it. (A list of tuples is
as fast to append to, but costs ~180 bytes an event, and packing it into numpy later
costs more than the append itself.)

Row layout (see DESIGN §5): a 12-byte head that a writer packs once per kind of event,
then the per-event part::

    head: (event, flags, queue, consumer, worker, error)      flags bit 0: redelivered
    tail: (t, seq, attempt, depth, buffered, busy, unsettled)

``t`` is the loop's clock (real or virtual); the DataFrame shows it as seconds since the
runtime started. ``queue``, ``consumer`` and ``error`` are small integers into name tables;
``-1`` marks "not this kind of event" (a publish row has no consumer, worker or consumer gauges).
Writers never see this layout: they call the typed methods of :class:`Recorder`
(``rec.nack(...)``), or, on a per-message path, a *packer* made once by
:meth:`Recorder.packer`, which takes only what changes from event to event.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from .retention import Dropped

__all__ = [
    "EVENTS",
    "ROW",
    "ROW_HEAD",
    "Packer",
    "Recorder",
    "Timeline",
    "EV_PUBLISH",
    "EV_PUBLISH_WAIT",
    "EV_DELIVER",
    "EV_START",
    "EV_ACK",
    "EV_NACK",
    "EV_REQUEUE",
    "EV_DEAD_LETTER",
    "EV_PUBLISH_CANCELLED",
]

EVENTS = ("publish", "publish_wait", "deliver", "start", "ack", "nack", "requeue", "dead_letter",
          "publish_cancelled")
(
    EV_PUBLISH,
    EV_PUBLISH_WAIT,
    EV_DELIVER,
    EV_START,
    EV_ACK,
    EV_NACK,
    EV_REQUEUE,
    EV_DEAD_LETTER,
    EV_PUBLISH_CANCELLED,  # a publish that waited on a full queue and was cancelled: never stored
) = range(len(EVENTS))

ROW_DTYPE = np.dtype(
    [
        ("event", "u1"),
        ("flags", "u1"),
        ("queue", "i2"),
        ("consumer", "i2"),
        ("worker", "i2"),
        ("error", "i4"),
        ("t", "f8"),
        ("seq", "i8"),
        ("attempt", "i4"),
        ("depth", "i4"),
        ("buffered", "i4"),
        ("busy", "i4"),
        ("unsettled", "i4"),
    ]
)
ROW_HEAD = struct.Struct("<BBhhhi")  # (event, flags, queue, consumer, worker, error)
ROW = struct.Struct(f"<{ROW_HEAD.size}sdqiiiii")  # head bytes + the per-event part
assert ROW.size == ROW_DTYPE.itemsize == 48
FLAG_REDELIVERED = 1
#: A packer: ``pack(t, seq, attempt, depth, buffered, busy, unsettled) -> bytes``.
Packer = Callable[[float, int, int, int, int, int, int], bytes]
GAUGES = ("depth", "buffered", "busy", "unsettled")


#: "00".."ff" as 256 two-byte cells, and the shifts that cut a 48-bit seq into 6 bytes
_HEX_PAIRS = np.frombuffer(b"".join(b"%02x" % i for i in range(256)), dtype=np.uint16)
_BYTE_SHIFTS = np.arange(40, -1, -8, dtype=np.int64)


def _id_dtype(prefix: str, n: int, foreign: dict[int, str] | None = None, base: int = 0) -> pd.CategoricalDtype:
    """The categories of ``msg_id``: ``prefix`` + ``seq`` as 12 hex digits, for seq
    ``base``..``base + n - 1`` (``base`` > 0: a timeline whose first messages were dropped).

    A long run has as many ids as messages, and formatting them one by one (plus pandas
    checking 100,000 fresh strings for duplicates) cost as much as the rest of the
    DataFrame. Where pandas stores strings in Arrow (pandas 3 with pyarrow), the digits
    are computed with numpy and handed to Arrow as one buffer; the ids are distinct by
    construction, so the duplicate check is skipped. Elsewhere: the plain loop.
    Messages seen through a broker but published elsewhere (``foreign``: seq → wire id)
    take the plain loop too (a broker run is not on the per-message budget of a simulation).
    """
    if foreign:
        return pd.CategoricalDtype([foreign.get(s) or f"{prefix}{s:012x}" for s in range(base, base + n)])
    str_dtype = pd.Index(["x"]).dtype  # the string dtype this pandas infers for a list of str
    head = prefix.encode()
    if n and getattr(str_dtype, "storage", None) == "pyarrow" and base + n < 1 << 48:
        import pyarrow as pa

        width = len(head) + 12
        digits = np.empty((n, width), dtype=np.uint8)
        digits[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
        digits[:, len(head):].view(np.uint16)[:] = _HEX_PAIRS[(np.arange(base, base + n, dtype=np.int64)[:, None] >> _BYTE_SHIFTS) & 255]
        small = width * n < 1 << 31  # 32-bit offsets, as pandas makes them
        offsets = np.arange(0, width * (n + 1), width, dtype=np.int32 if small else np.int64)
        array = pa.StringArray if small else pa.LargeStringArray
        ids = pd.Index(array.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(digits)), dtype=str_dtype)
        from_fastpath = getattr(pd.CategoricalDtype, "_from_fastpath", None)
        if from_fastpath is not None:
            return from_fastpath(ids, False)
        return pd.CategoricalDtype(ids)
    return pd.CategoricalDtype([f"{prefix}{s:012x}" for s in range(base, base + n)])


@dataclass
class ConsumerInfo:
    """What plots need to know about a consumer to draw its limits."""

    name: str
    queue: str
    concurrency: int  # the largest it had (an update may change it): plots draw this limit
    prefetch: int
    #: ``(t, concurrency, prefetch)`` after each live update (``rt.update_consumer``)
    changes: list[tuple[float, int, int]] = field(default_factory=list)


@dataclass
class QueueInfo:
    name: str
    max_length: int | None  # None: no cap (a broker queue whose entry sets none)
    dead_letter: str | None = None
    max_attempts: int | None = None


class Recorder:
    """Collects events from the runtime and its consumers.

    Cold paths call the typed methods (:meth:`publish_wait`, :meth:`nack`,
    :meth:`requeue`, :meth:`dead_letter`, :meth:`event`). A per-message path makes a
    packer once, ``pk = rec.packer(EV_ACK, queue, consumer, worker)``, and records with
    ``rec.write(pk(t, seq, attempt, depth, buffered, busy, unsettled))``: two calls into
    C (a ``functools.partial`` of ``struct.pack``, and ``bytearray.extend``), nothing else,
    which is what keeps recording at a few percent of a message's cost.

    ``max_events`` bounds the rows kept (:mod:`wqnb.retention`): :meth:`trim` drops the
    oldest from the front of the same ``bytearray`` (so writers' bound ``extend`` stays
    valid), counting them, and ``spill`` (a folder) keeps them as Parquet. Nothing checks
    the bound per row: a :class:`~wqnb.retention.Trimmer` on the runtime's real-time loop,
    :meth:`timeline` and the runtime's ``stop`` call :meth:`trim`.
    """

    def __init__(self, max_events: int | None = None, *, chunk: int | None = None,
                 spill: str | Path | None = None) -> None:
        from .retention import Retention

        if max_events is None and (chunk is not None or spill is not None):
            raise ValueError("chunk= and spill= need max_events= (the bound they apply to)")
        self.retention = Retention(max_events, chunk, spill) if max_events is not None else None
        self.buf = bytearray()
        self.write: Callable[[bytes], None] = self.buf.extend
        self.queue_names: list[str] = []
        self.consumer_names: list[str] = []
        self.errors: list[str | None] = [None]
        self._queue_idx: dict[str, int] = {}
        self._consumer_idx: dict[str, int] = {}
        self._error_idx: dict[str, int] = {}
        self.queues: dict[str, QueueInfo] = {}
        self.consumers: dict[str, ConsumerInfo] = {}
        self.id_prefix = ""
        #: ids of messages this runtime did not publish (seen through a broker), by seq
        self.foreign_ids: dict[int, str] = {}
        #: told the wire ids a trim forgot (the runtime forgets its own map of them too)
        self.on_forget: Callable[[list[str]], None] | None = None
        self.t0: float | None = None
        self.origin_unix: float | None = None
        self.process = ""

    # -- writers ------------------------------------------------------------------------
    @staticmethod
    def packer(event: int, queue: int, consumer: int = -1, worker: int = -1, *,
               error: int = 0, redelivered: bool = False) -> Packer:
        """A packer for one kind of row: ``pk(t, seq, attempt, depth, buffered, busy, unsettled)``."""
        head = ROW_HEAD.pack(event, FLAG_REDELIVERED if redelivered else 0, queue, consumer, worker, error)
        return partial(ROW.pack, head)

    def event(self, event: int, t: float, queue: int, consumer: int, worker: int, seq: int, attempt: int,
              depth: int, buffered: int = -1, busy: int = -1, unsettled: int = -1, *,
              error: str | None = None, redelivered: bool = False) -> None:
        """Record one row of any kind (``-1`` gauges: not this kind of event)."""
        head = ROW_HEAD.pack(event, FLAG_REDELIVERED if redelivered else 0, queue, consumer, worker,
                             0 if error is None else self.error_index(error))
        self.buf.extend(ROW.pack(head, t, seq, attempt, depth, buffered, busy, unsettled))

    def publish_wait(self, t: float, queue: int, seq: int, depth: int) -> None:
        """A publisher found the queue full and waits."""
        self.event(EV_PUBLISH_WAIT, t, queue, -1, -1, seq, 1, depth)

    def publish_cancelled(self, t: float, queue: int, seq: int, depth: int) -> None:
        """A waiting publish was cancelled (``simulate(until=)``, a cancelled task): the
        message never entered the queue, and its story ends here."""
        self.event(EV_PUBLISH_CANCELLED, t, queue, -1, -1, seq, 1, depth)

    def nack(self, t: float, queue: int, consumer: int, worker: int, seq: int, attempt: int, error: str,
             depth: int, buffered: int, busy: int, unsettled: int) -> None:
        self.event(EV_NACK, t, queue, consumer, worker, seq, attempt, depth, buffered, busy, unsettled,
                   error=error)

    def requeue(self, t: float, queue: int, consumer: int, worker: int, seq: int, attempt: int,
                depth: int, buffered: int, busy: int, unsettled: int) -> None:
        """Back in its queue; ``attempt`` is the delivery it will get next."""
        self.event(EV_REQUEUE, t, queue, consumer, worker, seq, attempt, depth, buffered, busy, unsettled)

    def dead_letter(self, t: float, dlq: int, consumer: int, worker: int, seq: int, depth: int,
                    buffered: int, busy: int, unsettled: int) -> None:
        """Moved to the dead-letter queue ``dlq`` (as a fresh message: attempt 1)."""
        self.event(EV_DEAD_LETTER, t, dlq, consumer, worker, seq, 1, depth, buffered, busy, unsettled)

    def last_t(self) -> float | None:
        """The clock reading of the last row (None before any)."""
        if not self.buf:
            return None
        return float(ROW.unpack_from(self.buf, len(self.buf) - ROW.size)[1])

    def intern_foreign(self, seq: int, msg_id: str) -> None:
        """``seq`` stands for a message published elsewhere, whose wire id is ``msg_id``."""
        self.foreign_ids[seq] = msg_id

    # -- name tables ------------------------------------------------------------------
    def queue_index(self, name: str) -> int:
        idx = self._queue_idx.get(name)
        if idx is None:
            idx = self._queue_idx[name] = len(self.queue_names)
            self.queue_names.append(name)
        return idx

    def consumer_index(self, name: str) -> int:
        idx = self._consumer_idx.get(name)
        if idx is None:
            idx = self._consumer_idx[name] = len(self.consumer_names)
            self.consumer_names.append(name)
        return idx

    def error_index(self, text: str) -> int:
        idx = self._error_idx.get(text)
        if idx is None:
            idx = self._error_idx[text] = len(self.errors)
            self.errors.append(text)
        return idx

    # -- storage ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.buf) // ROW.size

    @property
    def dropped(self) -> int:
        """Rows dropped from the front so far (0 without ``max_events``)."""
        return self.retention.rows if self.retention is not None else 0

    @property
    def recorded(self) -> int:
        """Rows recorded since the start, dropped or kept: the absolute index of the next row."""
        return self.dropped + len(self.buf) // ROW.size

    def rows(self, start: int, stop: int | None = None) -> np.ndarray:
        """Rows ``start``..``stop`` by absolute index (see :attr:`recorded`), as a copy;
        rows already dropped are not there: the result starts at ``max(start, dropped)``."""
        first = self.dropped
        lo = max(start, first) - first
        hi = (len(self.buf) // ROW.size) if stop is None else max(stop - first, lo)
        return np.frombuffer(self.buf[lo * ROW.size: hi * ROW.size], dtype=ROW_DTYPE)

    def trim(self, slack: int = 0) -> int:
        """Drop the oldest rows beyond ``max_events`` once more than ``slack`` are over it;
        return how many were dropped. Cold path: called per chunk, never per row."""
        ret = self.retention
        if ret is None:
            return 0
        over = len(self.buf) // ROW.size - ret.max_events
        if over <= slack or over <= 0:
            return 0
        cut = over * ROW.size
        ret.drop(self, np.frombuffer(self.buf[:cut], dtype=ROW_DTYPE))
        del self.buf[:cut]  # the same object: writers' bound extend keeps working
        if self.foreign_ids:
            self._forget_foreign()
        return over

    def _forget_foreign(self) -> None:
        """Wire ids of messages no longer in the kept rows are forgotten (bounded too)."""
        with memoryview(self.buf) as view:
            kept = np.frombuffer(view, dtype=ROW_DTYPE)
            live = set(np.unique(kept["seq"]).tolist()) if len(kept) else set()
            del kept
        gone = [self.foreign_ids.pop(s) for s in [s for s in self.foreign_ids if s not in live]]
        if gone and self.on_forget is not None:
            self.on_forget(gone)

    def nbytes(self) -> int:
        """Memory held by recorded events."""
        return len(self.buf)

    def array(self) -> np.ndarray:
        """Every event kept so far as one structured array (a copy: recording goes on)."""
        return np.frombuffer(bytes(self.buf), dtype=ROW_DTYPE)

    def timeline(self) -> Timeline:
        """The rows kept as a :class:`Timeline`; after drops, with what was dropped
        (:attr:`Timeline.dropped`, :attr:`Timeline.dropped_detail`)."""
        self.trim()
        a = self.array()
        tl = Timeline.from_array(
            a,
            t0=self.t0 or 0.0,
            queue_names=list(self.queue_names),
            consumer_names=list(self.consumer_names),
            errors=list(self.errors),
            id_format=self.id_prefix,
            queues=dict(self.queues),
            consumers=dict(self.consumers),
            foreign_ids=dict(self.foreign_ids),
            seq_base=int(a["seq"].min()) if self.dropped and len(a) else 0,
        )
        tl.origin_unix = self.origin_unix
        tl.process = self.process
        if self.retention is not None and self.retention.rows:
            tl.dropped_detail = self.retention.summary(self)
            tl.dropped = tl.dropped_detail.rows
        return tl


@dataclass
class Timeline:
    """Every event of a run as a DataFrame, plus the views that teach with it.

    ``df`` columns: ``t`` (seconds since start), ``event``, ``queue``, ``consumer``,
    ``worker``, ``msg_id``, ``attempt``, ``error``, and the gauges after the event:
    ``depth`` (ready in the event's queue), ``buffered``, ``busy`` and ``unsettled``
    (for the event's consumer; ``<NA>`` on rows without one).
    """

    df: pd.DataFrame
    queues: dict[str, QueueInfo] = field(default_factory=dict)
    consumers: dict[str, ConsumerInfo] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    #: Unix time (wall clock; virtual runs: 2026-01-01 plus virtual time) at ``t = 0``, so
    #: that timelines of several processes share one time axis (:meth:`merge`).
    origin_unix: float | None = None
    #: Who recorded it: ``host:pid`` of the process, or a name given to the runtime.
    process: str = ""
    #: Events dropped from the front by a bounded recorder (``Runtime(max_events=)``): the
    #: rows start after them, and :attr:`dropped_detail` holds their totals.
    dropped: int = 0
    dropped_detail: Dropped | None = None

    @classmethod
    def from_array(
        cls,
        a: np.ndarray,
        *,
        t0: float,
        queue_names: list[str],
        consumer_names: list[str],
        errors: list[str | None],
        id_format: str,
        queues: dict[str, QueueInfo],
        consumers: dict[str, ConsumerInfo],
        foreign_ids: dict[int, str] | None = None,
        seq_base: int = 0,
    ) -> Timeline:
        # Fields are strided views into the rows: copy each once into a contiguous array,
        # then work on that (reductions and masks on strided data cost several times more).
        seq = np.ascontiguousarray(a["seq"])
        if seq_base:  # the first messages were dropped: ids from the oldest kept
            seq = seq - seq_base
        n_ids = int(seq.max()) + 1 if len(seq) else 0
        worker = a["worker"].astype(np.int16)
        gauges = {g: a[g].astype(np.int32) for g in GAUGES}
        err_codes = a["error"].astype(np.int32) - 1  # 0 (no error) becomes -1 (NaN)
        df = pd.DataFrame(
            {
                "t": a["t"] - t0,
                "event": pd.Categorical.from_codes(a["event"].astype(np.int8), EVENTS),
                "queue": pd.Categorical.from_codes(a["queue"], queue_names),
                "consumer": pd.Categorical.from_codes(a["consumer"], consumer_names),
                "worker": pd.arrays.IntegerArray(worker, worker < 0),
                "msg_id": pd.Categorical.from_codes(seq, dtype=_id_dtype(id_format, n_ids, foreign_ids, seq_base)),
                "attempt": a["attempt"].astype(np.int32),
                "error": pd.Categorical.from_codes(
                    err_codes, [e for e in errors[1:]] if len(errors) > 1 else []
                ),
                **{g: pd.arrays.IntegerArray(v, v < 0) for g, v in gauges.items()},
                "redelivered": (a["flags"] & FLAG_REDELIVERED).astype(bool),
            },
            copy=False,
        )
        return cls(df, queues=queues, consumers=consumers)

    # -- export -------------------------------------------------------------------------
    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        self.df.to_csv(path, index=False)
        return path

    def to_parquet(self, path: str | Path) -> Path:
        path = Path(path)
        self.df.to_parquet(path, index=False)
        return path

    def save(self, path: str | Path) -> Path:
        """Write ``.csv`` (plus a ``.csv.json`` sidecar) or ``.parquet`` by the file's suffix,
        with what :meth:`read` needs to rebuild this Timeline (limits, origin, process:
        :mod:`wqnb.merge`)."""
        from .merge import write

        return write(self, path)

    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        dropped = f" (the first {self.dropped:,} dropped)" if self.dropped else ""
        return f"<Timeline {len(self.df)} events{dropped}, {self.df['msg_id'].nunique()} messages>"

    # views live in wqnb.views to keep this module about storage
    def messages(self) -> pd.DataFrame:
        """One row per delivery attempt (computed once per Timeline, then reused)."""
        from .views import messages

        cached = self.__dict__.get("_messages")
        if cached is None:
            cached = self.__dict__["_messages"] = messages(self)
        return cached

    def gauges(self, consumer: str | None = None, *, instants: bool = True) -> pd.DataFrame:
        from .views import gauges

        return gauges(self, consumer, instants=instants)

    def summary(self) -> pd.Series:
        from .views import summary

        return summary(self)

    # reading back and merging live in wqnb.merge
    @classmethod
    def read(cls, path: str | Path) -> Timeline:
        """Load a timeline written by :meth:`save` (``.parquet`` or ``.csv``)."""
        from .merge import read

        return read(path)

    @classmethod
    def merge(cls, timelines: Iterable[Timeline | str | Path]) -> Timeline:
        """One timeline from several processes' (Timelines or files), joined by ``msg_id``
        on a common ``t``, with a ``process`` column; see :func:`wqnb.merge.merge`."""
        from .merge import merge

        return merge(timelines)
