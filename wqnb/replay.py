"""The system's state at an instant, read back from a timeline: what a replay draws.

:func:`state_at` answers "what was where at time t" — the publisher (blocked or not), the
queue's ready messages, the consumer's prefetch buffer, each worker's message, and the
acked / nacked / dead-lettered counts so far — from the timeline alone (DESIGN §1), so it
works on a simulated run, a live runtime's timeline and one merged from several
processes. :func:`diagram_svg` draws that state as the seed page's diagram, and
:func:`workers` is Flower's per-worker table. :class:`wqnb.widgets.Replay` puts a Play
button and a time slider on top.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .views import pick_consumer

if TYPE_CHECKING:  # pragma: no cover
    from .timeline import Timeline

__all__ = ["Snapshot", "diagram_svg", "state_at", "workers"]


@dataclass(frozen=True)
class Snapshot:
    """One consumer and its queue right after every event at or before ``t``."""

    t: float
    consumer: str | None
    queue: str | None
    depth: int                      #: ready in the queue
    buffered: int                   #: in the consumer's prefetch buffer
    busy: int                       #: workers running a handler
    unsettled: int                  #: delivered to the consumer, not yet acked or nacked
    publisher_waiting: int          #: messages publishers hold, blocked on a full queue
    workers: dict[int, str | None]  #: worker → the msg_id it runs (``None``: idle)
    buffer: tuple[str, ...]         #: msg_ids in the prefetch buffer, oldest first
    acked: int
    nacked: int
    dead_lettered: int
    concurrency: int | None = None
    prefetch: int | None = None
    max_length: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


def _gauge_at(g: pd.DataFrame, t: float) -> dict[str, int]:
    times = g["t"].to_numpy(dtype=float)
    i = int(np.searchsorted(times, t, side="right")) - 1
    if i < 0:
        return {k: 0 for k in ("depth", "buffered", "busy", "unsettled")}
    row = g.iloc[i]
    return {k: int(row[k]) for k in ("depth", "buffered", "busy", "unsettled")}


def state_at(tl: Timeline, t: float, consumer: str | None = None) -> Snapshot:
    """The state of ``consumer`` (default: the first) and its queue just after time ``t``.

    The gauges are the timeline's own (:meth:`~wqnb.timeline.Timeline.gauges` at ``t``);
    which message each worker holds and which wait in the buffer come from
    :meth:`~wqnb.timeline.Timeline.messages` (started at or before ``t``, not ended by
    then; delivered, not yet started).
    """
    consumer = pick_consumer(tl, consumer)
    g = tl.gauges(consumer)
    queue = g.attrs.get("queue")
    gauges = _gauge_at(g, t)
    df = tl.df
    upto = df[df["t"] <= t]
    ev = upto["event"]
    on_c = upto["consumer"] == consumer if consumer is not None else ev.isna()
    on_q = upto["queue"] == queue if queue is not None else ev.isna()
    # publishers blocked: a publish_wait at or before t whose publish comes after t
    waits = df.loc[(df["event"] == "publish_wait") & (df["queue"] == queue), ["t", "msg_id"]]
    waiting = 0
    if len(waits):
        pubs = df.loc[(df["event"] == "publish") & df["msg_id"].isin(waits["msg_id"]), ["t", "msg_id"]]
        done = pubs.groupby("msg_id", observed=True)["t"].min()
        end = waits["msg_id"].map(done).astype(float).fillna(np.inf).to_numpy()
        start = waits["t"].to_numpy(dtype=float)
        waiting = int(((start <= t) & (end > t)).sum())
    m = tl.messages()
    if consumer is not None and len(m):
        m = m[m["consumer"] == consumer]
    t_end = m["t_end"].to_numpy(dtype=float, na_value=np.inf)
    t_start = m["t_start"].to_numpy(dtype=float, na_value=np.inf)
    t_deliver = m["t_deliver"].to_numpy(dtype=float)
    ids = m["msg_id"].astype(str).to_numpy()
    running = (t_start <= t) & (t_end > t)
    info = tl.consumers.get(consumer) if consumer is not None else None
    n_workers = info.concurrency if info is not None else (
        int(m["worker"].max()) + 1 if len(m) and m["worker"].notna().any() else 0)
    held: dict[int, str | None] = {w: None for w in range(n_workers)}
    for w, mid in zip(m["worker"].to_numpy(dtype=float, na_value=-1)[running], ids[running],
                      strict=True):
        held[int(w)] = mid
    # in the buffer: delivered, not started, and not handed back (a returned delivery
    # that never started ends at its t_end)
    waiting_in_buffer = (t_deliver <= t) & (t_start > t) & ~((t_end <= t) & np.isinf(t_start))
    order = np.argsort(t_deliver[waiting_in_buffer], kind="stable")
    buffer = tuple(ids[waiting_in_buffer][order])
    q = tl.queues.get(queue) if queue is not None else None
    return Snapshot(
        t=float(t), consumer=consumer, queue=queue, **gauges,
        publisher_waiting=waiting, workers=held, buffer=buffer,
        acked=int(((ev == "ack") & on_c).sum()),
        nacked=int(((ev == "nack") & on_c).sum()),
        dead_lettered=int(((ev == "dead_letter") & (on_q | on_c)).sum()),
        concurrency=info.concurrency if info is not None else None,
        prefetch=info.prefetch if info is not None else None,
        max_length=q.max_length if q is not None else None,
    )


def workers(tl: Timeline, consumer: str | None = None, *, at: float | None = None) -> pd.DataFrame:
    """Flower's worker table for one consumer: a row per worker with ``handled`` (acks and
    nacks), ``failed`` (nacks), ``utilisation`` (time in a handler / time elapsed, 0–1),
    ``service_mean_s``, ``service_p90_s`` and ``current`` (the msg_id it runs, or empty),
    as of time ``at`` (default: the end of the timeline)."""
    consumer = pick_consumer(tl, consumer)
    df = tl.df
    t_now = float(df["t"].max()) if at is None and len(df) else float(at or 0.0)
    m = tl.messages()
    if consumer is not None and len(m):
        m = m[m["consumer"] == consumer]
    m = m[m["worker"].notna() & (m["t_start"] <= t_now)]
    info = tl.consumers.get(consumer) if consumer is not None else None
    n = info.concurrency if info is not None else (int(m["worker"].max()) + 1 if len(m) else 0)
    rows = []
    for w in range(n):
        mw = m[m["worker"] == w]
        end = mw["t_end"].to_numpy(dtype=float, na_value=np.inf)
        start = mw["t_start"].to_numpy(dtype=float)
        finished = end <= t_now
        outcome = mw["outcome"].astype(str).to_numpy()
        service = (end - start)[finished & np.isin(outcome, ("ack", "nack"))]
        busy = float(np.minimum(end, t_now).sum() - start.sum()) if len(mw) else 0.0
        running = np.flatnonzero(~finished)
        rows.append({
            "worker": w,
            "handled": int((finished & np.isin(outcome, ("ack", "nack"))).sum()),
            "failed": int((finished & (outcome == "nack")).sum()),
            "utilisation": busy / t_now if t_now > 0 else float("nan"),
            "service_mean_s": float(service.mean()) if len(service) else float("nan"),
            "service_p90_s": float(np.quantile(service, 0.9)) if len(service) else float("nan"),
            "current": str(mw["msg_id"].iloc[running[0]]) if len(running) else "",
        })
    return pd.DataFrame(rows, columns=["worker", "handled", "failed", "utilisation",
                                       "service_mean_s", "service_p90_s", "current"]).set_index("worker")


# -- the seed page's diagram, as SVG ------------------------------------------------------

_COL = {"ready": "#264653", "buffer": "#e9c46a", "busy": "#2a9d8f", "idle": "#f1f3f5",
        "wait": "#9b2226", "ack": "#2a9d8f", "nack": "#e76f51", "dead": "#212529"}


def _short(msg_id: str | None) -> str:
    from .plot import short_id

    return "" if msg_id is None else short_id(msg_id)


def _slots(x: float, y: float, n_slots: int, filled: int, color: str, *, cell: float = 16,
           gap: float = 3, per_row: int = 10, max_draw: int = 40, gid: str = "") -> tuple[list[str], float]:
    """A grid of ``n_slots`` squares, the first ``filled`` coloured; returns (svg, height)."""
    shown = min(n_slots, max_draw)
    parts = []
    for k in range(shown):
        r, c = divmod(k, per_row)
        fill = color if k < filled else "#ffffff"
        parts.append(f"<rect class='slot {gid}{' full' if k < filled else ''}' x='{x + c * (cell + gap):.1f}' "
                     f"y='{y + r * (cell + gap):.1f}' width='{cell}' height='{cell}' rx='2' "
                     f"fill='{fill}' stroke='#adb5bd'/>")
    rows = max(1, -(-shown // per_row))
    height = rows * (cell + gap)
    if n_slots > max_draw:
        parts.append(f"<text x='{x}' y='{y + height + 11:.1f}' font-size='11' fill='#495057'>"
                     f"… {n_slots - max_draw:,} more slots ({max(filled - max_draw, 0):,} full)</text>")
        height += 14
    return parts, height


def diagram_svg(s: Snapshot, *, width: int = 860) -> str:
    """``s`` as the seed page's diagram: publisher → queue → consumer (prefetch buffer,
    workers with the message each runs) → acked / nacked / dead-lettered."""
    h = 230
    e = html.escape
    out = [(f"<svg xmlns='http://www.w3.org/2000/svg' class='wqnb-replay-frame' width='{width}' "
            f"height='{h}' viewBox='0 0 {width} {h}' font-family='sans-serif' font-size='12' "
            f"data-t='{s.t:.6f}'>")]
    out.append(f"<text x='8' y='16' font-size='13' font-weight='bold'>t = {s.t:.3f} s</text>")
    # publisher
    wait = s.publisher_waiting
    out.append(f"<rect x='8' y='60' width='120' height='70' rx='6' fill='{'#fde2e4' if wait else '#ffffff'}' "
               f"stroke='{_COL['wait'] if wait else '#495057'}' stroke-width='{2 if wait else 1}'/>")
    out.append("<text x='68' y='85' text-anchor='middle' font-weight='bold'>publisher</text>")
    out.append(f"<text x='68' y='108' text-anchor='middle' class='publisher' fill='{_COL['wait'] if wait else '#495057'}'>"
               f"{'blocked: ' + format(wait, ',') + ' waiting' if wait else 'not waiting'}</text>")
    out.append("<path d='M130 95 L160 95' stroke='#495057' stroke-width='2' marker-end='url(#a)'/>")
    # queue
    cap = s.max_length or max(s.depth, 1)
    out.append("<text x='165' y='50' font-weight='bold'>queue</text>")
    out.append(f"<text x='165' y='64' fill='#495057' class='depth'>ready {s.depth:,}"
               f"{' / max_length ' + format(cap, ',') if s.max_length else ''}</text>")
    parts, _ = _slots(165, 72, cap, s.depth, _COL["ready"], per_row=10, max_draw=40, gid="ready")
    out += parts
    out.append("<path d='M360 95 L390 95' stroke='#495057' stroke-width='2' marker-end='url(#a)'/>")
    # consumer: buffer and workers
    out.append(f"<rect x='395' y='28' width='300' height='{h - 36}' rx='6' fill='none' stroke='#495057'/>")
    out.append(f"<text x='403' y='44' font-weight='bold'>consumer{' ' + e(str(s.consumer).split(':', 1)[-1]) if s.consumer else ''}</text>")
    pf = s.prefetch if s.prefetch is not None else max(s.buffered, 1)
    out.append(f"<text x='403' y='60' fill='#495057' class='buffered'>prefetch buffer {s.buffered:,} / {pf:,}</text>")
    parts, bh = _slots(403, 66, pf, s.buffered, _COL["buffer"], per_row=14, max_draw=28, cell=14, gid="buffer")
    out += parts
    y = 66 + bh + 16
    n_w = s.concurrency if s.concurrency is not None else len(s.workers)
    out.append(f"<text x='403' y='{y:.0f}' fill='#495057' class='busy'>workers {s.busy:,} busy / {n_w:,}</text>")
    shown = min(n_w, 16)
    for k in range(shown):
        r, c = divmod(k, 8)
        mid = s.workers.get(k)
        x0, y0 = 403 + c * 35, y + 6 + r * 30
        out.append(f"<rect class='worker{' busy' if mid else ''}' x='{x0}' y='{y0:.0f}' width='32' height='26' rx='3' "
                   f"fill='{_COL['busy'] if mid else _COL['idle']}' stroke='#495057'/>")
        out.append(f"<text x='{x0 + 16}' y='{y0 + 17:.0f}' text-anchor='middle' font-size='10' "
                   f"fill='{'#ffffff' if mid else '#868e96'}'>{e(_short(mid)) if mid else 'idle'}</text>")
    if n_w > shown:
        busy_hidden = sum(1 for w, v in s.workers.items() if w >= shown and v)
        out.append(f"<text x='403' y='{y + 6 + 2 * 30 + 12:.0f}' font-size='11' fill='#495057'>"
                   f"… {n_w - shown:,} more workers ({busy_hidden:,} busy)</text>")
    out.append("<path d='M697 95 L727 95' stroke='#495057' stroke-width='2' marker-end='url(#a)'/>")
    # counters
    for k, (label, value, color) in enumerate((("acked", s.acked, _COL["ack"]),
                                               ("nacked", s.nacked, _COL["nack"]),
                                               ("dead-lettered", s.dead_lettered, _COL["dead"]))):
        out.append(f"<text x='735' y='{70 + k * 26}' fill='{color}' class='count {label}'>"
                   f"{label} <tspan font-weight='bold'>{value:,}</tspan></text>")
    out.append("<defs><marker id='a' markerWidth='8' markerHeight='8' refX='6' refY='3' orient='auto'>"
               "<path d='M0,0 L0,6 L7,3 z' fill='#495057'/></marker></defs>")
    out.append("</svg>")
    return "".join(out)
