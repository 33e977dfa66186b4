"""Incremental views of a running runtime's recorder, for :class:`wqnb.widgets.LiveMonitor`.

A monitor refreshing every half second must not rebuild the whole history each time (at
a million messages ``rt.timeline.summary()`` takes seconds). :class:`LiveView` keeps a
read position in the recorder's rows (by absolute index, :attr:`Recorder.recorded`) and
at each :meth:`LiveView.update` reads only the rows recorded since, folding them into
running aggregates with numpy: counts by kind of event, the gauges' peaks and current
values, an ack rate over a recent window, the consumer's deliveries handed back by a stop,
and a bounded window of recent rows for the plot. On a bounded recorder
(``Runtime(max_events=)``) it also reads rows about to be dropped that it has not seen
yet, so its totals stay exact however small the bound.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .timeline import (
    EV_ACK,
    EV_DEAD_LETTER,
    EV_DELIVER,
    EV_NACK,
    EV_PUBLISH,
    EV_PUBLISH_WAIT,
    EV_REQUEUE,
    EV_START,
    EVENTS,
    ROW_DTYPE,
    Recorder,
    Timeline,
)
from .views import Summary

__all__ = ["LiveView", "pick"]

_COUNTED = {"published": EV_PUBLISH, "delivered": EV_DELIVER, "acked": EV_ACK, "nacked": EV_NACK,
            "requeued": EV_REQUEUE, "dead_lettered": EV_DEAD_LETTER, "publish_waits": EV_PUBLISH_WAIT}
_GAUGES = ("depth", "buffered", "busy", "unsettled")
_OPEN = np.array([EV_DELIVER, EV_START], dtype=np.uint8)  # a delivery not yet acked or nacked
_MINE = np.array([EV_DELIVER, EV_START, EV_ACK, EV_NACK, EV_REQUEUE], dtype=np.uint8)


def pick(rec: Recorder, consumer: str | None) -> str | None:
    """The consumer to follow: the one named (which must exist), else the runtime's first."""
    known = list(rec.consumers) or list(rec.consumer_names)
    if consumer is not None:
        if consumer not in known:
            raise ValueError(f"unknown consumer {consumer!r} (this runtime has: {', '.join(known) or 'none'})")
        return consumer
    return known[0] if known else None


