"""Matplotlib figures of a :class:`~wqnb.timeline.Timeline`: what the notebooks teach with.

Every function reads the timeline only (``tl.df``, ``tl.messages()``, ``tl.gauges()``,
``tl.queues``, ``tl.consumers``; DESIGN §1) and follows seaborn's habit:

* **axes-level** functions (:func:`gantt`, :func:`gauges`, :func:`latency`,
  :func:`sweep_heatmap`, :func:`sweep_lines`) draw on ``ax`` (a new figure when ``None``)
  and return that Axes;
* **figure-level** functions (:func:`backpressure`, :func:`latency_split`,
  :func:`sweep`, :func:`overview`) lay several of them out and return the Figure; pass
  ``fig=`` to draw into a Figure you made (the widgets draw into a pyplot-free Figure, so
  nothing is displayed twice in a notebook).

Time is always seconds since the run started, on the x axis; every axis says its unit.
Large runs stay fast: bars are one ``PolyCollection`` a kind and step series are one
``Line2D`` each, so 10,000 messages draw in a few tens of milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .views import pick_consumer

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from .timeline import Timeline

__all__ = [
    "FAR_LIMIT",
    "GAUGE_COLORS",
    "GAUGE_STYLES",
    "HIGHER_IS_BETTER",
    "METRIC_LABELS",
    "OUTCOME_COLORS",
    "RABBIT_COLORS",
    "backpressure",
    "erlang_c_curves",
    "far_limits",
    "gantt",
    "gauges",
    "latency",
    "latency_split",
    "metric_cmap",
    "overview",
    "rabbitmq",
    "rates",
    "rates_series",
    "ready_unacked",
    "ready_unacked_series",
    "short_id",
    "sweep",
    "sweep_heatmap",
    "sweep_lines",
]

#: Bar colours of the Gantt chart, by ``messages()['outcome']``.
OUTCOME_COLORS = {"ack": "#2a9d8f", "nack": "#e76f51", "returned": "#8d99ae"}
#: One colour a gauge; its limit line uses the same colour, dashed.
GAUGE_COLORS = {"depth": "#264653", "buffered": "#e9c46a", "busy": "#2a9d8f", "unsettled": "#e76f51"}
#: RabbitMQ management's colours: Ready / Unacked, and the message rates.
RABBIT_COLORS = {"ready": "#edc240", "unacked": "#afd8f8", "publish": "#edc240",
                 "deliver": "#7eb0e6", "redeliver": "#cb4b4b", "ack": "#4da74d",
                 "nack": "#9440ed"}
RABBIT_STYLES = {"deliver": "--", "redeliver": ":"}
#: Line styles that keep every gauge visible when two share values: ``unsettled`` (which
#: is ``buffered + busy``) is a wide pale band drawn first; the others are thin lines on it.
GAUGE_STYLES: dict[str, dict[str, Any]] = {
    "depth": {"lw": 1.4, "zorder": 2.5},
    "unsettled": {"lw": 5.0, "alpha": 0.35, "zorder": 2.2, "solid_joinstyle": "miter"},
    "busy": {"lw": 1.4, "zorder": 2.5},
    "buffered": {"lw": 1.2, "zorder": 2.6},
}
#: A limit further than this many times above the highest value is not drawn (it would
#: squash the data into the bottom of the axis): it is named on the top edge instead.
FAR_LIMIT = 2.5
#: Metrics where a high value is good; the others (latency, waits, depths) are bad when high.
HIGHER_IS_BETTER = frozenset({"throughput_per_s", "utilisation"})
_LIMIT_OF = {
    "depth": "max_length",
    "buffered": "prefetch",
    "busy": "concurrency",
    "unsettled": "prefetch + concurrency",
}
_GAUGE_LABELS = {
    "depth": "queue depth (ready)",
    "buffered": "buffered (prefetched, not started)",
    "busy": "busy workers",
    "unsettled": "unsettled (delivered, not acked)",
}
_GAUGE_SHORT = {"depth": "ready", "buffered": "buffered", "busy": "busy",
                "unsettled": "unsettled"}
_SPLIT = {
    "queue_wait": ("in the queue", "#264653"),
    "buffer_wait": ("in the prefetch buffer", "#e9c46a"),
    "service": ("in service", "#2a9d8f"),
}
#: Axis labels (with units) of the metrics a sweep reports; unknown metrics use their name.
METRIC_LABELS = {
    "throughput_per_s": "throughput (msg/s)",
    "latency_mean_s": "mean latency (s)",
    "latency_p50_s": "latency p50 (s)",
    "latency_p90_s": "latency p90 (s)",
    "latency_p99_s": "latency p99 (s)",
    "queue_wait_mean_s": "mean wait in queue (s)",
    "buffer_wait_mean_s": "mean wait in buffer (s)",
    "service_mean_s": "mean service time (s)",
    "utilisation": "worker utilisation (0-1)",
    "max_depth": "max queue depth (messages)",
    "max_buffered": "max buffered (messages)",
    "max_unsettled": "max unsettled (messages)",
    "publish_waits": "publisher waits (count)",
    "publish_wait_total_s": "publisher time waiting (s)",
    "duration_s": "run duration (s)",
}


# -- helpers ---------------------------------------------------------------------------


def _new_ax(ax: Axes | None, figsize: tuple[float, float] = (8, 3.5)) -> Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _new_fig(fig: Figure | None, figsize: tuple[float, float]) -> Figure:
    if fig is not None:
        return fig
    return plt.figure(figsize=figsize, layout="constrained")


_memo: dict[str, Any] | None = None


def _gauges(tl: Timeline, consumer: str | None) -> pd.DataFrame:
    """``tl.gauges(consumer)``, computed once per :func:`overview` (two panels use it)."""
    if _memo is not None:
        if _memo.get("tl") is not tl:
            _memo.clear()
            _memo["tl"] = tl
        key = ("gauges", consumer)
        if key not in _memo:
            _memo[key] = tl.gauges(consumer)
        return _memo[key]
    return tl.gauges(consumer)


def _float(s: pd.Series) -> np.ndarray:
    """A numeric (possibly nullable) column as float64 with NaN for missing values."""
    return s.to_numpy(dtype=float, na_value=np.nan)


def _steps(t: np.ndarray, v: np.ndarray, max_points: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Thin a step series for drawing without changing the picture.

    Rows that do not change the value are dropped (exact). If more than ``max_points``
    remain, each of ``max_points / 4`` time bins keeps its first, lowest, highest and last
    point: at screen resolution the line looks the same, and it draws in milliseconds.
    """
    n = len(t)
    if n <= 2:
        return t, v
    keep = np.ones(n, dtype=bool)
    keep[1:] = v[1:] != v[:-1]
    keep[-1] = True
    t, v = t[keep], v[keep]
    if len(t) <= max_points:
        return t, v
    nbins = max_points // 4
    span = t[-1] - t[0] or 1.0
    b = np.minimum(((t - t[0]) / span * nbins).astype(np.int64), nbins - 1)
    idx = np.arange(len(t))
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    ends = np.r_[starts[1:], len(t)] - 1
    vv = np.nan_to_num(v, nan=-np.inf)
    order = np.lexsort((vv, b))  # by bin, then value
    bin_first = np.flatnonzero(np.r_[True, b[order][1:] != b[order][:-1]])
    bin_last = np.r_[bin_first[1:], len(order)] - 1
    chosen = np.unique(np.concatenate([starts, ends, order[bin_first], order[bin_last]]))
    return t[idx[chosen]], v[idx[chosen]]


