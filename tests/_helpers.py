"""Shared helpers for the core test modules: YAML builders, a virtual-time runner, and
checks of the timeline's invariants (DESIGN §3, §5).

Everything here is plain functions; fixtures live in the modules that use them.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pandas as pd

import wqnb

# The seed page's three YAML blocks, byte for byte (tests/fixtures/seed-queue.es.md). Only the
# `namespace:`/`entries:` frame around them is ours. test_registry.py checks the copy
# against the page.
SEED_DRIVER = """\
- name: memory_driver
  kind: queue.driver.memory
  lifecycle:
    auto_start: true
"""
SEED_QUEUE = """\
- name: tasks
  kind: queue.queue
  driver: app.queue:memory_driver
"""
SEED_CONSUMER = """\
- name: task_consumer
  kind: queue.consumer
  queue: app.queue:tasks
  func: app.queue:task_handler
  concurrency: 4
  prefetch: 20
  lifecycle:
    auto_start: true
    depends_on:
      - app.queue:tasks
"""


def _indent(block: str, spaces: int = 2) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else line for line in block.splitlines(keepends=True))


SEED_APP = "namespace: app.queue\nentries:\n" + "".join(
    _indent(b) for b in (SEED_DRIVER, SEED_QUEUE, SEED_CONSUMER)
)

Q = "t:tasks"      # the queue of app()
C = "t:c"          # its consumer
DEAD = "t:dead"    # its dead-letter queue (when asked for)


def app(
    *,
    concurrency: int | None = 1,
    prefetch: int | None = 1,
    max_length: int | None = 1000,
    requeue_delay: str | float | None = None,
    timeout: str | float | None = None,
    stop_timeout: str | float | None = None,
    max_attempts: int | None = None,
    dead_consumer: bool = False,
    consumers: int = 1,
    auto_start: bool = True,
) -> str:
    """A one-queue app in namespace ``t``: driver ``t:mem``, queue ``t:tasks``, consumer
    ``t:c`` (``t:c1``, ``t:c2``... when ``consumers > 1``) running function ``t:h``;
    with ``max_attempts`` a dead-letter queue ``t:dead`` (consumed by ``t:dead_c`` running
    ``t:dead_h`` when ``dead_consumer``)."""
    lines = [
        "namespace: t",
        "entries:",
        "  - name: mem",
        "    kind: queue.driver.memory",
        "    lifecycle: {auto_start: true}",
        "  - name: tasks",
        "    kind: queue.queue",
        "    driver: t:mem",
    ]
    if max_length is not None:
        lines.append(f"    options: {{max_length: {max_length}}}")
    if max_attempts is not None:
        lines.append(f"    dead_letter: {{queue: t:dead, max_attempts: {max_attempts}}}")
        lines += ["  - name: dead", "    kind: queue.queue", "    driver: t:mem"]
        if dead_consumer:
            lines += [
                "  - name: dead_c",
                "    kind: queue.consumer",
                "    queue: t:dead",
                "    func: t:dead_h",
                "    lifecycle: {auto_start: true}",
            ]
    names = ["c"] if consumers == 1 else [f"c{i + 1}" for i in range(consumers)]
    for name in names:
        lines += [f"  - name: {name}", "    kind: queue.consumer", "    queue: t:tasks", "    func: t:h"]
        if concurrency is not None:
            lines.append(f"    concurrency: {concurrency}")
        if prefetch is not None:
            lines.append(f"    prefetch: {prefetch}")
        if requeue_delay is not None:
            lines.append(f"    requeue_delay: {_yaml_scalar(requeue_delay)}")
        if timeout is not None:
            lines.append(f"    timeout: {_yaml_scalar(timeout)}")
        lc = f"auto_start: {'true' if auto_start else 'false'}"
        if stop_timeout is not None:
            lc += f", stop_timeout: {_yaml_scalar(stop_timeout)}"
        lines.append(f"    lifecycle: {{{lc}}}")
    return "\n".join(lines) + "\n"


def _yaml_scalar(v: Any) -> str:
    return f'"{v}"' if isinstance(v, str) else repr(v)


def runtime(handler: Callable[..., Any], **app_kwargs: Any) -> wqnb.Runtime:
    """``app(**app_kwargs)`` as a runtime with ``handler`` registered as ``t:h``."""
    rt = wqnb.Runtime.from_yaml_string(app(**app_kwargs))
    rt.register_function("t:h", handler)
    return rt


def virtual(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``coro_fn()`` on a fresh virtual-time loop and return its result."""
    return wqnb.run_virtual(coro_fn())


