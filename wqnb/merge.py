"""Timelines on disk and across processes: save with metadata, read back, merge several.

A timeline is more than its rows: the views and plots need its queues' and consumers'
limits, and a merge needs to know *who* recorded it (``process``) and *when* its ``t = 0``
was on the wall clock (``origin_unix``). :func:`write` keeps them next to the rows:

* **Parquet**: in the file's key-value metadata, under the key ``wqnb.timeline`` (a JSON
  document; pandas' own metadata keeps the column dtypes and categories);
* **CSV**: in a JSON sidecar named after the file (``tl.csv`` → ``tl.csv.json``), which
  also holds each column's dtype and categories, so a CSV reads back with the same types.
  A CSV without its sidecar still reads (dtypes inferred, no limits, no origin).

A bounded timeline (``Runtime(max_events=)``, ``wqnb worker --max-events``) also keeps
the totals of what it dropped (:class:`~wqnb.retention.Dropped`), so its summary read
back, or merged with other processes', still counts every event of the run.

:func:`merge` joins the timelines of several processes (workers and publishers on one
broker) into one: ``t`` shifted so that every ``t`` counts from the earliest origin, rows
sorted by it (stably: one process's order is kept at equal times), a ``process``
column, ``msg_id`` categories unioned (a message is the same wire id everywhere). The
same consumer id in two processes is two consumers: in the merged timeline each is named
``consumer@process`` (docs/brokers.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .retention import Dropped
    from .timeline import Timeline

__all__ = ["FORMAT", "META_KEY", "merge", "read", "sidecar_path", "write"]

#: Version of the metadata document (bumped when its shape changes incompatibly).
FORMAT = 1
META_KEY = b"wqnb.timeline"
_PARQUET = (".parquet", ".pq")
#: Columns whose dtype a CSV without a sidecar gets (the rest are inferred).
_DEFAULT_DTYPES = {
    "event": "category", "queue": "category", "consumer": "category", "msg_id": "category",
    "error": "category", "process": "category", "worker": "Int16", "attempt": "int32",
    "depth": "Int32", "buffered": "Int32", "busy": "Int32", "unsettled": "Int32",
}


def sidecar_path(path: str | Path) -> Path:
    """Where a CSV timeline keeps its metadata: ``tl.csv`` → ``tl.csv.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


# -- metadata ----------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """Params as JSON: numbers, strings, lists and dicts as they are; anything else (a
    service-time distribution) as its ``repr`` (readable, not rebuilt); non-finite floats
    as strings (JSON has no NaN)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return repr(value)


def _columns(df: pd.DataFrame, *, categories: bool) -> dict[str, dict[str, Any]]:
    """Each column's dtype, and (with ``categories``) a categorical's categories."""
    out: dict[str, dict[str, Any]] = {}
    for name in df.columns:
        dtype = df[name].dtype
        spec: dict[str, Any] = {"dtype": "category" if isinstance(dtype, pd.CategoricalDtype) else str(dtype)}
        if categories and isinstance(dtype, pd.CategoricalDtype):
            spec["categories"] = [str(c) for c in dtype.categories]
        out[str(name)] = spec
    return out


def metadata(tl: Timeline, *, id_categories: bool) -> dict[str, Any]:
    """What :func:`write` stores beside the rows. Categories of ``msg_id`` (one per
    message) only where the format does not keep them itself (CSV)."""
    cols = _columns(tl.df, categories=True)
    if not id_categories and "msg_id" in cols:
        cols["msg_id"].pop("categories", None)
    return {
        "format": FORMAT,
        "process": tl.process,
        "origin_unix": tl.origin_unix,
        "queues": {k: asdict(v) for k, v in tl.queues.items()},
        "consumers": {k: asdict(v) for k, v in tl.consumers.items()},
        "params": _json_safe(tl.params),
        "columns": cols,
        **({"dropped": _dropped_doc(tl.dropped_detail)} if tl.dropped and tl.dropped_detail else {}),
    }


def _dropped_doc(d: Dropped) -> dict[str, Any]:
    """A bounded timeline's dropped totals as JSON (``counts`` as ``[event, queue, consumer, n]``)."""
    return {"rows": d.rows, "max_events": d.max_events, "until": d.until,
            "counts": [[e, q, c, n] for (e, q, c), n in d.counts.items()], "maxima": dict(d.maxima)}