def _window(start: float | None, end: float | None, ax: Axes) -> None:
    if start is not None or end is not None:
        ax.set_xlim(left=start, right=end)


def _short(name: str | None) -> str:
    """``app.queue:task_consumer`` → ``task_consumer`` (titles stay short)."""
    return "" if name is None else str(name).split(":", 1)[-1]


def _merge_spans(
    starts: np.ndarray, ends: np.ndarray, join: float = 0.0
) -> list[tuple[float, float]]:
    """Union of intervals, as ``(start, width)`` pairs for ``broken_barh``; intervals less
    than ``join`` apart are merged too."""
    if len(starts) == 0:
        return []
    order = np.argsort(starts, kind="stable")
    spans: list[list[float]] = []
    for s, e in zip(starts[order], ends[order], strict=True):
        if spans and s <= spans[-1][1] + join:
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    return [(s, max(e - s, 0.0)) for s, e in spans]


def publish_wait_spans(
    tl: Timeline, queue: str | None = None, *, join: float = 0.0
) -> list[tuple[float, float]]:
    """When publishers were blocked on a full queue, as merged ``(start, width)`` spans.

    A ``publish_wait`` row opens a wait and the same message's ``publish`` row closes it;
    a wait that never closed (the run stopped first) lasts to the end of the timeline.
    Waits less than ``join`` seconds apart count as one span (for drawing: a pixel).
    """
    df = tl.df
    if not len(df):
        return []
    ev = df["event"]
    mask_w = ev == "publish_wait"
    if queue is not None:
        mask_w &= df["queue"] == queue
    waits = df.loc[mask_w, ["t", "msg_id"]]
    if waits.empty:
        return []
    pubs = df.loc[(ev == "publish") & df["msg_id"].isin(waits["msg_id"]), ["t", "msg_id"]]
    first_pub = pubs.groupby("msg_id", observed=True)["t"].min()
    end = waits["msg_id"].map(first_pub).astype(float)
    t_end = float(df["t"].max())
    ends = end.fillna(t_end).to_numpy()
    return _merge_spans(waits["t"].to_numpy(dtype=float), ends, join)


# -- the worker Gantt ------------------------------------------------------------------


def short_id(msg_id: Any) -> str:
    """A message id as a short label: ``#17`` for the runtime's ``…-000000000011`` ids
    (the last 12 hex digits count messages), else its last six characters."""
    text = str(msg_id)
    tail = text[-12:]
    if len(tail) == 12 and all(ch in "0123456789abcdef" for ch in tail):
        return f"#{int(tail, 16)}"
    return text[-6:]


def _legend_above(ax: Axes, handles: list[Any] | None = None, *, ncols: int | None = None) -> None:
    """The legend in one row above the axes, right-aligned: it never covers data."""
    kw: dict[str, Any] = {"handles": handles} if handles is not None else {}
    if handles is None:
        n = len(ax.get_legend_handles_labels()[0])
    else:
        n = len(handles)
    ax.legend(**kw, loc="lower right", bbox_to_anchor=(1.0, 1.0), borderaxespad=0.15,
              fontsize="x-small", ncols=ncols or max(n, 1), frameon=False,
              handlelength=1.4, columnspacing=0.9)


