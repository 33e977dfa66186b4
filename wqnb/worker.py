"""``wqnb worker``: one process that runs an app's consumers until told to stop.

Several of these on one broker queue are the multi-process picture of DESIGN §7: each
records what it sees and writes its own timeline (``-o``), and ``wqnb merge`` (or
:meth:`wqnb.Timeline.merge`) joins them. A worker publishes nothing itself (its handlers
may). SIGINT or SIGTERM stops it gracefully: intake stops, buffered messages are handed
back to the broker, running handlers get their ``stop_timeout``, then the timeline is
written. With ``checkpoint`` the timeline is also rewritten every so often (atomically),
so that a worker killed with ``kill -9`` still leaves what it recorded up to then.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["WorkerOptions", "WorkerResult", "pick_consumers", "run_worker", "save_atomically"]


@dataclass
class WorkerOptions:
    """What ``wqnb worker`` was asked to do (the parsed command line)."""

    app: list[Path]
    consumers: list[str] = field(default_factory=list)  # empty: the app's auto_start consumers
    output: Path | None = None
    name: str | None = None
    handlers: list[str] = field(default_factory=list)  # FUNC=MODULE:ATTR
    checkpoint: float | None = None  # seconds between timeline rewrites; None: only at the end
    strict_security: bool = False  # --strict-security: handlers without actor and scope may not publish
    max_events: int | None = None  # --max-events: keep about this many timeline rows


@dataclass
class WorkerResult:
    """The worker's timeline, and what went wrong while stopping (if anything did)."""

    timeline: Any
    problems: list[str]


def pick_consumers(registry: Any, wanted: Sequence[str]) -> list[str]:
    """The consumer ids to run: the ones named (a bare name gets matched against the
    entries' name parts), else every ``auto_start`` consumer. Unknown or ambiguous names
    and an app without consumers are errors naming the option."""
    consumers = {c.id: c for c in registry.consumers}
    if not wanted:
        chosen = [c.id for c in registry.consumers if c.lifecycle.auto_start]
        if not chosen:
            have = ", ".join(consumers) or "none"
            raise ValueError(f"no consumer to run: none is auto_start (the app has: {have}; "
                             "name them with --consumers ID,...)")
        return chosen
    chosen = []
    for name in wanted:
        if name in consumers:
            chosen.append(name)
            continue
        matches = [cid for cid in consumers if cid.partition(":")[2] == name]
        if len(matches) != 1:
            have = ", ".join(consumers) or "none"
            what = "is ambiguous" if matches else "is not a consumer of the app"
            raise ValueError(f"--consumers {name}: {what} (the app has: {have})")
        chosen.append(matches[0])
    return list(dict.fromkeys(chosen))


def _entries_to_start(registry: Any, consumer_ids: list[str]) -> list[str]:
    """The chosen consumers, and every driver they need (their queues' and dead-letter
    queues') plus the ``auto_start`` ones (handlers may publish through them)."""
    queues = {q.id: q for q in registry.queues}
    drivers = [d.id for d in registry.drivers if d.lifecycle.auto_start]
    for cid in consumer_ids:
        q = queues[registry.entries[cid].queue]
        drivers.append(q.driver)
        if q.dead_letter:
            drivers.append(queues[q.dead_letter].driver)
    return list(dict.fromkeys(drivers)) + consumer_ids


def save_atomically(tl: Any, path: Path) -> Path:
    """Write the timeline beside ``path`` and rename it into place (and a CSV's sidecar):
    a reader, or a ``kill -9`` mid-write, never sees half a file."""
    from .merge import sidecar_path

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    tl.save(tmp)
    os.replace(tmp, path)
    if path.suffix == ".csv":  # after the rows: a reader never finds a sidecar without them
        os.replace(sidecar_path(tmp), sidecar_path(path))
    return path


async def run_worker(opts: WorkerOptions, *, stop: asyncio.Event | None = None,
                     started: Callable[[Any, str], Any] | None = None, signals: bool = True) -> WorkerResult:
    """Run the consumers until ``stop`` is set (or SIGINT/SIGTERM with ``signals``), then
    stop gracefully and return the timeline. ``started(runtime, line)`` is called once
    consuming (``line`` says so; an awaitable it returns is awaited)."""
    from .errors import StopTimeout
    from .handlers.base import FunctionSpec
    from .handlers.python import import_callable
    from .runtime import Runtime

    rt = Runtime.from_yaml(*opts.app, max_events=opts.max_events)
    if opts.strict_security:
        rt.security.strict = True
    if opts.name:
        rt.recorder.process = opts.name
    for item in opts.handlers:
        fid, sep, target = item.partition("=")
        if not sep:
            raise ValueError(f"--handler {item!r}: expected FUNC=MODULE:ATTR")
        rt.register_function(fid, import_callable(FunctionSpec(id=fid, kind="function.python", source=target)))
    consumer_ids = pick_consumers(rt.registry, opts.consumers)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    hooked: list[int] = []
    if signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            hooked.append(sig)
    problems: list[str] = []
    checkpoints: asyncio.Task[None] | None = None
    try:
        await rt.start(*_entries_to_start(rt.registry, consumer_ids))
        if opts.output is not None and opts.checkpoint:
            checkpoints = asyncio.ensure_future(_checkpoints(rt, opts.output, opts.checkpoint))
        if started is not None:
            line = (f"wqnb worker {rt.recorder.process or os.getpid()}: consuming {', '.join(consumer_ids)} "
                    "(SIGINT or SIGTERM stops)")
            pending = started(rt, line)
            if asyncio.iscoroutine(pending) or isinstance(pending, asyncio.Future):
                await pending
        await stop.wait()
    finally:
        if checkpoints is not None:
            checkpoints.cancel()
            await asyncio.gather(checkpoints, return_exceptions=True)
        try:
            await rt.stop()
        except StopTimeout as e:
            problems.append(str(e))
        for sig in hooked:
            loop.remove_signal_handler(sig)
    tl = rt.timeline
    if not tl.process:
        tl.process = opts.name or f"{os.uname().nodename}:{os.getpid()}"
    return WorkerResult(tl, problems)


async def _checkpoints(rt: Any, path: Path, every: float) -> None:
    """Rewrite the timeline every ``every`` seconds (in a thread: a big one takes a while)."""
    while True:
        await asyncio.sleep(every)
        tl = rt.timeline
        await asyncio.to_thread(save_atomically, tl, path)


def one_line(tl: Any) -> str:
    """``worker w1: 120 delivered, 118 acked, 0 nacked, 2 returned, 0 in hand over 3.2 s``."""
    m = tl.messages()
    outcome = m["outcome"].astype(str) if len(m) else m.get("outcome", [])
    count = {k: int((outcome == k).sum()) if len(m) else 0 for k in ("ack", "nack", "returned")}
    in_hand = len(m) - sum(count.values())
    duration = float(tl.df["t"].max() - tl.df["t"].min()) if len(tl.df) else 0.0
    return (f"worker {tl.process}: {len(m)} delivered, {count['ack']} acked, {count['nack']} nacked, "
            f"{count['returned']} returned, {in_hand} in hand over {duration:.3g} s")


def print_ready(_runtime: Any, line: str) -> None:
    """The line tests and scripts wait for before they publish or signal."""
    print(line, flush=True)
    sys.stdout.flush()
