"""Views of a :class:`~wqnb.timeline.Timeline`: per delivery, gauges, and a summary.

They read the event DataFrame only (DESIGN §1), so they work the same on a simulated
run, a live runtime and a timeline loaded back from CSV or Parquet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .timeline import Timeline

__all__ = ["COUNT_KEYS", "Summary", "format_seconds", "gauges", "messages", "summary"]

_READY = ("publish", "requeue", "dead_letter")


def messages(tl: Timeline) -> pd.DataFrame:
    """One row per delivery attempt, with its waits and service time (seconds).

    Columns: ``msg_id, queue, consumer, worker, attempt, t_ready, t_deliver, t_start,
    t_end, outcome, dead_lettered, queue_wait, buffer_wait, service, error``, then the
    ones below, and last ``t_arrival``.
    ``outcome`` is ``ack``, ``nack``, ``returned`` (handed back to the queue by a stop,
    unstarted or interrupted) or ``<NA>`` (still in hand). ``t_ready`` is when the message
    became ready in the queue for this attempt (its publish, or the requeue before it).
    Then ``redelivered`` (the broker flagged the delivery as a redelivery), and on a
    merged timeline ``process``.

    Several processes (:meth:`Timeline.merge`, docs/brokers.md): a message published
    elsewhere starts at its first ``deliver`` (that is its ``t_ready``); a delivery that
    never ended where it was made but was delivered again later (its process died, and
    the broker took the message back) is ``returned`` at that next delivery.
    """
    df = tl.df
    cols = ["msg_id", "queue", "consumer", "worker", "attempt", "t_ready", "t_deliver",
            "t_start", "t_end", "outcome", "dead_lettered", "queue_wait", "buffer_wait",
            "service", "error", "redelivered"] + (["process"] if "process" in df.columns else [])
    if df.empty:
        return pd.DataFrame(columns=cols + ["t_arrival"])
    msg = df["msg_id"].cat.codes.to_numpy()
    event = df["event"].astype(str).to_numpy()
    is_deliver = event == "deliver"
    dno = pd.Series(is_deliver.astype(np.int32)).groupby(msg).cumsum().to_numpy()
    t = df["t"].to_numpy()
    ready = pd.Series(np.where(np.isin(event, _READY), t, np.nan)).groupby(msg).ffill().to_numpy()
    if np.isnan(ready[is_deliver]).any():  # first seen through a broker: starts at its first deliver
        first = pd.Series(np.where(is_deliver, t, np.nan)).groupby(msg).transform("min").to_numpy()
        ready = np.where(np.isnan(ready), first, ready)
    redelivered = df["redelivered"].to_numpy(dtype=bool) if "redelivered" in df.columns else np.zeros(len(df), bool)
    extra = {"process": df["process"]} if "process" in df.columns else {}
    key = pd.DataFrame({"m": msg, "d": dno})

    def part(mask: np.ndarray, **columns: object) -> pd.DataFrame:
        out = key[mask].copy()
        for name, values in columns.items():
            out[name] = np.asarray(values)[mask] if isinstance(values, np.ndarray) else values[mask].to_numpy()
        return out.drop_duplicates(["m", "d"], keep="first")

    deliveries = part(
        is_deliver,
        msg_id=df["msg_id"], queue=df["queue"], consumer=df["consumer"], attempt=df["attempt"],
        t_ready=ready, t_deliver=t, redelivered=redelivered, **extra,
    )
    starts = part(event == "start", worker=df["worker"], t_start=t)
    ends = part(np.isin(event, ("ack", "nack")), t_end=t, outcome=event, error=df["error"])
    returned = part((event == "requeue") & (dno > 0), t_returned=t)
    dead = part(event == "dead_letter", dead_lettered=np.ones(len(df), dtype=bool))
    out = deliveries.merge(starts, on=["m", "d"], how="left").merge(ends, on=["m", "d"], how="left")
    out = out.merge(returned, on=["m", "d"], how="left").merge(dead, on=["m", "d"], how="left")
    no_end = out["outcome"].isna() & out["t_returned"].notna()
    out.loc[no_end, "outcome"] = "returned"
    out.loc[no_end, "t_end"] = out.loc[no_end, "t_returned"]
    if out["outcome"].isna().any():  # taken back by the broker: ends at the next delivery
        later = deliveries[["m", "d", "t_deliver"]].rename(columns={"t_deliver": "t_next"})
        later["d"] -= 1
        t_next = out[["m", "d"]].merge(later, on=["m", "d"], how="left")["t_next"].to_numpy()
        gone = out["outcome"].isna().to_numpy() & ~np.isnan(t_next)
        out.loc[gone, "outcome"] = "returned"
        out.loc[gone, "t_end"] = t_next[gone]
    out["dead_lettered"] = out["dead_lettered"].fillna(False).astype(bool)
    out["t_arrival"] = out["m"].map(_arrivals(df, msg, event, t)).to_numpy(dtype=float)
    out["queue_wait"] = out["t_deliver"] - out["t_ready"]
    out["buffer_wait"] = out["t_start"] - out["t_deliver"]
    out["service"] = out["t_end"] - out["t_start"]
    for name in ("msg_id", "queue", "consumer") + (("process",) if "process" in df.columns else ()):
        out[name] = pd.Categorical(out[name], categories=df[name].cat.categories)
    out["outcome"] = pd.Categorical(out["outcome"], categories=["ack", "nack", "returned"])
    out["worker"] = out["worker"].astype("Int16")
    out["error"] = out["error"].astype(object).where(out["error"].notna(), None)
    return out[cols + ["t_arrival"]].reset_index(drop=True)


def _arrivals(df: pd.DataFrame, msg: np.ndarray, event: np.ndarray, t: np.ndarray) -> pd.Series:
    """Message code → its first ``publish_wait`` or ``publish`` time (its arrival)."""
    first = np.isin(event, ("publish", "publish_wait"))
    return pd.Series(t[first]).groupby(msg[first]).min()


def pick_consumer(tl: Timeline, consumer: str | None) -> str | None:
    """The consumer a view or plot is about: the one named (a name the run does not have
    is an error, not an empty result), else the run's first."""
    if consumer is not None:
        known = list(tl.consumers) or [str(c) for c in tl.df["consumer"].dropna().unique()]
        if consumer not in known:
            raise ValueError(f"unknown consumer {consumer!r} (this timeline has: {', '.join(known) or 'none'})")
        return consumer
    if tl.consumers:
        return next(iter(tl.consumers))
    present = tl.df["consumer"].dropna()
    return str(present.iloc[0]) if len(present) else None