def gantt(
    tl: Timeline,
    consumer: str | None = None,
    *,
    ax: Axes | None = None,
    start: float | None = None,
    end: float | None = None,
    legend: bool = True,
    highlight: str | Sequence[str] | None = None,
    labels: bool | None = None,
) -> Axes:
    """One lane per worker, one bar per handled delivery, coloured by its outcome.

    Acks are green, nacks red; a delivery that was a retry (``attempt`` ≥ 2) is hatched;
    a message sent to its dead-letter queue gets a large ✕ (black, white-edged, above the
    bars) where its last attempt ended; deliveries handed back on stop are grey.
    ``highlight`` (a ``msg_id`` or several) outlines that message's attempts and joins
    them across lanes, so one message can be followed through its retries. ``labels``
    writes each bar's short id (``#17``) in it; by default when there are at most 40 bars.
    ``start``/``end`` zoom the time axis (s). The legend sits above the axes.
    """
    ax = _new_ax(ax)
    consumer = pick_consumer(tl, consumer)
    m = tl.messages()  # (computed once per Timeline)
    if consumer is not None and len(m):
        m = m[m["consumer"] == consumer]
    m = m[m["t_start"].notna() & m["worker"].notna()]
    t0 = m["t_start"].to_numpy(dtype=float)
    t1 = m["t_end"].to_numpy(dtype=float, na_value=np.nan)
    t_last = float(tl.df["t"].max()) if len(tl.df) else 0.0
    t1 = np.where(np.isnan(t1), t_last, t1)
    lane = _float(m["worker"])
    attempt = m["attempt"].to_numpy(dtype=float, na_value=1.0)
    outcome = m["outcome"].astype(str).to_numpy()
    h = 0.8
    edge, lw = ("white", 0.5) if len(m) <= 2000 else ("none", 0.0)  # thin gaps if visible
    # rectangles as (n, 4, 2) vertex arrays: one PolyCollection per (outcome, retry) kind
    verts = np.empty((len(m), 4, 2))
    verts[:, 0, 0] = verts[:, 1, 0] = t0
    verts[:, 2, 0] = verts[:, 3, 0] = t1
    verts[:, 0, 1] = verts[:, 3, 1] = lane - h / 2
    verts[:, 1, 1] = verts[:, 2, 1] = lane + h / 2
    handles: list[Any] = []
    for kind, color in OUTCOME_COLORS.items():
        is_kind = outcome == kind
        for retry in (False, True):
            sel = is_kind & ((attempt > 1) if retry else (attempt <= 1))
            if not sel.any():
                continue
            coll = PolyCollection(
                verts[sel],
                facecolors=color,
                edgecolors=edge if not retry else "black",
                linewidths=lw if not retry else 0.3,
                hatch="////" if retry else None,
            )
            coll.set_gid(f"bars:{kind}:{'retry' if retry else 'first'}")
            ax.add_collection(coll)
        if is_kind.any():
            handles.append(Patch(facecolor=color, label=kind))
    if (attempt > 1).any():
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="////", label="retry"))
    # dead letters: where the message's last attempt ended, above every bar
    if "dead_lettered" in m and m["dead_lettered"].any():
        last = m[m["dead_lettered"]]
        dl = ax.scatter(last["t_end"].to_numpy(dtype=float), _float(last["worker"]), marker="X",
                        s=90, facecolor="black", edgecolor="white", linewidths=1.2, zorder=4,
                        clip_on=False, label="dead-lettered")
        dl.set_gid("dead-letters")
        handles.append(Line2D([], [], marker="X", markersize=8, markerfacecolor="black",
                              markeredgecolor="white", color="black", ls="",
                              label="dead-lettered"))
    if highlight is not None:
        wanted = {highlight} if isinstance(highlight, str) else set(highlight)
        ids = m["msg_id"].astype(str).to_numpy()
        sel = np.isin(ids, list(wanted))
        if not sel.any():
            raise ValueError(f"highlight: no delivery of {sorted(wanted)} was handled by "
                             f"{_short(consumer) or 'this timeline'}")
        ring = PolyCollection(verts[sel], facecolors="none", edgecolors="#d00000",
                              linewidths=2.2, zorder=3.5)
        ring.set_gid("highlight")
        ax.add_collection(ring)
        for mid in sorted(wanted):
            one = np.flatnonzero(ids == mid)
            one = one[np.argsort(t0[one], kind="stable")]
            if len(one) > 1:  # the path from each attempt's end to the next one's start
                nan = np.full(len(one) - 1, np.nan)  # one segment a hop, NaN between
                xs = np.ravel(np.column_stack([t1[one][:-1], t0[one][1:], nan]))[:-1]
                ys = np.ravel(np.column_stack([lane[one][:-1], lane[one][1:], nan]))[:-1]
                ax.plot(xs, ys, color="#d00000", lw=1.2, ls=":", zorder=3.4, gid="highlight-path")
        handles.append(Patch(facecolor="none", edgecolor="#d00000", lw=2,
                             label=", ".join(short_id(i) for i in sorted(wanted))))
    if labels is None:
        labels = 0 < len(m) <= 40
    if labels:
        ids = m["msg_id"].astype(str).to_numpy()
        for x0, x1, y, mid in zip(t0, t1, lane, ids, strict=True):
            ax.text((x0 + x1) / 2, y, short_id(mid), ha="center", va="center",
                    fontsize="x-small", color="white", zorder=3.6, gid="bar-label", clip_on=True)
    n_lanes = int(np.nanmax(lane)) + 1 if len(lane) else 1
    info = tl.consumers.get(consumer) if consumer is not None else None
    if info is not None:
        n_lanes = max(n_lanes, info.concurrency)
    ax.set_ylim(-0.6, n_lanes - 0.4)
    ax.set_xlim(0, max(t_last, 1e-9))
    if n_lanes <= 16:
        ax.set_yticks(range(n_lanes))
    else:
        ax.yaxis.get_major_locator().set_params(integer=True)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.set_ylabel("worker")
    title = f"{_short(consumer)}: who handled what" if consumer else "workers"
    if info is not None:
        title += f" (concurrency {info.concurrency}, prefetch {info.prefetch})"
    ax.set_title(title, loc="left", fontsize="medium")
    if legend and handles:
        _legend_above(ax, handles)
    _window(start, end, ax)
    return ax


