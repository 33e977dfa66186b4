"""Stopping a driver's background tasks for sure.

A cancellation can be swallowed: on Python 3.11 a ``CancelledError`` that lands in an
``asyncio.timeout()`` block whose deadline has also passed (say, after the event loop was
blocked for a while) comes out as ``TimeoutError``, which a client library turns into its
connection error and a retry loop catches. ``cancel()`` once and ``gather`` then waits
forever; :func:`cancel_and_wait` cancels again until each task is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]], every: float = 0.1) -> None:
    """Cancel ``tasks`` (again every ``every`` s while one is still running) and wait
    for all of them; their exceptions are dropped (a stopping driver's tasks)."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" warning
