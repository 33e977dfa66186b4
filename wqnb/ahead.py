"""The Explorer's pictures, drawn ahead in a worker process (issue 13 §6).

One picture of 10,000 messages costs about a second of CPU on a 2-core host (simulate
0.2 s, the matplotlib draw 0.5 s, the PNG at 2× density 0.1–0.2 s), twice the half
second a slider move may take. So while the reader looks at a picture, one worker
process draws the pictures one slider stop away (the knob last moved first, in the
direction it moved); a move to one of them shows it at once, and a move to the one it
is drawing waits for it (sooner than starting again). A move anywhere else is drawn in
the kernel as before, after the worker's now useless guess is stopped.

:class:`Ahead` also keeps the last few frames, drawn here or there: moving back is free.
Frames are plain data (:class:`Frame`) made by :func:`render_frame`, the same function
either side, so a frame drawn ahead is the frame the kernel would have drawn.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .timeline import Timeline

__all__ = ["Ahead", "Frame", "frame_key", "render_frame"]

#: The Explorer's figure, in inches (960 × 600 CSS pixels at ``CSS_PX_PER_INCH``).
FIGSIZE = (12.0, 7.5)


@dataclass
class Frame:
    """One Explorer picture and what it shows: the run, its summary, the PNG."""

    kwargs: dict[str, Any]
    timeline: Timeline
    summary: pd.Series
    png: bytes
    simulate_s: float
    draw_s: float


def frame_key(kwargs: Mapping[str, Any]) -> Hashable:
    """``simulate()``'s keywords as a dict key (the distributions are frozen dataclasses)."""
    return tuple(sorted(kwargs.items()))


def render_frame(kwargs: dict[str, Any], density: float) -> Frame:
    """Simulate ``kwargs`` and draw :func:`wqnb.plot.overview` as PNG at ``density``
    pixels per CSS pixel (module level: a process pool pickles it by name)."""
    from matplotlib.figure import Figure

    from . import plot
    from .sim import simulate
    from .widgets import CSS_PX_PER_INCH, render_png

    t0 = time.perf_counter()
    tl = simulate(**kwargs)
    t1 = time.perf_counter()
    summary = tl.summary()
    fig = plot.overview(tl, fig=Figure(figsize=FIGSIZE))
    png = render_png(fig, dpi=CSS_PX_PER_INCH * density)
    return Frame(dict(kwargs), tl, summary, png, t1 - t0, time.perf_counter() - t1)


def _pool() -> ProcessPoolExecutor:
    from .sim import FORKSERVER_PRELOAD, _start_method

    ctx = multiprocessing.get_context(_start_method())
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload([*FORKSERVER_PRELOAD, "wqnb.plot", "wqnb.widgets"])
    # (not niced: on a busy host a niced worker starves, and the reader then waits for
    # it; a guess never competes with a draw in the kernel, see Ahead.stop_guessing)
    return ProcessPoolExecutor(max_workers=1, mp_context=ctx)


class Ahead:
    """Frames drawn ahead by one worker process, and the last ``keep`` frames.

    :meth:`plan` names the frames wanted next, most likely first; the worker draws them
    one at a time (a new plan drops the ones it has not started). :meth:`take` returns a
    frame that is ready, waits for the one the worker is drawing, and returns ``None``
    for anything else (the caller draws it).
    """

    def __init__(self, density: float, *, keep: int = 12, wait_s: float = 60.0) -> None:
        self.density = density
        self.keep = keep
        self.wait_s = wait_s
        self._lock = threading.RLock()  # (a done callback may run inside submit)
        self._done: OrderedDict[Hashable, Frame] = OrderedDict()
        self._todo: list[dict[str, Any]] = []
        self._running: tuple[Hashable, Future[Frame]] | None = None
        self._executor: ProcessPoolExecutor | None = None
        self._finalizer: weakref.finalize | None = None
        self.drawn_ahead = 0  # frames the worker finished (tests, the status line)
        self.abandoned = 0  # frames stopped half drawn because the reader moved elsewhere

    def take(self, kwargs: Mapping[str, Any]) -> Frame | None:
        key = frame_key(kwargs)
        with self._lock:
            frame = self._done.get(key)
            if frame is not None:
                self._done.move_to_end(key)
                return frame
            running = self._running if self._running and self._running[0] == key else None
        if running is None:
            return None
        try:  # the worker is on it: sooner than starting again here
            return running[1].result(timeout=self.wait_s)
        except Exception:  # noqa: BLE001 - a bad combination or a lost worker: the caller redraws and reports
            return None

    def put(self, frame: Frame) -> None:
        """Keep a frame drawn in the kernel (moving back to it is then free)."""
        with self._lock:
            self._store(frame_key(frame.kwargs), frame)

    def ready(self, kwargs: Mapping[str, Any]) -> bool:
        with self._lock:
            return frame_key(kwargs) in self._done

    def plan(self, wanted: Iterable[dict[str, Any]]) -> None:
        """Draw these next, in this order (the ones already kept are skipped). A frame
        the worker is drawing that is no longer wanted is abandoned: finishing a stale
        guess would delay the wanted ones by up to a second."""
        with self._lock:
            self._todo = [dict(k) for k in wanted if frame_key(k) not in self._done]
            if self._running is not None:
                key = self._running[0]
                if any(frame_key(k) == key for k in self._todo):
                    self._todo = [k for k in self._todo if frame_key(k) != key]
                else:
                    self._abandon()
            self._next()

    def stop_guessing(self) -> None:
        """Drop the plan and abandon the frame being drawn: the kernel is about to draw
        one nobody guessed, and should have the CPU to itself."""
        self.plan([])

    def close(self) -> None:
        """Stop the worker (frames kept stay available)."""
        with self._lock:
            self._todo = []
            self._running = None
            if self._finalizer is not None:
                self._finalizer()

    def _abandon(self) -> None:  # (with the lock held)
        """Stop the worker mid-frame; the next frame starts a fresh one (a fork: ms)."""
        self._running = None
        if self._executor is not None:
            # ProcessPoolExecutor cannot cancel a running call: end its one process
            for proc in list(getattr(self._executor, "_processes", {}).values()):
                proc.terminate()
            if self._finalizer is not None:
                self._finalizer()  # shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self.abandoned += 1

    # -- the chain: one frame at a time, the next submitted when one is done -------------
    def _next(self) -> None:  # (with the lock held)
        if self._running is not None or not self._todo:
            return
        kwargs = self._todo.pop(0)
        if self._executor is None:
            self._executor = _pool()
            self._finalizer = weakref.finalize(self, self._executor.shutdown, wait=False,
                                               cancel_futures=True)
        key = frame_key(kwargs)
        try:
            fut = self._executor.submit(render_frame, kwargs, self.density)
        except RuntimeError:  # shut down (closed, or the interpreter is exiting)
            self._todo = []
            return
        self._running = (key, fut)
        fut.add_done_callback(lambda f, key=key: self._finished(key, f))

    def _finished(self, key: Hashable, fut: Future[Frame]) -> None:
        with self._lock:
            current = self._running is not None and self._running[1] is fut
            if current:
                self._running = None
            if not fut.cancelled() and fut.exception() is None:
                self._store(key, fut.result())
                self.drawn_ahead += 1
            if current:  # (an abandoned frame's end starts nothing: plan() did)
                self._next()

    def _store(self, key: Hashable, frame: Frame) -> None:  # (with the lock held)
        self._done[key] = frame
        self._done.move_to_end(key)
        while len(self._done) > self.keep:
            self._done.popitem(last=False)
