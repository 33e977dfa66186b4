"""Bounded recording for a long-running live runtime: ``Runtime(max_events=N)``.

A live runtime records every event (48 B a row) for as long as it runs. With a bound the
:class:`~wqnb.timeline.Recorder` keeps the newest ``max_events`` rows and drops the oldest
from the front of its row store in large chunks; what it drops is counted (per kind of
event, queue and consumer, and the gauges' peaks), handed to whoever follows the recorder
(:mod:`wqnb.live`) and, with ``spill=``, written to Parquet first. The views read these
totals, so a trimmed timeline says what it no longer holds instead of passing partial
counts off as totals.

Nothing here runs per row: writers keep appending to the same ``bytearray`` (a front
``del`` of a ``bytearray`` only moves its start; the next growth copies just the rows
kept). A :class:`Trimmer` checks the store's length on the loop's real-time clock, every
few milliseconds at most, and trims once a chunk's worth of rows beyond the bound has
accumulated. On a virtual-time loop (``simulate``) there is no timer: a simulation is
bounded by design (its messages, its ``until``), and the bound applies when the run is
read (``rt.timeline``) or stopped.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .timeline import Recorder

__all__ = ["Dropped", "Retention", "Trimmer", "default_chunk"]

#: A follower: ``f(rows, first)`` sees rows about to be dropped; ``first`` is the absolute
#: index (rows recorded before it, dropped or not) of ``rows[0]``.
Follower = Callable[[np.ndarray, int], None]

GAUGE_FIELDS = ("depth", "buffered", "busy", "unsettled")


def default_chunk(max_events: int) -> int:
    """Rows beyond the bound before a trim: an eighth of it, at least 1,024, so a trim
    (one copy of the rows kept, at the next growth) is paid once per many rows."""
    return max(1024, max_events // 8)


@dataclass
class Dropped:
    """What a bounded recorder dropped from the front of its timeline (totals, not rows).

    ``counts`` is keyed by ``(event, queue, consumer)`` names (``None``: no consumer);
    ``maxima`` holds each gauge's peak over the dropped rows; ``until`` is the ``t`` of the
    last dropped row (seconds since the start, as in ``Timeline.df``).
    """

    rows: int = 0
    max_events: int | None = None
    until: float | None = None
    counts: dict[tuple[str, str | None, str | None], int] = field(default_factory=dict)
    maxima: dict[str, int] = field(default_factory=dict)

    def count(self, event: str, *, queue: str | None = None, consumer: str | None = None) -> int:
        """Dropped rows of ``event`` (on ``queue`` / by ``consumer`` when given)."""
        return sum(n for (e, q, c), n in self.counts.items()
                   if e == event and (queue is None or q == queue) and (consumer is None or c == consumer))

    def note(self) -> str:
        """One line for views: how much is gone and what the figures then mean."""
        until = f" (up to t = {self.until:.6g} s)" if self.until is not None else ""
        bound = f"max_events={self.max_events:,}: " if self.max_events else ""
        return (f"{bound}the first {self.rows:,} events were dropped{until}; counts and peaks are "
                "totals of the whole run, times and latencies are over the events kept")


class Retention:
    """The bound of one recorder and the running totals of what it dropped."""

    def __init__(self, max_events: int, chunk: int | None = None, spill: str | Path | None = None) -> None:
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
            raise ValueError(f"max_events must be a whole number ≥ 1, got {max_events!r}")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk must be a whole number ≥ 1, got {chunk!r}")
        self.max_events = max_events
        self.chunk = chunk or default_chunk(max_events)
        self.spill = Path(spill) if spill is not None else None
        if self.spill is not None:
            _check_spill(self.spill)
        self.rows = 0  #: rows dropped so far
        self.trims = 0  #: how many times rows were dropped (each time a chunk or more, but at the end)
        self.until: float | None = None  # loop clock of the last row dropped
        self.counts: dict[tuple[int, int, int], int] = {}  # (event, queue, consumer) codes
        self.maxima = dict.fromkeys(GAUGE_FIELDS, -1)
        self.parts = 0  #: Parquet files written to ``spill``
        self._followers: list[weakref.WeakMethod[Follower] | Callable[[], Follower | None]] = []

    def follow(self, fn: Follower) -> None:
        """Call ``fn(rows, first)`` with each chunk before it is dropped (held weakly when
        ``fn`` is a bound method, so a forgotten monitor does not live on)."""
        ref = weakref.WeakMethod(fn) if hasattr(fn, "__self__") else (lambda: fn)
        self._followers.append(ref)  # type: ignore[arg-type]

    def drop(self, rec: Recorder, rows: np.ndarray) -> None:
        """Account for ``rows`` (the oldest of ``rec``) just before they are cut off."""
        alive = []
        for ref in self._followers:
            fn = ref()
            if fn is not None:
                fn(rows, self.rows)
                alive.append(ref)
        self._followers = alive
        if self.spill is not None:
            self._spill(rec, rows)
        nq, nc = len(rec.queue_names) + 1, len(rec.consumer_names) + 1
        key = (rows["event"].astype(np.int64) * nq + (rows["queue"] + 1)) * nc + (rows["consumer"] + 1)
        codes, n = np.unique(key, return_counts=True)
        counts = self.counts
        for code, k in zip(codes.tolist(), n.tolist(), strict=True):
            ev, rest = divmod(code, nq * nc)
            q, c = divmod(rest, nc)
            triple = (ev, q - 1, c - 1)
            counts[triple] = counts.get(triple, 0) + k
        for g in GAUGE_FIELDS:
            self.maxima[g] = max(self.maxima[g], int(rows[g].max()))
        self.rows += len(rows)
        self.trims += 1
        self.until = float(rows["t"][-1])

    def summary(self, rec: Recorder) -> Dropped:
        """The totals with names (what a Timeline carries)."""
        from .timeline import EVENTS

        t0 = rec.t0 or 0.0
        named: dict[tuple[str, str | None, str | None], int] = {}
        for (ev, q, c), n in self.counts.items():
            key = (EVENTS[ev], rec.queue_names[q] if q >= 0 else None, rec.consumer_names[c] if c >= 0 else None)
            named[key] = named.get(key, 0) + n
        return Dropped(self.rows, self.max_events, None if self.until is None else self.until - t0, named,
                       {g: v for g, v in self.maxima.items() if v >= 0})

    def _spill(self, rec: Recorder, rows: np.ndarray) -> None:
        """Write the chunk as the next ``part-NNNNNN.parquet`` in ``spill`` (each file whole
        on its own: a crash loses no earlier part; ``pd.read_parquet(spill)`` reads them all)."""
        from .timeline import Timeline

        tl = Timeline.from_array(
            rows, t0=rec.t0 or 0.0, queue_names=list(rec.queue_names), consumer_names=list(rec.consumer_names),
            errors=list(rec.errors), id_format=rec.id_prefix, queues={}, consumers={},
            foreign_ids=rec.foreign_ids, seq_base=int(rows["seq"].min()),
        )
        df = tl.df
        for name in ("event", "queue", "consumer", "msg_id", "error"):  # plain strings: parts concatenate
            df[name] = df[name].astype(object).where(df[name].notna(), None)
        self.spill.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        self.parts += 1
        df.to_parquet(self.spill / f"part-{self.parts:06d}.parquet", index=False)  # type: ignore[operator]


def _check_spill(path: Path) -> None:
    """Refuse a spill target that cannot work now, not after the first chunk."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ValueError("spill= writes Parquet, which needs pyarrow: pip install 'wqnb[parquet]'") from None
    if path.exists() and not path.is_dir():
        raise ValueError(f"spill={str(path)!r} must be a folder (it gets one Parquet file a chunk)")
    if path.is_dir() and any(path.glob("part-*.parquet")):
        raise ValueError(f"spill={str(path)!r} already holds part-*.parquet files: give an empty or new folder")