class LiveView:
    """Running aggregates of ``rec`` for one consumer and its queue, fed only new rows.

    ``window`` (seconds) and ``plot_rows`` bound the recent rows kept for the plot;
    ``rate_window`` (seconds) is the span of :attr:`ack_rate`. :attr:`rows_read` counts every
    row read so far (each row is read once), :attr:`last_read` those of the last update.
    """

    def __init__(self, rec: Recorder, consumer: str | None, queue: str | None, *,
                 window: float | None = 30.0, plot_rows: int = 20_000, rate_window: float = 5.0) -> None:
        self.rec = rec
        self.consumer = consumer
        self.queue = queue
        self.window = window
        self.plot_rows = plot_rows
        self.rate_window = rate_window
        self.counts = np.zeros(len(EVENTS), dtype=np.int64)
        self.maxima = dict.fromkeys(_GAUGES, 0)
        self.current = dict.fromkeys(_GAUGES, 0)  # the gauges after the last row seen
        self.handed_back = 0
        self.rows_read = 0
        self.last_read = 0
        self._mark = 0  # rows_read at the last update
        self.t_first: float | None = None  # loop clock of the first and last rows seen
        self.t_last: float | None = None
        self._open: set[int] = set()  # seqs this consumer delivered and has not settled
        self._recent: deque[np.ndarray] = deque()
        self._recent_rows = 0
        self._acks: deque[tuple[float, int]] = deque()  # (t, acks so far) after each update
        ret = rec.retention
        if ret is not None:  # what was dropped before we came: its totals
            for (ev, _q, _c), n in ret.counts.items():
                self.counts[ev] += n
            self.maxima.update({g: max(v, 0) for g, v in ret.maxima.items()})
            ret.follow(self._before_drop)
        self.pos = rec.dropped  # absolute index of the next row to read

    # -- feeding -----------------------------------------------------------------------
    def update(self) -> int:
        """Read the rows recorded since the last update; return how many (those read just
        before a bounded recorder dropped them included)."""
        self._feed(self.rec.rows(self.pos))
        self.last_read = self.rows_read - self._mark
        self._mark = self.rows_read
        if self.t_last is not None:
            acks = int(self.counts[EV_ACK])
            self._acks.append((self.t_last, acks))
            while len(self._acks) > 2 and self._acks[1][0] <= self.t_last - self.rate_window:
                self._acks.popleft()
        return self.last_read

    def _before_drop(self, rows: np.ndarray, first: int) -> None:
        """A bounded recorder is about to drop ``rows`` (absolute ``first``…): read the unseen."""
        if self.pos < first + len(rows):
            self._feed(rows[max(self.pos - first, 0):])

    def _feed(self, a: np.ndarray) -> None:
        if not len(a):
            return
        self.pos += len(a)
        self.rows_read += len(a)
        ev = a["event"]
        self.counts += np.bincount(ev, minlength=len(EVENTS))[: len(EVENTS)]
        for g in _GAUGES:
            self.maxima[g] = max(self.maxima[g], int(a[g].max()))
        t = a["t"]
        if self.t_first is None:
            self.t_first = float(t[0])
        self.t_last = float(t[-1])
        rec = self.rec
        qi = rec._queue_idx.get(self.queue, -2) if self.queue is not None else -2
        ci = rec._consumer_idx.get(self.consumer, -2) if self.consumer is not None else -2
        on_queue = a["queue"] == qi
        mine = a["consumer"] == ci
        if on_queue.any():
            self.current["depth"] = int(a["depth"][on_queue][-1])
        if mine.any():
            last = a[mine][-1]
            for g in ("buffered", "busy", "unsettled"):
                self.current[g] = int(last[g])
            self._count_handed_back(a[mine & np.isin(ev, _MINE)])
        keep = a[on_queue | mine]
        if len(keep):
            self._recent.append(keep)
            self._recent_rows += len(keep)
            self._bound_recent()

    def _count_handed_back(self, rows: np.ndarray) -> None:
        """Requeues of deliveries that had no ack or nack: handed back to the queue by a
        stop (``messages()``' ``returned``). Vectorised by message; the only state kept
        between chunks is the set of deliveries still open (at most ``unsettled``)."""
        if not len(rows):
            return
        seq = rows["seq"]
        ev = rows["event"]
        order = np.argsort(seq, kind="stable")
        s_seq, s_ev = seq[order], ev[order]
        head = np.ones(len(s_seq), dtype=bool)
        head[1:] = s_seq[1:] != s_seq[:-1]
        prev_open = np.zeros(len(s_seq), dtype=bool)
        prev_open[1:] = np.isin(s_ev[:-1], _OPEN)
        if self._open:  # the first row of a message continues a delivery open before
            carried = np.fromiter(self._open, dtype=np.int64, count=len(self._open))
            prev_open[head] = np.isin(s_seq[head], carried)
            self._open.difference_update(np.unique(s_seq).tolist())
        else:
            prev_open[head] = False
        self.handed_back += int(((s_ev == EV_REQUEUE) & prev_open).sum())
        tail = np.ones(len(s_seq), dtype=bool)
        tail[:-1] = head[1:]
        self._open.update(s_seq[tail & np.isin(s_ev, _OPEN)].tolist())

    def _bound_recent(self) -> None:
        """Keep at most ``plot_rows`` recent rows, none older than ``window`` seconds."""
        chunks = self._recent
        horizon = self.t_last - self.window if self.window and self.t_last is not None else None
        while len(chunks) > 1 and (self._recent_rows - len(chunks[0]) >= self.plot_rows
                                   or (horizon is not None and chunks[0]["t"][-1] < horizon)):
            self._recent_rows -= len(chunks.popleft())
        first = chunks[0]
        cut = max(self._recent_rows - self.plot_rows, 0)
        if horizon is not None:
            cut = max(cut, int(np.searchsorted(first["t"], horizon)))
        if cut:
            chunks[0] = first[cut:]
            self._recent_rows -= cut

    # -- reading -----------------------------------------------------------------------
    @property
    def t_end(self) -> float:
        """Seconds since the start (the timeline's ``t``) of the last row read."""
        return (self.t_last or 0.0) - (self.rec.t0 or 0.0) if self.t_last is not None else 0.0

    @property
    def ack_rate(self) -> float:
        """Acks per second over the last ``rate_window`` seconds (between updates)."""
        if len(self._acks) < 2:
            return float("nan")
        (t0, a0), (t1, a1) = self._acks[0], self._acks[-1]
        return (a1 - a0) / (t1 - t0) if t1 > t0 else float("nan")

    def summary(self) -> Summary:
        """Counts, peaks and rates so far, and the consumer's gauges now (whole-run totals:
        rows dropped by ``max_events`` included). Latency percentiles need every message:
        ``rt.timeline.summary()``."""
        duration = (self.t_last - self.t_first) if self.t_first is not None else 0.0
        acked = int(self.counts[EV_ACK])
        dropped = self.rec.dropped
        return Summary({
            **{k: int(self.counts[e]) for k, e in _COUNTED.items()},
            "duration_s": duration,
            "throughput_per_s": acked / duration if duration > 0 else float("nan"),
            "ack_rate_per_s": self.ack_rate,
            **{f"max_{g}": self.maxima[g] for g in _GAUGES},
            **{f"now_{g}": self.current[g] for g in _GAUGES},
            "handed_back": self.handed_back,
            **({"dropped_events": dropped} if dropped else {}),
        }, name="live", dtype=float)

    def timeline(self) -> Timeline:
        """The recent rows of the consumer and its queue as a Timeline (for the plot)."""
        rec = self.rec
        a = np.concatenate(list(self._recent)) if self._recent else np.zeros(0, dtype=ROW_DTYPE)
        tl = Timeline.from_array(
            a, t0=rec.t0 or 0.0, queue_names=list(rec.queue_names), consumer_names=list(rec.consumer_names),
            errors=list(rec.errors), id_format=rec.id_prefix, queues=dict(rec.queues),
            consumers=dict(rec.consumers), foreign_ids=dict(rec.foreign_ids),
            seq_base=int(a["seq"].min()) if len(a) else 0,
        )
        tl.origin_unix = rec.origin_unix
        tl.process = rec.process
        return tl