def now() -> float:
    return asyncio.get_running_loop().time()


async def sleep_until(t: float) -> None:
    """Sleep until the (virtual) loop time ``t``."""
    await asyncio.sleep(max(0.0, t - now()))


# -- reading timelines ---------------------------------------------------------------------------------
def frame(df: pd.DataFrame) -> pd.DataFrame:
    """The timeline with plain columns: ``event``/``queue``/``consumer`` as str, ``m`` the
    message's number (publish order within the runtime)."""
    out = pd.DataFrame(
        {
            "t": df["t"].to_numpy(),
            "event": df["event"].astype(str).to_numpy(),
            "queue": df["queue"].astype(object).to_numpy(),
            "consumer": df["consumer"].astype(object).to_numpy(),
            "worker": df["worker"].to_numpy(),
            "m": df["msg_id"].cat.codes.to_numpy(),
            "msg_id": df["msg_id"].astype(str).to_numpy(),
            "attempt": df["attempt"].to_numpy(),
            "error": df["error"].astype(object).to_numpy(),
        }
    )
    for g in ("depth", "buffered", "busy", "unsettled"):
        out[g] = df[g].to_numpy()
    return out


def rows(df: pd.DataFrame, *events: str, m: int | None = None) -> pd.DataFrame:
    f = frame(df)
    sel = f["event"].isin(events) if events else pd.Series(True, index=f.index)
    if m is not None:
        sel &= f["m"] == m
    return f[sel].reset_index(drop=True)


def history(df: pd.DataFrame) -> dict[str, list[str]]:
    """Each message id → its events, in order."""
    out: dict[str, list[str]] = defaultdict(list)
    for mid, ev in zip(df["msg_id"].astype(str), df["event"].astype(str), strict=True):
        out[mid].append(ev)
    return dict(out)


def check_gauges(df: pd.DataFrame, limits: dict[str, tuple[int, int]]) -> None:
    """On every row of each consumer: ``buffered ≤ prefetch``, ``busy ≤ concurrency``,
    ``unsettled ≤ prefetch + concurrency``; and no gauge is negative."""
    f = frame(df)
    for g in ("depth", "buffered", "busy", "unsettled"):
        vals = f[g].dropna()
        assert (vals >= 0).all(), f"negative {g}: {f[f[g] < 0].head()}"
    for consumer, (concurrency, prefetch) in limits.items():
        mine = f[f["consumer"] == consumer]
        assert (mine["busy"] <= concurrency).all(), mine[mine["busy"] > concurrency].head()
        assert (mine["buffered"] <= prefetch).all(), mine[mine["buffered"] > prefetch].head()
        bad = mine[mine["unsettled"] > prefetch + concurrency]
        assert bad.empty, bad.head()


def check_nack_followed(df: pd.DataFrame) -> None:
    """Every ``nack`` is followed, as that message's next event, by ``requeue`` or ``dead_letter``."""
    for mid, evs in history(df).items():
        for i, e in enumerate(evs):
            if e == "nack":
                assert i + 1 < len(evs) and evs[i + 1] in ("requeue", "dead_letter"), (mid, evs)


def event_counts(df: pd.DataFrame) -> Counter:
    return Counter(df["event"].astype(str))