def _dropped_from(doc: Any, path: Path) -> Dropped | None:
    from .retention import Dropped

    if not doc:
        return None
    try:
        return Dropped(int(doc["rows"]), doc.get("max_events"), doc.get("until"),
                       {(e, q, c): int(n) for e, q, c, n in doc.get("counts") or []},
                       {str(k): int(v) for k, v in (doc.get("maxima") or {}).items()})
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: the metadata's 'dropped' totals are malformed ({e})") from None


# -- write -------------------------------------------------------------------------------


def write(tl: Timeline, path: str | Path) -> Path:
    """Write ``tl`` as ``.csv`` (plus its ``.json`` sidecar) or ``.parquet``, by suffix."""
    path = Path(path)
    if path.suffix == ".csv":
        tl.df.to_csv(path, index=False)
        sidecar_path(path).write_text(json.dumps(metadata(tl, id_categories=True), indent=1) + "\n")
        return path
    if path.suffix in _PARQUET:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(tl.df, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = json.dumps(metadata(tl, id_categories=False)).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)
        return path
    raise ValueError(f"{path}: unknown timeline format (use .csv or .parquet)")


# -- read --------------------------------------------------------------------------------


def read(path: str | Path) -> Timeline:
    """Load a timeline written by :meth:`Timeline.save` (or any CSV/Parquet with its columns).

    Errors name the file: a missing file, an unknown suffix, a metadata document of a
    newer format, a table without the columns the views need.
    """
    from .timeline import Timeline

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such timeline file")
    if path.suffix == ".csv":
        df, meta = _read_csv(path)
    elif path.suffix in _PARQUET:
        df, meta = _read_parquet(path)
    else:
        raise ValueError(f"{path}: unknown timeline format (use .csv or .parquet)")
    if meta.get("format", FORMAT) > FORMAT:
        raise ValueError(f"{path}: timeline metadata format {meta['format']} is newer than this wqnb "
                         f"reads ({FORMAT}): upgrade wqnb")
    missing = [c for c in ("t", "event", "queue", "msg_id") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a wqnb timeline (no column {', '.join(missing)})")
    df = _restore_dtypes(df, meta.get("columns"))
    queues, consumers = _infos(meta, path)
    gone = _dropped_from(meta.get("dropped"), path)
    return Timeline(
        df,
        queues=queues,
        consumers=consumers,
        params=dict(meta.get("params") or {}),
        origin_unix=meta.get("origin_unix"),
        process=str(meta.get("process") or ""),
        dropped=gone.rows if gone is not None else 0,
        dropped_detail=gone,
    )


def _read_csv(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    side = sidecar_path(path)
    meta: dict[str, Any] = {}
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{side}: not valid JSON ({e.msg}, line {e.lineno})") from None
    cols = meta.get("columns") or {}
    # text columns are read as text ("007" stays an id, not the number 7); only an empty
    # cell is missing (a queue named "NA" is a name)
    text = [c for c, spec in {**_DEFAULT_DTYPES, **cols}.items()
            if (spec if isinstance(spec, str) else spec.get("dtype")) == "category"]
    header = pd.read_csv(path, nrows=0).columns
    df = pd.read_csv(path, dtype={c: str for c in text if c in header}, keep_default_na=False,
                     na_values={c: [""] for c in header})
    return df, meta


def _read_parquet(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # one read of the whole file: a worker may replace it (a checkpoint) while we read,
    # and reading footer and pages through separate opens could mix two versions
    table = pq.read_table(pa.BufferReader(path.read_bytes()))
    raw = (table.schema.metadata or {}).get(META_KEY)
    meta = json.loads(raw) if raw else {}
    return table.to_pandas(), meta


def _restore_dtypes(df: pd.DataFrame, cols: dict[str, dict[str, Any]] | None) -> pd.DataFrame:
    """Give every column the dtype it was saved with (or wqnb's usual one, without metadata)."""
    specs: dict[str, dict[str, Any]] = {c: {"dtype": d} for c, d in _DEFAULT_DTYPES.items()}
    specs.update(cols or {})
    out = {}
    for name in df.columns:
        s = df[name]
        spec = specs.get(name)
        if spec is None:
            out[name] = s
            continue
        dtype = spec["dtype"]
        if dtype == "category":
            cats = spec.get("categories")
            if isinstance(s.dtype, pd.CategoricalDtype) and (cats is None or list(s.cat.categories) == cats):
                out[name] = s  # Parquet kept it as it was (the usual case: no copy)
                continue
            if cats is None:
                cats = s.cat.categories if isinstance(s.dtype, pd.CategoricalDtype) else pd.unique(s.dropna())
            else:  # values the metadata does not list (a CSV rewritten after its sidecar) are kept
                seen = set(cats)
                cats = list(cats) + [v for v in pd.unique(s.dropna().astype(str)) if v not in seen]
            values = s.astype(object).where(s.notna(), None)
            # categories inferred as pandas does for a list (str; object when empty), as
            # Timeline.from_array builds them, so that a round trip is exact
            out[name] = pd.Categorical(values, categories=pd.Index([str(c) for c in cats]))
        elif dtype == "bool" and s.dtype != bool:
            out[name] = s.map({"True": True, "False": False, True: True, False: False}).fillna(False).astype(bool)
        else:
            out[name] = s.astype(dtype)
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def _infos(meta: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from .timeline import ConsumerInfo, QueueInfo

    try:
        queues = {k: QueueInfo(**v) for k, v in (meta.get("queues") or {}).items()}
        consumers = {k: ConsumerInfo(**v) for k, v in (meta.get("consumers") or {}).items()}
    except TypeError as e:
        raise ValueError(f"{path}: bad queue or consumer in the timeline's metadata ({e})") from None
    return queues, consumers


# -- merge -------------------------------------------------------------------------------


def merge(items: Iterable[Timeline | str | Path]) -> Timeline:
    """One timeline from the timelines (or files) of several processes.

    ``t`` counts from the earliest ``origin_unix``; rows are sorted by it, stably (within
    one process, rows at equal ``t`` keep their recorded order; across processes, the
    order the timelines were given). Consumers become ``consumer@process``. A timeline
    that is itself a merge (it has a ``process`` column) keeps its process names.
    Raises ``ValueError`` naming the input that has no ``origin_unix`` (its ``t`` cannot
    be placed) or whose process name another input already uses.
    """
    from .timeline import ConsumerInfo, Timeline

    tls: list[Timeline] = []
    labels: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            tls.append(read(item))
            labels.append(str(item))
        elif isinstance(item, Timeline):
            tls.append(item)
            labels.append(f"timeline {i + 1}" + (f" ({item.process})" if item.process else ""))
        else:
            raise TypeError(f"merge: expected Timelines or paths, got {type(item).__name__} (item {i + 1})")
    if not tls:
        raise ValueError("merge: no timelines given")
    for tl, label in zip(tls, labels, strict=True):
        if tl.origin_unix is None or not math.isfinite(tl.origin_unix):
            raise ValueError(f"merge: {label} has no origin_unix (Unix time at t = 0): its t cannot be "
                             "placed beside the others")
    names = _process_names(tls, labels)
    origin = min(float(tl.origin_unix) for tl in tls)  # type: ignore[arg-type]

    frames: list[pd.DataFrame] = []
    consumers: dict[str, ConsumerInfo] = {}
    queues: dict[str, Any] = {}
    processes: dict[str, Any] = {}
    for tl, name in zip(tls, names, strict=True):
        shift = float(tl.origin_unix) - origin  # type: ignore[arg-type]
        df = tl.df.copy()
        df["t"] = df["t"].to_numpy(dtype=float) + shift
        already = "process" in df.columns
        if not already:
            df["consumer"] = df["consumer"].cat.rename_categories(lambda c, n=name: f"{c}@{n}")
            df["process"] = name
        for cid, info in tl.consumers.items():
            key = cid if already else f"{cid}@{name}"
            consumers[key] = ConsumerInfo(key, info.queue, info.concurrency, info.prefetch)
        for qid, info in tl.queues.items():
            queues.setdefault(qid, info)  # one queue, seen by several processes: the first's limits
        if already:
            processes.update({p: {**v, "shift_s": v.get("shift_s", 0.0) + shift}
                              for p, v in (tl.params.get("processes") or {}).items()})
        else:
            processes[name] = {"origin_unix": tl.origin_unix, "shift_s": shift, "params": tl.params}
        frames.append(df)

    df = _concat(frames)
    order = np.argsort(df["t"].to_numpy(), kind="stable")
    df = df.take(order).reset_index(drop=True)
    gone = _merged_dropped(tls, names, origin)
    return Timeline(df, queues=queues, consumers=consumers, params={"processes": processes},
                    origin_unix=origin, process="+".join(names),
                    dropped=gone.rows if gone is not None else 0, dropped_detail=gone)


def _merged_dropped(tls: Sequence[Timeline], names: Sequence[str], origin: float) -> Dropped | None:
    """The inputs' dropped totals added up: consumers renamed as in the merged rows, each
    ``until`` on the merged axis (the latest is kept), peaks the highest of any input."""
    from .retention import Dropped

    parts = [(tl, name) for tl, name in zip(tls, names, strict=True) if tl.dropped and tl.dropped_detail]
    if not parts:
        return None
    out = Dropped()
    bounds = set()
    for tl, name in parts:
        d = tl.dropped_detail
        assert d is not None
        renamed = "process" not in tl.df.columns
        out.rows += d.rows
        bounds.add(d.max_events)
        for (e, q, c), n in d.counts.items():
            key = (e, q, f"{c}@{name}" if renamed and c is not None else c)
            out.counts[key] = out.counts.get(key, 0) + n
        for g, v in d.maxima.items():
            out.maxima[g] = max(out.maxima.get(g, v), v)
        if d.until is not None:
            until = d.until + float(tl.origin_unix) - origin  # type: ignore[arg-type]
            out.until = until if out.until is None else max(out.until, until)
    out.max_events = bounds.pop() if len(bounds) == 1 else None
    return out


def _process_names(tls: Sequence[Timeline], labels: Sequence[str]) -> list[str]:
    """Each input's process name (``p1``, ``p2``… for unnamed ones); duplicates refused."""
    names: list[str] = []
    seen: dict[str, str] = {}
    for i, (tl, label) in enumerate(zip(tls, labels, strict=True)):
        inner = list(tl.df["process"].cat.categories) if "process" in tl.df.columns else [tl.process or f"p{i + 1}"]
        for n in inner:
            if n in seen:
                raise ValueError(f"merge: {label} and {seen[n]} were both recorded by process {n!r} "
                                 "(the same timeline twice? give each worker its own --name)")
            seen[n] = label
        names.append(tl.process or f"p{i + 1}")
    return names


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate, unioning each categorical column's categories (first seen first) and
    filling a column some inputs lack (``redelivered``: False)."""
    columns: list[str] = []
    for f in frames:
        columns += [c for c in f.columns if c not in columns]
    fixed = [f.copy() for f in frames]
    for c in columns:
        dtypes = [f[c].dtype for f in frames if c in f.columns]
        if any(isinstance(d, pd.CategoricalDtype) for d in dtypes) or c == "process":
            cats: dict[Any, None] = {}
            for f in frames:
                if c in f.columns:
                    s = f[c]
                    cats.update(dict.fromkeys(s.cat.categories if isinstance(s.dtype, pd.CategoricalDtype)
                                              else pd.unique(s.dropna())))
            dtype = pd.CategoricalDtype(pd.Index([str(c) for c in cats]))
            for f in fixed:
                if c not in f.columns:
                    f[c] = pd.Categorical([None] * len(f), dtype=dtype)
                elif isinstance(f[c].dtype, pd.CategoricalDtype):
                    f[c] = f[c].cat.set_categories(dtype.categories)
                else:
                    f[c] = f[c].astype(object).astype(dtype)
        elif c == "redelivered":
            for f in fixed:
                if c not in f.columns:
                    f[c] = False
        else:
            for f in fixed:
                if c not in f.columns:
                    f[c] = pd.array([pd.NA] * len(f), dtype=dtypes[0] if pd.api.types.is_extension_array_dtype(
                        dtypes[0]) else "Float64")
    out = pd.concat([f[columns] for f in fixed], ignore_index=True)
    if "redelivered" in out.columns:
        out["redelivered"] = out["redelivered"].fillna(False).astype(bool)
    return out