def gauges(tl: Timeline, consumer: str | None = None, *, instants: bool = True) -> pd.DataFrame:
    """Step series of one consumer and its queue: ``t, event, depth, buffered, busy, unsettled``.

    Each row holds the values right after the event (plot with ``drawstyle="steps-post"``).
    ``consumer`` defaults to the first consumer of the run. With ``instants`` (the
    default) events that share a timestamp collapse to the state after the last of them:
    a worker that acks and starts its next message at the same instant was never idle.
    """
    df = tl.df
    consumer = pick_consumer(tl, consumer)
    if consumer is not None and consumer in tl.consumers:
        queue = tl.consumers[consumer].queue
    elif consumer is not None:
        rows = df[df["consumer"] == consumer]
        queue = str(rows["queue"].iloc[0]) if len(rows) else None
    else:
        queue = str(df["queue"].iloc[0]) if len(df) else None
    on_queue = (df["queue"] == queue).to_numpy() if queue is not None else np.zeros(len(df), bool)
    on_consumer = (df["consumer"] == consumer).fillna(False).to_numpy() if consumer is not None else np.zeros(len(df), bool)
    sel = df[on_queue | on_consumer]
    out = pd.DataFrame({"t": sel["t"].to_numpy(), "event": sel["event"].to_numpy()})
    depth = sel["depth"].where(on_queue[on_queue | on_consumer])
    out["depth"] = depth.ffill().fillna(0).astype("int64").to_numpy()
    for g in ("buffered", "busy", "unsettled"):
        v = sel[g].where(on_consumer[on_queue | on_consumer])
        out[g] = v.ffill().fillna(0).astype("int64").to_numpy()
    if instants and len(out):
        t = out["t"].to_numpy()
        last = np.append(t[1:] != t[:-1], True)
        out = out[last].reset_index(drop=True)
    out.attrs.update(consumer=consumer, queue=queue)
    return out