# -- gauges over time: the backpressure picture -----------------------------------------


def _limits(tl: Timeline, consumer: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    info = tl.consumers.get(consumer) if consumer is not None else None
    if info is not None:
        out["prefetch"] = info.prefetch
        out["concurrency"] = info.concurrency
        out["prefetch + concurrency"] = info.prefetch + info.concurrency
        q = tl.queues.get(info.queue)
        if q is not None and q.max_length:
            out["max_length"] = q.max_length
    return out


def far_limits(ax: Axes) -> list[str]:
    """The labels of the limits :func:`gauges` named on the top edge instead of drawing
    (they were more than :data:`FAR_LIMIT` times above the data)."""
    return [t.get_text() for t in ax.texts if t.get_gid() == "far-limit"]


def gauges(
    tl: Timeline,
    consumer: str | None = None,
    *,
    which: Sequence[str] = ("depth", "buffered", "busy", "unsettled"),
    ax: Axes | None = None,
    limits: bool = True,
    waits: bool = True,
    start: float | None = None,
    end: float | None = None,
    legend: bool | str = True,
    headroom: float = 1.12,
) -> Axes:
    """The gauges of one consumer and its queue as step lines over time.

    ``which`` picks among ``depth`` (ready in the queue), ``buffered`` (in the consumer's
    prefetch buffer), ``busy`` (workers running a handler) and ``unsettled`` (delivered,
    not yet acked or nacked: ``buffered + busy``, drawn as a wide pale band so the thin
    lines on it stay visible). With ``limits`` each gauge's bound is drawn dashed in its
    colour (``max_length`` for depth, ``prefetch``, ``concurrency``, ``prefetch +
    concurrency``) when it is near the data; a bound far above it (more than
    :data:`FAR_LIMIT` × the highest value) is named on the top edge, ``prefetch = 800 ↑``,
    so the axis keeps the data's scale. With ``waits`` the stretches where a publisher was
    blocked on a full queue are shaded. The legend sits right of the axes;
    ``legend="above"`` puts it in a row above them, any matplotlib ``loc`` inside,
    ``legend=False`` leaves it out; ``headroom`` is the top of the y axis as a multiple of
    the highest line or limit drawn.
    """
    ax = _new_ax(ax)
    consumer = pick_consumer(tl, consumer)
    g = _gauges(tl, consumer)
    t = g["t"].to_numpy(dtype=float)
    lim = _limits(tl, consumer) if limits else {}
    top = 0.0
    for name in which:
        if name not in GAUGE_COLORS:
            raise ValueError(f"unknown gauge {name!r} (use {', '.join(GAUGE_COLORS)})")
    order = sorted(which, key=lambda n: GAUGE_STYLES[n]["zorder"])  # the wide band first
    names = _GAUGE_SHORT if legend == "above" else _GAUGE_LABELS  # one short row above
    for name in order:
        color = GAUGE_COLORS[name]
        x, y = _steps(t, _float(g[name]))
        ax.plot(x, y, drawstyle="steps-post", color=color, label=names[name],
                gid=f"gauge:{name}", **GAUGE_STYLES[name])
        if len(y):
            top = max(top, float(np.nanmax(y)))
    data_top = max(top, 1.0)
    far: list[tuple[str, float, str]] = []
    for name in which:
        bound = lim.get(_LIMIT_OF[name])
        if bound is None:
            continue
        color = GAUGE_COLORS[name]
        if bound > FAR_LIMIT * data_top:
            far.append((_LIMIT_OF[name], bound, color))
            continue
        # a wide pale band under a thin dashed line: visible even when the gauge sits
        # right on it (a saturated pool, a full buffer)
        ax.axhline(bound, color=color, lw=5, alpha=0.25, zorder=1.5)
        ax.axhline(bound, color=color, ls="--", lw=1, gid=f"limit:{name}",
                   label=f"{_LIMIT_OF[name].replace('prefetch + concurrency', 'p + c')} "
                         f"{bound:g}" if legend == "above" else f"{_LIMIT_OF[name]} = {bound:g}")
        top = max(top, bound)
    for k, (label, bound, color) in enumerate(far):
        ax.text(0.995, 0.97 - 0.11 * k, f"{label} = {bound:g} ↑", transform=ax.transAxes,
                ha="right", va="top", fontsize="x-small", color=color, fontweight="bold",
                gid="far-limit",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    if far:  # room under the labels
        headroom = max(headroom, 1.15 + 0.11 * len(far) * 1.5)
    if waits:
        info = tl.consumers.get(consumer) if consumer is not None else None
        t_span = float(t[-1] - t[0]) if len(t) else 0.0
        spans = publish_wait_spans(tl, info.queue if info is not None else None,
                                   join=t_span / 2000)  # closer than a pixel: one span
        if spans:
            ax.broken_barh(spans, (0, 1), transform=ax.get_xaxis_transform(),
                           facecolors="#9b2226", alpha=0.12, label="publisher waiting")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("messages")
    ax.set_ylim(0, max(top, 1.0) * headroom)
    ax.yaxis.get_major_locator().set_params(integer=True)
    if len(t):
        ax.set_xlim(0, max(float(t[-1]), 1e-9))
    ax.set_title(f"{_short(consumer)}: gauges" if consumer else "gauges", loc="left",
                 fontsize="medium")
    if getattr(tl, "dropped", 0):  # Runtime(max_events=): say the start is gone
        ax.text(0.005, 0.97, f"first {tl.dropped:,} events dropped (max_events)", transform=ax.transAxes,
                ha="left", va="top", fontsize="x-small", color="#6c757d", gid="dropped-note",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    if legend is True:
        ax.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0)
    elif legend == "above":
        _legend_above(ax)
    elif legend:
        ax.legend(loc=legend, fontsize="x-small", ncols=3, framealpha=0.8)
    _window(start, end, ax)
    return ax


def backpressure(
    tl: Timeline,
    consumer: str | None = None,
    *,
    fig: Figure | None = None,
    start: float | None = None,
    end: float | None = None,
) -> Figure:
    """Two panels sharing the time axis: the queue (depth vs ``max_length``, publisher waits)
    above, the consumer (buffered, busy, unsettled vs their limits) below."""
    fig = _new_fig(fig, (9, 5.5))
    ax_q, ax_c = fig.subplots(2, 1, sharex=True)
    gauges(tl, consumer, which=("depth",), ax=ax_q, start=start, end=end)
    ax_q.set_title("the queue: ready messages, and publishers blocked when it is full",
                   loc="left", fontsize="medium")
    ax_q.set_xlabel("")
    gauges(tl, consumer, which=("buffered", "busy", "unsettled"), ax=ax_c, waits=False,
           start=start, end=end)
    ax_c.set_title("the consumer: prefetch buffer, workers, unsettled", loc="left",
                   fontsize="medium")
    return fig


# -- latency split ---------------------------------------------------------------------


def _split(tl: Timeline, consumer: str | None) -> pd.DataFrame:
    m = tl.messages()  # (computed once per Timeline)
    if consumer is not None and len(m):
        m = m[m["consumer"] == consumer]
    return m


def latency(
    tl: Timeline,
    consumer: str | None = None,
    *,
    kind: str = "hist",
    ax: Axes | None = None,
    bins: int = 40,
    logx: bool = False,
    legend: bool | str = True,
) -> Axes:
    """Where each delivery spent its time: in the queue, in the prefetch buffer, in service.
    (``legend="above"``: a short legend in a row above the axes.)

    ``kind="hist"`` draws the three distributions as step histograms on shared bins;
    ``kind="cdf"`` draws their empirical CDFs (fraction of deliveries ≤ x), where the
    median and the tail read straight off the curve.
    """
    if kind not in ("hist", "cdf"):
        raise ValueError(f"kind must be 'hist' or 'cdf', not {kind!r}")
    ax = _new_ax(ax, (6, 3.5))
    m = _split(tl, pick_consumer(tl, consumer) if consumer is not None else None)
    series = {}
    for col in _SPLIT:
        v = m[col].to_numpy(dtype=float, na_value=np.nan) if col in m else np.array([])
        series[col] = np.sort(v[~np.isnan(v)])
    allv = np.concatenate(list(series.values())) if series else np.array([])
    if kind == "hist" and len(allv):
        if logx:
            lo = max(allv[allv > 0].min() if (allv > 0).any() else 1e-6, 1e-6)
            edges = np.geomspace(lo, max(allv.max(), lo * 10), bins + 1)
        else:
            edges = np.histogram_bin_edges(allv, bins=bins)
        for col, v in series.items():
            label, color = _SPLIT[col]
            if len(v):
                ax.hist(v, bins=edges, histtype="step", lw=1.5, color=color, label=label)
        ax.set_ylabel("deliveries")
    elif kind == "cdf":
        for col, v in series.items():
            label, color = _SPLIT[col]
            if len(v):
                y = np.arange(1, len(v) + 1) / len(v)
                if len(v) > 1000:  # 1,000 evenly spaced quantiles draw the same curve
                    pick = np.unique(np.linspace(0, len(v) - 1, 1000).astype(np.int64))
                    v, y = v[pick], y[pick]
                ax.plot(np.r_[v[0], v], np.r_[0.0, y], drawstyle="steps-post", color=color,
                        lw=1.5, label=label)
        ax.set_ylabel("fraction of deliveries ≤ x")
        ax.set_ylim(0, 1.02)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel("time (s)")
    ax.set_title("latency split: queue, buffer, service", loc="left", fontsize="medium")
    if legend == "above" and len(allv):  # in a row above the axes: never over the bars
        short = {label: label.removeprefix("in the ").removeprefix("in ").replace("prefetch ", "")
                 for label, _ in _SPLIT.values()}
        handles, labels = ax.get_legend_handles_labels()
        _legend_above(ax, [Line2D([], [], color=h.get_edgecolor(), lw=1.5, label=short[lab])
                           for h, lab in zip(handles, labels, strict=True)])
    elif legend and len(allv):
        ax.legend(fontsize="small", loc="upper right" if kind == "hist" else "lower right")
    return ax


def latency_split(
    tl: Timeline, consumer: str | None = None, *, fig: Figure | None = None,
    logx: bool = False,
) -> Figure:
    """The latency split as a histogram (left) and a CDF (right)."""
    fig = _new_fig(fig, (10, 3.5))
    ax_h, ax_c = fig.subplots(1, 2)
    latency(tl, consumer, kind="hist", ax=ax_h, logx=logx)
    latency(tl, consumer, kind="cdf", ax=ax_c, logx=logx, legend=False)
    ax_c.set_title("… as a CDF", loc="left", fontsize="medium")
    return fig


# -- sweeps ----------------------------------------------------------------------------


def _metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _spans_decades(values: np.ndarray, ratio: float = 20.0) -> bool:
    v = values[np.isfinite(values)]
    return bool(v.size and (v > 0).all() and v.max() / v.min() > ratio)


def metric_cmap(metric: str) -> str:
    """The colour map of a metric's heatmap. Yellow always means *good*: ``viridis``
    (high is yellow) for throughput and utilisation, ``magma_r`` (low is yellow) for
    latency, waits and depths; two metrics of opposite meaning never share a scale."""
    return "viridis" if metric in HIGHER_IS_BETTER else "magma_r"


def sweep_heatmap(
    results: pd.DataFrame,
    metric: str = "throughput_per_s",
    *,
    x: str = "prefetch",
    y: str = "concurrency",
    ax: Axes | None = None,
    annotate: bool = True,
    fmt: str = "{:.3g}",
    cmap: str | None = None,
    log: bool | None = None,
) -> Axes:
    """``metric`` over the ``y`` × ``x`` grid (one cell a run), annotated with its value.

    ``results`` is one row a run with the grid's columns and the metric (what
    :func:`wqnb.sweep` and :class:`wqnb.widgets.Sweep` return). Grid values are shown as
    categories, so log-spaced grids get evenly sized cells. The colour map follows
    :func:`metric_cmap` (yellow = good) unless ``cmap`` is given; ``log`` (by default:
    when the values span more than a factor 20) puts the colour scale on a log scale.
    """
    from matplotlib.colors import LogNorm

    ax = _new_ax(ax, (5, 4))
    table = results.pivot_table(index=y, columns=x, values=metric, aggfunc="mean")
    table = table.sort_index().sort_index(axis=1)
    data = table.to_numpy(dtype=float)
    if log is None:
        log = _spans_decades(data)
    finite = data[np.isfinite(data)]
    norm = LogNorm(finite[finite > 0].min(), finite.max()) if log and (finite > 0).any() else None
    im = ax.imshow(data, cmap=cmap or metric_cmap(metric), norm=norm, aspect="auto",
                   origin="lower")
    ax.set_xticks(range(len(table.columns)), [f"{v:g}" for v in table.columns])
    ax.set_yticks(range(len(table.index)), [f"{v:g}" for v in table.index])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    cbar = ax.figure.colorbar(im, ax=ax)
    better = "higher" if metric in HIGHER_IS_BETTER else "lower"
    cbar.set_label(f"{_metric_label(metric)}{', log scale' if norm else ''} ({better} is better)",
                   fontsize="small")
    if annotate and data.size <= 100:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                v = data[i, j]
                if np.isfinite(v):  # dark text on the light half of the scale
                    r, g_, b, _ = im.cmap(im.norm(v))
                    light = 0.299 * r + 0.587 * g_ + 0.114 * b > 0.5
                    ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize="small",
                            color="black" if light else "white")
    ax.set_title(_metric_label(metric), loc="left", fontsize="medium")
    return ax


def sweep_lines(
    results: pd.DataFrame,
    metric: str = "latency_p99_s",
    *,
    x: str = "prefetch",
    hue: str = "concurrency",
    ax: Axes | None = None,
    logx: bool = True,
    logy: bool | None = None,
) -> Axes:
    """``metric`` against ``x``, one line per value of ``hue``; ``logy`` by default when
    the values span more than a factor 20 (latency across an overloaded and an idle
    consumer spans decades)."""
    ax = _new_ax(ax, (5, 3.5))
    cmap = plt.get_cmap("viridis")
    levels = sorted(results[hue].unique())
    for k, level in enumerate(levels):
        sub = results[results[hue] == level].groupby(x)[metric].mean().sort_index()
        color = cmap(k / max(len(levels) - 1, 1))
        ax.plot(sub.index.to_numpy(dtype=float), sub.to_numpy(dtype=float), marker="o",
                ms=4, color=color, label=f"{hue} {level:g}")
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    grid = np.sort(results[x].unique()).astype(float)
    if len(grid) <= 12:  # the grid's own values as ticks, written plainly (not 10^k)
        ax.set_xticks(grid, [f"{v:g}" for v in grid])
    if logy is None:
        logy = _spans_decades(results[metric].to_numpy(dtype=float))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(_metric_label(metric))
    ax.legend(fontsize="x-small", title=None, loc="best")  # few points: "best" is cheap
    ax.set_title(f"{_metric_label(metric)} vs {x}", loc="left", fontsize="medium")
    return ax


def sweep(
    results: pd.DataFrame,
    metrics: Sequence[str] = ("throughput_per_s", "latency_p99_s"),
    *,
    x: str = "prefetch",
    y: str = "concurrency",
    fig: Figure | None = None,
) -> Figure:
    """For each metric, its heatmap over the grid (top row) and its lines vs ``x`` (bottom)."""
    fig = _new_fig(fig, (5.2 * len(metrics), 7.5))
    axes = fig.subplots(2, len(metrics), squeeze=False)
    for k, metric in enumerate(metrics):
        sweep_heatmap(results, metric, x=x, y=y, ax=axes[0, k])
        sweep_lines(results, metric, x=x, hue=y, ax=axes[1, k])
    return fig


# -- queueing theory against measurements ---------------------------------------------


def erlang_c_curves(
    measured: pd.DataFrame | None = None,
    *,
    service_rate: float,
    servers: Sequence[int] = (1, 2, 4, 8),
    ax: Axes | None = None,
    logy: bool = True,
) -> Axes:
    """Mean wait before service (Wq) against utilisation ρ = λ / (c μ): Erlang C's M/M/c
    curve for each number of workers c, and measured runs on top.

    ``measured`` has one row a run with ``servers``, ``utilisation`` (the ρ it was run
    at) and ``wait`` (its mean wait, s); runs of several seeds at the same point are drawn
    as their mean with a bar from the lowest to the highest: the spread a finite run has.
    The wait spans decades across ρ, so the y axis is logarithmic by default.
    """
    from .theory import erlang_c

    ax = _new_ax(ax, (7, 4.5))
    cmap = plt.get_cmap("viridis")
    rho = np.linspace(0.02, 0.97, 200)
    for k, c in enumerate(servers):
        color = cmap(k / max(len(servers) - 1, 1) * 0.9)
        wq = [erlang_c(c, r * c * service_rate, service_rate).wait for r in rho]
        ax.plot(rho, wq, color=color, lw=1.5, label=f"c = {c} (Erlang C)", gid=f"theory:{c}")
        if measured is not None and len(measured):
            pts = measured[measured["servers"] == c]
            if len(pts):
                g = pts.groupby("utilisation")["wait"].agg(["mean", "min", "max"]).sort_index()
                x = g.index.to_numpy(dtype=float)
                y = g["mean"].to_numpy(dtype=float)
                err = np.vstack([y - g["min"].to_numpy(dtype=float), g["max"].to_numpy(dtype=float) - y])
                ax.errorbar(x, y, yerr=err, fmt="o", ms=5, color=color, mec="white", mew=0.8,
                            capsize=3, lw=1, zorder=3, gid=f"measured:{c}")
    if measured is not None and len(measured):
        ax.plot([], [], "o", color="grey", label="measured (mean, min–max over seeds)")
    if logy:
        ax.set_yscale("log")
        # the curves fall to 1e-13 s at low load: keep the axis where waits can be measured
        waits = measured["wait"].to_numpy(dtype=float) if measured is not None and len(measured) else np.array([])
        waits = waits[np.isfinite(waits) & (waits > 0)]
        top = ax.get_ylim()[1]
        ax.set_ylim(bottom=max(waits.min() / 5 if waits.size else 0.0, top * 1e-5))
    ax.set_xlim(0, 1)
    ax.set_xlabel("utilisation ρ = λ / (c μ)")
    ax.set_ylabel("mean wait before service Wq (s)")
    ax.set_title(f"M/M/c: wait against load (service {1 / service_rate:g} s)", loc="left",
                 fontsize="medium")
    ax.legend(fontsize="x-small", loc="lower right")  # the curves rise to the right
    return ax


# -- the pictures RabbitMQ's management UI draws ------------------------------------------


def _queue_of(tl: Timeline, queue: str | None) -> str | None:
    if queue is not None:
        known = list(tl.queues) or [str(q) for q in tl.df["queue"].dropna().unique()]
        if queue not in known:
            raise ValueError(f"unknown queue {queue!r} (this timeline has: {', '.join(known) or 'none'})")
        return queue
    consumer = pick_consumer(tl, None)
    if consumer is not None and consumer in tl.consumers:
        return tl.consumers[consumer].queue
    present = tl.df["queue"].dropna()
    return str(present.iloc[0]) if len(present) else None


def ready_unacked_series(tl: Timeline, queue: str | None = None, *,
                         samples: int | None = None) -> pd.DataFrame:
    """``t, ready, unacked`` of one queue after each event (``samples``: at that many
    evenly spaced instants instead, as RabbitMQ samples): *ready* is the queue's depth,
    *unacked* the messages delivered to any of its consumers and not yet settled."""
    queue = _queue_of(tl, queue)
    df = tl.df
    sel = df[df["queue"] == queue] if queue is not None else df.iloc[:0]
    t = sel["t"].to_numpy(dtype=float)
    ready = sel["depth"].ffill().fillna(0).to_numpy(dtype=float)
    unacked = np.zeros(len(sel))
    cons = sel["consumer"]
    for c in cons.dropna().unique():
        v = sel["unsettled"].where(cons == c)
        unacked += v.ffill().fillna(0).to_numpy(dtype=float)
    if len(t):
        last = np.append(t[1:] != t[:-1], True)  # the state after each instant
        t, ready, unacked = t[last], ready[last], unacked[last]
    if samples and len(t):
        grid = np.linspace(0.0, t[-1], samples)
        idx = np.searchsorted(t, grid, side="right") - 1
        ok = idx >= 0
        ready = np.where(ok, ready[np.maximum(idx, 0)], 0.0)
        unacked = np.where(ok, unacked[np.maximum(idx, 0)], 0.0)
        t = grid
    out = pd.DataFrame({"t": t, "ready": ready.astype(np.int64), "unacked": unacked.astype(np.int64)})
    out.attrs["queue"] = queue
    return out


def ready_unacked(tl: Timeline, queue: str | None = None, *, ax: Axes | None = None) -> Axes:
    """RabbitMQ management's *Queued messages* chart: Ready and Unacked, stacked; the top
    of the stack is the total a queue holds (RabbitMQ's *Total*)."""
    ax = _new_ax(ax, (8, 3))
    s = ready_unacked_series(tl, queue)
    t = s["t"].to_numpy()
    ready, unacked = s["ready"].to_numpy(dtype=float), s["unacked"].to_numpy(dtype=float)
    ax.fill_between(t, 0, ready, step="post", color=RABBIT_COLORS["ready"], alpha=0.85,
                    lw=0, label="Ready", gid="stack:ready")
    ax.fill_between(t, ready, ready + unacked, step="post", color=RABBIT_COLORS["unacked"],
                    alpha=0.85, lw=0, label="Unacked", gid="stack:unacked")
    x, y = _steps(t, ready + unacked)
    ax.plot(x, y, drawstyle="steps-post", color="#333333", lw=0.8, label="Total")
    top = float((ready + unacked).max()) if len(t) else 1.0
    ax.set_ylim(0, max(top, 1.0) * 1.08)
    ax.set_xlim(0, max(float(t[-1]) if len(t) else 0.0, 1e-9))
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("messages")
    ax.set_title(f"{_short(s.attrs['queue'])}: queued messages", loc="left", fontsize="medium")
    _legend_above(ax)
    return ax


def _nice_bin(span: float, target: int = 80) -> float:
    raw = max(span, 1e-9) / target
    exp = 10 ** np.floor(np.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * exp:
            return float(m * exp)
    return float(10 * exp)  # pragma: no cover


def rates_series(tl: Timeline, queue: str | None = None, *, bin: float | None = None) -> pd.DataFrame:
    """Messages per second of one queue in bins of ``bin`` seconds (a round width giving
    about 80 bins by default): ``t`` (bin start), ``publish``, ``deliver``, ``redeliver``
    (deliveries after the first), ``ack``, ``nack`` — RabbitMQ's *Message rates*."""
    queue = _queue_of(tl, queue)
    df = tl.df
    sel = df[df["queue"] == queue] if queue is not None else df.iloc[:0]
    t_end = float(df["t"].max()) if len(df) else 0.0
    width = bin or _nice_bin(t_end)
    if not width > 0:
        raise ValueError(f"bin must be > 0 seconds, got {bin!r}")
    n_bins = max(int(np.ceil(t_end / width)), 1)
    edges = np.arange(n_bins + 1) * width
    ev = sel["event"].astype(str).to_numpy()
    t = sel["t"].to_numpy(dtype=float)
    attempt = sel["attempt"].to_numpy(dtype=float, na_value=1.0)
    kinds = {
        "publish": ev == "publish",
        "deliver": ev == "deliver",
        "redeliver": (ev == "deliver") & (attempt > 1),
        "ack": ev == "ack",
        "nack": ev == "nack",
    }
    out = {"t": edges[:-1]}
    for name, mask in kinds.items():
        counts, _ = np.histogram(t[mask], bins=edges)
        out[name] = counts / width
    res = pd.DataFrame(out)
    res.attrs.update(queue=queue, bin=width)
    return res


def rates(tl: Timeline, queue: str | None = None, *, ax: Axes | None = None,
          bin: float | None = None) -> Axes:
    """RabbitMQ management's *Message rates* chart: publish, deliver, redeliver, ack and
    nack per second over time (the last bin may be partly empty: the run ended in it)."""
    ax = _new_ax(ax, (8, 3))
    r = rates_series(tl, queue, bin=bin)
    width = r.attrs["bin"]
    x = np.r_[r["t"].to_numpy(), r["t"].iloc[-1] + width]
    for name, color in RABBIT_COLORS.items():
        if name not in r or (name in ("redeliver", "nack") and not r[name].any()):
            continue
        y = r[name].to_numpy()
        ax.plot(x, np.r_[y, y[-1]], drawstyle="steps-post", color=color, lw=1.3,
                ls=RABBIT_STYLES.get(name, "-"), label=name, gid=f"rate:{name}")
    ax.set_xlim(0, x[-1])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"messages/s (per {width:g} s)")
    ax.set_title(f"{_short(r.attrs['queue'])}: message rates", loc="left", fontsize="medium")
    _legend_above(ax)
    return ax


def rabbitmq(tl: Timeline, queue: str | None = None, *, fig: Figure | None = None,
             bin: float | None = None) -> Figure:
    """The two charts of a queue's page in RabbitMQ's management UI, from any timeline:
    queued messages (Ready / Unacked, stacked) above, message rates below."""
    fig = _new_fig(fig, (9, 5.5))
    ax_q, ax_r = fig.subplots(2, 1, sharex=True)
    ready_unacked(tl, queue, ax=ax_q)
    ax_q.set_xlabel("")
    rates(tl, queue, ax=ax_r, bin=bin)
    return fig


# -- everything at once (the Explorer's figure, ``wqnb demo``) -------------------------


def overview(
    tl: Timeline,
    consumer: str | None = None,
    *,
    fig: Figure | None = None,
) -> Figure:
    """Gantt, queue depth and consumer gauges on one time axis (left); latency split (right).

    This is the :class:`~wqnb.widgets.Explorer`'s picture. It uses fixed margins rather
    than a layout engine, so that it redraws quickly (10,000 messages in about 0.3 s).
    """
    global _memo
    if fig is None:
        fig = plt.figure(figsize=(12, 7.5))
    gs = fig.add_gridspec(3, 2, width_ratios=(2.3, 1), left=0.055, right=0.985, top=0.955,
                          bottom=0.07, hspace=0.42, wspace=0.17)
    ax_g = fig.add_subplot(gs[0, 0])
    ax_q = fig.add_subplot(gs[1, 0], sharex=ax_g)
    ax_c = fig.add_subplot(gs[2, 0], sharex=ax_g)
    ax_h = fig.add_subplot(gs[0, 1])
    ax_cdf = fig.add_subplot(gs[1:3, 1])
    _memo = {}
    try:
        gantt(tl, consumer, ax=ax_g)
        ax_g.set_xlabel("")
        # legends inside, above the lines (a "best" legend costs seconds on big runs)
        gauges(tl, consumer, which=("depth",), ax=ax_q, legend="above")
        ax_q.set_title("queue (shaded: publisher waits)", loc="left",
                       fontsize="medium")
        ax_q.set_xlabel("")
        gauges(tl, consumer, which=("buffered", "busy", "unsettled"), ax=ax_c, waits=False,
               legend="above")
        ax_c.set_title("consumer", loc="left", fontsize="medium")
        latency(tl, consumer, kind="hist", ax=ax_h, legend="above")
        ax_h.set_title("latency split", loc="left", fontsize="medium")
        latency(tl, consumer, kind="cdf", ax=ax_cdf)
        ax_cdf.set_title("latency split, CDF", loc="left", fontsize="medium")
    finally:
        _memo = None
    return fig