class Trimmer:
    """Trim a recorder on a real-time loop, checking its length every few milliseconds.

    The check is one ``len`` and a comparison; a check finding more than half a chunk over
    the bound trims. The interval adapts to the recording rate so that about a quarter of
    a chunk arrives between two checks (between ``min_interval`` and ``max_interval``): the
    store stays within ``max_events + chunk`` rows unless the rate doubles from one check to
    the next or the loop is blocked (a handler that never awaits) for longer than that.
    """

    def __init__(self, rec: Recorder, loop: asyncio.AbstractEventLoop, *, min_interval: float = 0.001,
                 max_interval: float = 0.02) -> None:
        assert rec.retention is not None
        self.rec = rec
        self.loop = loop
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.interval = min(max_interval, 5 * min_interval)  # start short: the rate is not known yet
        self.ticks = 0
        self._last_len = len(rec)
        self._last_t = loop.time()
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._handle = self.loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        rec = self.rec
        ret = rec.retention
        assert ret is not None
        self.ticks += 1
        now = self.loop.time()
        n = len(rec)
        grew = max(n - self._last_len, 0)
        rec.trim(slack=ret.chunk // 2)
        self._last_len = len(rec)
        elapsed, self._last_t = now - self._last_t, now
        # trims past half a chunk over, ticks every quarter chunk at the rate just seen:
        # the store stays under max_events + chunk with room for a rate twice as high
        # (shorter at once, longer slowly: a quiet moment must not open a long gap)
        want = max(elapsed, 1e-6) * (ret.chunk / 4) / grew if grew else self.max_interval
        want = min(want, self.interval * 1.25)
        self.interval = min(self.max_interval, max(self.min_interval, want))
        self._handle = self.loop.call_later(self.interval, self._tick)