#: The summary's counts: shown as integers.
COUNT_KEYS = frozenset({"published", "delivered", "acked", "nacked", "requeued", "dead_lettered",
                        "max_depth", "max_buffered", "max_busy", "max_unsettled", "publish_waits",
                        "poison_messages", "dropped_events",
                        # LiveView.summary (wqnb.live)
                        "handed_back", "now_depth", "now_buffered", "now_busy", "now_unsettled"})

#: A message delivered more often than this counts in ``summary()["poison_messages"]``
#: (the consumer warns at 10, 100, 1000… deliveries: see wqnb.consumer.POISON_MARKS).
POISON_ATTEMPTS = 10


def format_seconds(v: float) -> str:
    """A duration with its unit, 4 significant digits: ``1.25 s``, ``48.3 ms``, ``12 µs``."""
    if v is None or not np.isfinite(v):
        return "–"
    a = abs(v)
    if a == 0 or a >= 1:
        return f"{v:.4g} s"
    if a >= 1e-3:
        return f"{v * 1e3:.4g} ms"
    return f"{v * 1e6:.4g} µs"


def _format_value(key: str, v: object) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    f = float(v)  # type: ignore[arg-type]
    if key in COUNT_KEYS:
        return f"{round(f):,}"
    if key.endswith("_per_s"):
        return f"{f:.4g} /s"
    if key.endswith("_s"):
        return format_seconds(f)
    return f"{f:.3g}"


class Summary(pd.Series):
    """:func:`summary`'s result: a float Series (index it, round it, put several in a
    DataFrame) that prints counts as integers and durations with their unit."""

    @property
    def _constructor(self) -> type[Summary]:
        return Summary

    def as_row(self) -> dict[str, int | float]:
        """A plain dict with counts as ``int``: one row of a table of runs
        (``pd.DataFrame.from_dict({name: s.as_row()}, orient="index")`` shows ``781``,
        not ``781.0``)."""
        return {str(k): int(v) if k in COUNT_KEYS else float(v) for k, v in self.items()}

    def to_text(self) -> str:
        """One ``key  value`` line each, as ``print(summary)`` shows it (first a note when
        the timeline's first events were dropped: ``Runtime(max_events=)``)."""
        width = max((len(str(k)) for k in self.index), default=0)
        lines = [f"{k!s:<{width}}  {_format_value(str(k), v):>12}" for k, v in self.items()]
        note = self.attrs.get("note")
        return "\n".join(([f"note: {note}"] if note else []) + lines)

    def __repr__(self) -> str:
        if self.ndim != 1 or not self.index.map(lambda k: isinstance(k, str)).all():
            return super().__repr__()
        return self.to_text()


def summary(tl: Timeline) -> Summary:
    """Counts, throughput, latency percentiles, waits, utilisation and peaks of a run.

    Latency (``latency_*``) runs from a message's publish to its ack; end-to-end latency
    (``e2e_latency_*``) from its arrival (:func:`messages`' ``t_arrival``: earlier when a blocked publisher
    waited with it). Counts are whole numbers; the names say each figure's unit (``_s``
    seconds, ``_per_s`` per second, ``utilisation`` 0 to 1).

    A timeline whose first events were dropped (``Runtime(max_events=)``, ``tl.dropped``)
    adds them back into the counts and peaks (running totals kept when they were dropped),
    says how many in ``dropped_events`` and in a note (``s.attrs["note"]``, printed first);
    durations, rates, latencies and waits are over the events kept.
    """
    df = tl.df
    ev = df["event"]
    counts = ev.value_counts()
    n = {e: int(counts.get(e, 0)) for e in ("publish", "publish_wait", "deliver", "ack", "nack", "requeue", "dead_letter")}
    window_acks = n["ack"]
    gone = tl.dropped_detail if getattr(tl, "dropped", 0) else None
    if gone is not None:
        n = {e: k + gone.count(e) for e, k in n.items()}
    t = df["t"]
    duration = float(t.max() - t.min()) if len(df) else 0.0
    m = tl.messages()
    # latency from publish; a message published by another process, from its first deliver
    # grouped by the ids' integer codes: pandas cannot reindex one CategoricalIndex by
    # another whose code width differs (int8 vs int16 once a trimmed timeline's subsets
    # hold different numbers of ids), and integers are cheaper to group anyway
    ids = df["msg_id"]
    key = ids.cat.codes if isinstance(ids.dtype, pd.CategoricalDtype) else ids
    t_col = df["t"]
    first_ready = t_col[ev.isin(("publish", "deliver"))].groupby(key).min()
    acked_at = t_col[ev == "ack"].groupby(key).max()
    latency = (acked_at - first_ready.reindex(acked_at.index)).dropna()
    arrived = t_col[ev.isin(["publish", "publish_wait"])].groupby(key).min()
    from_arrival = (acked_at - arrived.reindex(acked_at.index)).dropna()
    capacity = sum(c.concurrency for c in tl.consumers.values()) or np.nan
    busy_time = float(m["service"].sum()) if len(m) else 0.0
    waits = df[ev == "publish_wait"]
    if len(waits):
        wait_times = first_ready.reindex(key[waits.index]).to_numpy() - waits["t"].to_numpy()
        publish_wait_total = float(np.nansum(wait_times))
    else:
        publish_wait_total = 0.0

    def pct(s: pd.Series, q: float) -> float:
        return float(s.quantile(q)) if len(s) else float("nan")

    g = df[["depth", "buffered", "busy", "unsettled"]]
    out = Summary(
        {
            "published": n["publish"],
            "delivered": n["deliver"],
            "acked": n["ack"],
            "nacked": n["nack"],
            "requeued": n["requeue"],
            "dead_lettered": n["dead_letter"],
            "duration_s": duration,
            "throughput_per_s": window_acks / duration if duration > 0 else float("nan"),
            "latency_mean_s": float(latency.mean()) if len(latency) else float("nan"),
            "latency_p50_s": pct(latency, 0.5),
            "latency_p90_s": pct(latency, 0.9),
            "latency_p99_s": pct(latency, 0.99),
            "e2e_latency_mean_s": float(from_arrival.mean()) if len(from_arrival) else float("nan"),
            "e2e_latency_p99_s": pct(from_arrival, 0.99),
            "queue_wait_mean_s": float(m["queue_wait"].mean()) if len(m) else float("nan"),
            "buffer_wait_mean_s": float(m["buffer_wait"].mean()) if len(m) else float("nan"),
            "service_mean_s": float(m["service"].mean()) if len(m) else float("nan"),
            "utilisation": busy_time / (capacity * duration) if duration > 0 else float("nan"),
            **{f"max_{k}": max(int(g[k].max()) if g[k].notna().any() else 0,
                               gone.maxima.get(k, 0) if gone is not None else 0)
               for k in ("depth", "buffered", "busy", "unsettled")},
            "publish_waits": n["publish_wait"],
            "publish_wait_total_s": publish_wait_total,
            # messages delivered more than POISON_ATTEMPTS times (a handler that keeps failing)
            "poison_messages": int(df.loc[(ev == "deliver") & (df["attempt"] > POISON_ATTEMPTS), "msg_id"].nunique()),
            **({"dropped_events": gone.rows} if gone is not None else {}),
        },
        name="summary", dtype=float,
    )
    if gone is not None:
        out.attrs["note"] = gone.note()
    return out
