"""ipywidgets explorers: move a knob, see the queue behave.

* :class:`Explorer` — sliders for every knob of :func:`wqnb.simulate`; each change runs a
  simulation on virtual time and redraws :func:`wqnb.plot.overview` and a summary table.
* :class:`Sweep` — a concurrency × prefetch grid, run point by point behind a progress bar,
  then drawn as heatmaps and lines (:func:`wqnb.plot.sweep`).
* :class:`Replay` — a Play button and a time slider over any timeline, drawing the
  system's state at each instant (publisher, queue, buffer, workers, counters).
* :class:`LiveMonitor` — follows a real :class:`~wqnb.Runtime` running in the kernel's own
  event loop, redrawing its gauges from ``rt.timeline`` while messages flow; buttons
  publish a burst and stop the runtime. It never blocks the kernel: it is an asyncio task.

The logic lives in plain methods (:meth:`Explorer.update`, :meth:`Sweep.run`,
:meth:`LiveMonitor.refresh`) and plain data (``.timeline``, ``.summary``, ``.figure``,
``.results``), so tests set widget values, click buttons and check what was simulated and
drawn without a browser. Figures are drawn on pyplot-free :class:`~matplotlib.figure.Figure`
objects and shown as PNG in an ``Image`` widget: nothing leaks into the cell's output, and
Voila shows them the same way.

Everything drawn comes from a :class:`~wqnb.timeline.Timeline` (DESIGN §1).
"""

from __future__ import annotations

import asyncio
import html
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import plot
from .ahead import FIGSIZE, Ahead, Frame
from .live import LiveView
from .live import pick as pick_live_consumer
from .views import pick_consumer

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Runtime
    from .timeline import Timeline

__all__ = [
    "DISTRIBUTIONS",
    "Explorer",
    "LiveMonitor",
    "Replay",
    "Sweep",
    "log_options",
    "render_png",
    "summary_table",
]

_STYLE = {"description_width": "120px"}
_LAYOUT = W.Layout(width="420px")


# -- plain helpers (tested directly) ---------------------------------------------------


def log_options(lo: int, hi: int, *, include: Iterable[int] = ()) -> list[int]:
    """Integers from ``lo`` to ``hi`` spaced evenly on a log scale (1, 1.5, 2, 3, 4, 5, 6, 8
    per decade), plus ``include``: the stops of a log-scale integer slider."""
    mantissas = (1, 1.5, 2, 3, 4, 5, 6, 8)
    out = {lo, hi, *include}
    for exp in range(math.floor(math.log10(max(lo, 1))), math.floor(math.log10(hi)) + 1):
        for m in mantissas:
            v = round(m * 10**exp)
            if lo <= v <= hi:
                out.add(v)
    return sorted(v for v in out if lo <= v <= hi)


def _distributions() -> dict[str, Callable[[float], Any]]:
    from .sim import Constant, Exponential, LogNormal, Uniform

    return {
        "constant": Constant,
        "exponential": Exponential,
        "uniform (0 to 2×mean)": lambda mean: Uniform(0.0, 2 * mean),
        "lognormal (σ = 1)": lambda mean: LogNormal(mean, 1.0),
    }


#: Service-time shapes the Explorer offers: name → ``f(mean seconds)`` → ``service_time``.
DISTRIBUTIONS: dict[str, Callable[[float], Any]] = {}


#: CSS pixels a figure inch takes on the page: a 12 × 7.5 in figure shows 960 × 600 px.
CSS_PX_PER_INCH = 80
#: Image pixels per CSS pixel: 2 is crisp on a high-density (retina) screen, and sharp
#: when the browser zooms to 200 %.
PIXEL_DENSITY = 2


#: zlib level of the PNGs sent to the page: 1 encodes a 1920 × 1200 figure about four
#: times faster than the default 6 (tens of ms, not a fifth of a second) for ~10 % more
#: bytes, which a local or LAN websocket carries in a millisecond.
PNG_COMPRESS_LEVEL = 1


def render_png(fig: Figure, *, dpi: float = CSS_PX_PER_INCH * PIXEL_DENSITY) -> bytes:
    """The figure as PNG bytes (no pyplot, no display)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)  # attach an Agg canvas (a bare Figure has none to save with)
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return buf.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from a PNG's header."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def figure_image() -> W.Image:
    """An Image widget that shows a figure at its own size: never stretched by the flex
    box around it (``align_self``), shrunk to fit a narrow page with its aspect kept."""
    return W.Image(format="png", layout=W.Layout(max_width="100%", height="auto",
                                                 align_self="flex-start",
                                                 object_fit="contain")).add_class("wqnb-figure")


def show_figure(image: W.Image, fig: Figure, *, density: float = PIXEL_DENSITY) -> bytes:
    """Render ``fig`` into ``image`` at ``density`` pixels per CSS pixel and size the
    widget to the figure's CSS size (``CSS_PX_PER_INCH``), so it is crisp and unstretched."""
    w_in, _h_in = fig.get_size_inches()
    png = render_png(fig, dpi=CSS_PX_PER_INCH * density)
    image.layout.width = f"{round(w_in * CSS_PX_PER_INCH)}px"
    image.value = png
    return png


def static_fallback(bundle: dict[str, Any], image: W.Image, text: str
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The widget's display bundle with a stable ``text/plain`` and its current picture as
    ``image/png``: a saved notebook shows that picture where widgets cannot be drawn
    (GitHub, nbviewer, a notebook opened before its kernel runs). nbval does not compare
    PNG bytes, and the ``text/plain`` keeps the stored outputs deterministic."""
    data = dict(bundle)
    data["text/plain"] = text
    meta: dict[str, Any] = {}
    if image.value:
        import base64

        png = bytes(image.value)
        data["image/png"] = base64.b64encode(png).decode("ascii")
        w, h = png_size(png)
        meta["image/png"] = {"width": round(w / PIXEL_DENSITY), "height": round(h / PIXEL_DENSITY)}
    return data, meta


_SUMMARY_ROWS = [
    ("published", "published", "messages", "{:,.0f}"),
    ("acked", "acked", "messages", "{:,.0f}"),
    ("nacked", "nacked", "deliveries", "{:,.0f}"),
    ("dead_lettered", "dead-lettered", "messages", "{:,.0f}"),
    ("duration_s", "duration", "s", "{:.3g}"),
    ("throughput_per_s", "throughput", "msg/s", "{:.4g}"),
    ("latency_p50_s", "latency p50", "s", "{:.3g}"),
    ("latency_p90_s", "latency p90", "s", "{:.3g}"),
    ("latency_p99_s", "latency p99", "s", "{:.3g}"),
    ("queue_wait_mean_s", "mean wait in queue", "s", "{:.3g}"),
    ("buffer_wait_mean_s", "mean wait in buffer", "s", "{:.3g}"),
    ("service_mean_s", "mean service time", "s", "{:.3g}"),
    ("utilisation", "worker utilisation", "0-1", "{:.3f}"),
    ("max_depth", "max queue depth", "messages", "{:,.0f}"),
    ("max_buffered", "max buffered", "messages", "{:,.0f}"),
    ("max_unsettled", "max unsettled", "messages", "{:,.0f}"),
    ("publish_waits", "publisher waits", "count", "{:,.0f}"),
    ("publish_wait_total_s", "publisher time waiting", "s", "{:.3g}"),
]


def summary_table(summary: pd.Series) -> pd.DataFrame:
    """The interesting lines of ``Timeline.summary()``, with units, as display strings."""
    rows = []
    for key, label, unit, fmt in _SUMMARY_ROWS:
        if key in summary.index:
            v = summary[key]
            text = "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
            rows.append((label, text, unit))
    return pd.DataFrame(rows, columns=["", "value", "unit"]).set_index("")


def _table_html(summary: pd.Series) -> str:
    rows = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(label)}</th>"
        f"<td style='text-align:right'>{html.escape(r['value'])}</td>"
        f"<td style='color:#6c757d;padding-left:0.4em'>{html.escape(r['unit'])}</td></tr>"
        for label, r in summary_table(summary).iterrows()
    )
    return f"<table class='wqnb-table'>{rows}</table>"


# -- Explorer --------------------------------------------------------------------------


class Explorer:
    """Sliders for :func:`wqnb.simulate`'s knobs; every change re-runs it and redraws.

    >>> ex = Explorer(concurrency=4, prefetch=10)     # doctest: +SKIP
    >>> ex                                            # the widget, in a notebook
    >>> ex.concurrency.value = 8                      # same as moving the slider
    >>> ex.summary["throughput"], ex.timeline         # what is shown, as data

    ``messages`` is capped at 10,000 so that a redraw stays under a second;
    ``arrival_rate=None`` (or ``burst=True``) publishes every message at t = 0. Pass
    ``simulate=`` to drive another simulation function with the same keywords.

    With ``ahead`` (the default for :func:`wqnb.simulate` on a machine with two cores or
    more) a worker process draws the pictures one concurrency or prefetch stop away while
    you look at this one, so a step of either slider shows at once, and the last frames
    are kept, so moving back is free (:mod:`wqnb.ahead`); ``ahead=False`` draws every
    picture in the kernel. :meth:`close` stops the worker.
    """

    def __init__(
        self,
        *,
        concurrency: int = 4,
        prefetch: int = 10,
        arrival_rate: float | None = 80.0,
        service_time: float = 0.05,
        distribution: str = "exponential",
        failure_rate: float = 0.0,
        messages: int = 1000,
        max_length: int = 1000,
        burst: bool = False,
        seed: int = 1,
        simulate: Callable[..., Timeline] | None = None,
        density: float = PIXEL_DENSITY,
        auto: bool = True,
        ahead: bool | None = None,
    ) -> None:
        from .sim import simulate as default_simulate

        if ahead is None:  # another simulate may not reach a worker process, or be pure
            ahead = simulate is None and (os.cpu_count() or 1) >= 2
        self._simulate = simulate or default_simulate
        self.density = density
        dists = DISTRIBUTIONS or _distributions()
        if distribution not in dists:
            raise ValueError(f"distribution must be one of {sorted(dists)}, not {distribution!r}")
        self._dists = dists

        def sel(desc: str, lo: int, hi: int, value: int) -> W.SelectionSlider:
            opts = log_options(lo, hi, include=[value])
            return W.SelectionSlider(options=opts, value=value, description=desc,
                                     continuous_update=False, style=_STYLE, layout=_LAYOUT)

        self.concurrency = sel("concurrency", 1, 1000, concurrency)
        self.prefetch = sel("prefetch", 1, 10000, prefetch)
        self.max_length = sel("max_length", 1, 100_000, max_length)
        self.messages = sel("messages", 10, 10_000, messages)
        if arrival_rate is None:  # simulate()'s "all at t = 0"
            burst, arrival_rate = True, 80.0
        self.arrival_rate = W.FloatLogSlider(
            value=arrival_rate, base=10, min=-1, max=4, step=0.05, description="arrivals (/s)",
            readout_format=".3g", continuous_update=False, style=_STYLE, layout=_LAYOUT)
        self.burst = W.Checkbox(value=burst, description="all at t = 0 (burst)", indent=False)
        self.service_time = W.FloatLogSlider(
            value=service_time, base=10, min=-3, max=1, step=0.05, description="service (s)",
            readout_format=".3g", continuous_update=False, style=_STYLE, layout=_LAYOUT)
        self.distribution = W.Dropdown(options=list(dists), value=distribution,
                                       description="service shape", style=_STYLE)
        self.failure_rate = W.FloatSlider(
            value=failure_rate, min=0.0, max=0.9, step=0.01, description="failure rate",
            readout_format=".2f", continuous_update=False, style=_STYLE, layout=_LAYOUT)
        self.seed = W.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed",
                                     style=_STYLE, layout=W.Layout(width="220px"))
        self.controls = [self.concurrency, self.prefetch, self.arrival_rate, self.burst,
                         self.service_time, self.distribution, self.failure_rate,
                         self.messages, self.max_length, self.seed]
        for w in self.controls:
            w.observe(self._on_change, names="value")

        self.status = W.HTML().add_class("wqnb-status")
        self.table = W.HTML().add_class("wqnb-summary")
        self.image = figure_image()
        left = W.VBox([self.concurrency, self.prefetch, self.max_length, self.messages])
        right = W.VBox([self.arrival_rate, self.burst, self.service_time, self.distribution,
                        self.failure_rate, self.seed])
        self.widget = W.VBox(
            [W.HBox([left, right]), self.status, W.HBox([self.image, self.table])]
        ).add_class("wqnb-explorer")

        self.timeline: Timeline | None = None
        self.summary: pd.Series | None = None
        self._figure: Figure | None = None
        #: frames drawn ahead in a worker, and the last few frames (``None``: off)
        self.ahead: Ahead | None = Ahead(density) if ahead else None
        self._moved: list[W.SelectionSlider] = [self.concurrency, self.prefetch]
        self.runs = 0
        self.timings: dict[str, float] = {}
        self.error: str | None = None
        if auto:
            self.update()

    # the view-model -----------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The keywords the widgets currently ask :func:`wqnb.simulate` for."""
        mean = round(float(self.service_time.value), 6)
        return {
            "concurrency": int(self.concurrency.value),
            "prefetch": int(self.prefetch.value),
            "messages": int(self.messages.value),
            "arrival_rate": None if self.burst.value else round(float(self.arrival_rate.value), 6),
            "service_time": self._dists[self.distribution.value](mean),
            "failure_rate": round(float(self.failure_rate.value), 4),
            "max_length": int(self.max_length.value),
            "seed": int(self.seed.value),
        }

    @property
    def figure(self) -> Figure | None:
        """The figure shown (drawn here on first use when the picture came from ahead)."""
        if self._figure is None and self.timeline is not None:
            self._figure = plot.overview(self.timeline, fig=Figure(figsize=FIGSIZE))
        return self._figure

    def _on_change(self, change: dict[str, Any]) -> None:
        owner = change.get("owner") if isinstance(change, dict) else None
        if owner in (self.concurrency, self.prefetch):  # the knob moved last: drawn ahead first
            self._moved = [owner, *(w for w in self._moved if w is not owner)]
            self._direction = 1 if owner.index >= owner.options.index(change["old"]) else -1
        self.update()

    def update(self) -> None:
        """Simulate with the current values, then redraw the figure and the table."""
        kwargs = self.params()
        t0 = time.perf_counter()
        frame = self.ahead.take(kwargs) if self.ahead is not None else None
        if frame is None:
            if self.ahead is not None:
                self.ahead.stop_guessing()  # this core is needed here now
            try:
                tl = self._simulate(**kwargs)
            except Exception as exc:  # noqa: BLE001 - a bad combination: say so in the widget, keep the old plot
                self.error = f"{type(exc).__name__}: {exc}"
                self.status.value = f"<b style='color:#9b2226'>{html.escape(self.error)}</b>"
                return
            t1 = time.perf_counter()
            self.timeline = tl
            self.summary = tl.summary()
            self._figure = plot.overview(tl, fig=Figure(figsize=FIGSIZE))
            show_figure(self.image, self._figure, density=self.density)
            source = "drawn"
        else:  # drawn ahead (or kept): the same picture render_frame draws here
            t1 = time.perf_counter()
            self.timeline, self.summary, self._figure = frame.timeline, frame.summary, None
            self.image.layout.width = f"{round(FIGSIZE[0] * CSS_PX_PER_INCH)}px"
            self.image.value = frame.png
            source = "ready"
        t2 = time.perf_counter()
        self.error = None
        self.table.value = _table_html(self.summary)
        self.runs += 1
        self.timings = {"simulate": t1 - t0, "draw": t2 - t1}
        self.source = source
        how = (f"simulated in {t1 - t0:.2f} s, drawn in {t2 - t1:.2f} s" if frame is None else
               f"drawn ahead, shown in {t2 - t0:.2f} s")
        self.status.value = (
            f"run {self.runs}: {kwargs['messages']:,} messages, "
            f"concurrency {kwargs['concurrency']}, prefetch {kwargs['prefetch']} "
            f"<span style='color:#6c757d'>({how})</span>"
        )
        if self.ahead is not None:
            if frame is None:
                self.ahead.put(Frame(kwargs, self.timeline, self.summary,
                                     bytes(self.image.value), t1 - t0, t2 - t1))
            self.ahead.plan(self._neighbours(kwargs))

    def _neighbours(self, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """The frames one stop away on concurrency and prefetch: the knob moved last
        first, in the direction it moved."""
        out = []
        names = {id(self.concurrency): "concurrency", id(self.prefetch): "prefetch"}
        for k, slider in enumerate(self._moved):
            i = slider.options.index(kwargs[names[id(slider)]])
            step = getattr(self, "_direction", 1) if k == 0 else 1
            for j in (i + step, i - step):
                if 0 <= j < len(slider.options):
                    out.append({**kwargs, names[id(slider)]: slider.options[j]})
        return out

    def close(self) -> None:
        """Stop the worker that draws ahead (the widget keeps working, drawing here)."""
        if self.ahead is not None:
            self.ahead.close()
            self.ahead = None

    # display -------------------------------------------------------------------------
    def __repr__(self) -> str:
        p = self.params()
        p["service_time"] = f"{self.distribution.value}({self.service_time.value:.3g})"
        inner = ", ".join(f"{k}={v}" for k, v in p.items())
        return f"Explorer({inner})"

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return static_fallback(self.widget._repr_mimebundle_(**kwargs), self.image, repr(self))


# -- Sweep -----------------------------------------------------------------------------


def _parse_grid(text: str, what: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.replace(";", ",").split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"{what}: write whole numbers separated by commas, not {text!r}") from None
    if not values or values[0] < 1:
        raise ValueError(f"{what}: give at least one value, each ≥ 1")
    return values


class Sweep:
    """Run :func:`wqnb.simulate` over a concurrency × prefetch grid, then draw heatmaps.

    The other knobs are fixed (``**fixed`` goes to every run). Press *Run* (or call
    :meth:`run`); the progress bar counts the runs; ``.results`` holds one row a run
    (the grid values and the run's :meth:`~wqnb.timeline.Timeline.summary`).
    """

    def __init__(
        self,
        concurrency: Sequence[int] = (1, 2, 4, 8, 16),
        prefetch: Sequence[int] = (1, 4, 16, 64),
        *,
        metrics: Sequence[str] = ("throughput_per_s", "latency_p99_s"),
        simulate: Callable[..., Timeline] | None = None,
        density: float = PIXEL_DENSITY,
        executor: Executor | str | None = None,
        **fixed: Any,
    ) -> None:
        # the grid runs on every core by default, as wqnb.sweep does; a simulate= of your
        # own runs here, in order (it may not be importable in a worker process)
        self.executor = executor if executor is not None or simulate is None else "serial"
        if simulate is None:
            from .sim import simulate
        self._simulate = simulate
        self.fixed = {"messages": 1000, "seed": 1, **fixed}
        self.metrics = tuple(metrics)
        self.density = density
        self.concurrency = W.Text(value=", ".join(map(str, concurrency)),
                                  description="concurrency", style=_STYLE, layout=_LAYOUT)
        self.prefetch = W.Text(value=", ".join(map(str, prefetch)), description="prefetch",
                               style=_STYLE, layout=_LAYOUT)
        self.button = W.Button(description="Run sweep", button_style="primary", icon="play")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="runs",
                                      style=_STYLE, layout=_LAYOUT)
        self.status = W.HTML().add_class("wqnb-status")
        self.image = figure_image()
        fixed_text = ", ".join(f"{k}={v!r}" for k, v in self.fixed.items())
        self.widget = W.VBox([
            W.HTML(f"<small>fixed: {html.escape(fixed_text)}</small>"),
            self.concurrency, self.prefetch, W.HBox([self.button, self.progress]),
            self.status, self.image,
        ]).add_class("wqnb-sweep")
        self.button.on_click(self._on_click)
        self.results: pd.DataFrame | None = None
        self.figure: Figure | None = None
        self.task: asyncio.Task[pd.DataFrame] | None = None

    def grid(self) -> list[tuple[int, int]]:
        """The (concurrency, prefetch) pairs the text boxes ask for, in run order."""
        cs = _parse_grid(self.concurrency.value, "concurrency")
        ps = _parse_grid(self.prefetch.value, "prefetch")
        return [(c, p) for c in cs for p in ps]

    def _start(self) -> list[tuple[int, int]] | None:
        try:
            grid = self.grid()
        except ValueError as exc:
            self.status.value = f"<b style='color:#9b2226'>{html.escape(str(exc))}</b>"
            return None
        self.progress.max = len(grid)
        self.progress.value = 0
        self.button.disabled = True
        return grid

    def _one(self, c: int, p: int) -> dict[str, Any]:
        tl = self._simulate(concurrency=c, prefetch=p, **self.fixed)
        from .sim import summary_row

        return {"concurrency": c, "prefetch": p, **summary_row(tl.summary())}

    def _finish(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        self.results = pd.DataFrame(rows)
        self.figure = plot.sweep(self.results, self.metrics,
                                 fig=Figure(figsize=(5.2 * len(self.metrics), 7.5),
                                            layout="constrained"))
        show_figure(self.image, self.figure, density=self.density)
        self.status.value = f"{len(rows)} runs done"
        self.button.disabled = False
        return self.results

    def _pool(self, cells: int) -> tuple[Executor | None, bool]:
        """(executor or None for in-process, whether we made it and must shut it down)."""
        from .sim import _picklable, default_executor

        if self.executor == "serial":
            return None, False
        if isinstance(self.executor, str):
            raise ValueError(  # noqa: TRY004 - a string other than "serial" is a bad value
                f"executor must be an Executor, 'serial' or None, not {self.executor!r}")
        if self.executor is None:
            pool = default_executor(cells) if _picklable(self.fixed) else None
            return pool, pool is not None
        return self.executor, False

    def run(self) -> pd.DataFrame | None:
        """Run the whole grid now (blocking), updating the progress bar after each run."""
        from .sim import _sweep_cell

        grid = self._start()
        if grid is None:
            return None
        pool, own = self._pool(len(grid))
        rows = []
        try:
            if pool is None:
                for c, p in grid:
                    rows.append(self._one(c, p))
                    self.progress.value += 1
            else:
                futures = [pool.submit(_sweep_cell, c, p, None, self.fixed) for c, p in grid]
                for f in futures:  # in grid order: the same rows as a serial run
                    rows.append(f.result())
                    self.progress.value += 1
        finally:
            if own and pool is not None:
                pool.shutdown(cancel_futures=True)
        return self._finish(rows)

    async def arun(self) -> pd.DataFrame | None:
        """Same as :meth:`run`, yielding to the event loop between runs (the kernel stays
        responsive and the progress bar is drawn while the sweep runs)."""
        from .sim import _sweep_cell

        grid = self._start()
        if grid is None:
            return None
        pool, own = self._pool(len(grid))
        rows = []
        try:
            futures = ([asyncio.wrap_future(pool.submit(_sweep_cell, c, p, None, self.fixed))
                        for c, p in grid] if pool is not None else None)
            for k, (c, p) in enumerate(grid):
                if futures is None:
                    rows.append(self._one(c, p))
                    await asyncio.sleep(0)
                else:
                    rows.append(await futures[k])
                self.progress.value += 1
                self.status.value = f"run {self.progress.value}/{len(grid)}: concurrency {c}, prefetch {p}"
        finally:
            if own and pool is not None:
                pool.shutdown(cancel_futures=True)
        return self._finish(rows)

    def _on_click(self, _button: W.Button) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a plain script, a test): just run it
            self.run()
            return
        self.button.disabled = True  # at once: a second click must not start a second run
        self.task = loop.create_task(self.arun())

    def __repr__(self) -> str:
        return (f"Sweep(concurrency=[{self.concurrency.value}], prefetch=[{self.prefetch.value}], "
                f"{', '.join(f'{k}={v!r}' for k, v in self.fixed.items())})")

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return static_fallback(self.widget._repr_mimebundle_(**kwargs), self.image, repr(self))


# -- LiveMonitor -----------------------------------------------------------------------


class LiveMonitor:
    """Follow a running :class:`~wqnb.Runtime` from the kernel's own loop.

    Every ``interval`` seconds (while new events arrive) it redraws
    :func:`wqnb.plot.backpressure` from ``rt.timeline`` for one consumer. *Publish* sends
    ``burst`` messages to the consumer's queue with ``await rt.publish`` — so once the
    queue is full the burst waits, and you see the publisher blocked — and *Stop* stops
    the runtime gracefully and draws the final picture. Each refresh reads only the events
    recorded since the last (:class:`wqnb.live.LiveView`) and updates the counts; the
    figure (the recent ``window``) is redrawn when the time since the last redraw is four
    times what that redraw took. The *concurrency* and *prefetch*
    sliders change the running consumer (``rt.update_consumer``): move a knob on a live
    system and watch the gauges answer.

    Create it in a notebook cell while the runtime runs (after ``await rt.start()``); it
    starts an asyncio task on the running loop and returns at once.
    """

    def __init__(
        self,
        rt: Runtime,
        consumer: str | None = None,
        *,
        queue: str | None = None,
        burst: int = 50,
        body: Callable[[int], Any] | None = None,
        interval: float = 0.5,
        window: float | None = 30.0,
        density: float = PIXEL_DENSITY,
        start: bool = True,
    ) -> None:
        self.rt = rt
        self.interval = interval
        self.window = window
        self.density = density
        self.body = body or (lambda i: {"n": i})
        rec = rt.recorder
        self.consumer = pick_live_consumer(rec, consumer)
        info = rec.consumers.get(self.consumer) if self.consumer else None
        self.queue = queue or (info.queue if info is not None else None)
        if self.queue is None:
            raise ValueError("LiveMonitor: give queue= (this runtime has no consumer to follow)")
        #: what each refresh reads: only the rows recorded since the last one (wqnb.live)
        self.live = LiveView(rec, self.consumer, self.queue, window=window)
        self.burst = W.BoundedIntText(value=burst, min=1, max=100_000, description="burst size",
                                      style=_STYLE, layout=W.Layout(width="220px"))
        self.publish_button = W.Button(description="Publish burst", icon="paper-plane")
        self.stop_button = W.Button(description="Stop runtime", icon="stop",
                                    button_style="danger")
        self.status = W.HTML().add_class("wqnb-status")
        self.image = figure_image()
        live = rt.consumers.get(self.consumer) if self.consumer else None
        self.concurrency = W.IntSlider(value=live.concurrency if live else 1, min=1, max=64,
                                       description="concurrency", style=_STYLE, continuous_update=False)
        self.prefetch = W.IntSlider(value=live.prefetch if live else 1, min=1, max=500,
                                    description="prefetch", style=_STYLE, continuous_update=False)
        for knob in (self.concurrency, self.prefetch):
            knob.disabled = live is None
            knob.observe(lambda _change: self.apply_knobs(), names="value")
        self.updates = 0
        self.widget = W.VBox([
            W.HBox([self.burst, self.publish_button, self.stop_button]),
            W.HBox([self.concurrency, self.prefetch]), self.status,
            self.image,
        ]).add_class("wqnb-live")
        self.publish_button.on_click(lambda _b: self.publish_burst())
        self.stop_button.on_click(lambda _b: self.stop())
        self.refreshes = 0
        self.redraws = 0  #: refreshes that drew the figure again
        self.draw_seconds = 0.0  #: what the last redraw took
        self._drawn_at = 0.0
        self.published = 0
        self.handed_back = 0  #: deliveries a stop handed back to the queue
        self.cancelled = 0    #: burst messages never published (Stop cancelled them)
        self._asked = 0
        self.figure: Figure | None = None
        self.summary: pd.Series | None = None
        self._seen = -1
        self._counter = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.task: asyncio.Task[None] | None = None
        self.stopping: asyncio.Task[None] | None = None
        self.refresh()
        if start:
            self.start()

    # the view-model -----------------------------------------------------------------
    def refresh(self, *, force: bool = False) -> bool:
        """Redraw if new events arrived (or ``force``); say if it did. Reads only the rows
        recorded since the last refresh (:class:`wqnb.live.LiveView`: running counts and
        gauges), and draws the recent ``window`` (at most ``live.plot_rows`` rows)."""
        live = self.live
        live.update()
        n = live.rows_read
        if n == self._seen and not force:
            return False
        self._seen = n
        state = getattr(self.rt, "state", "?")
        if n:
            t_end = live.t_end
            start = max(0.0, t_end - self.window) if self.window else None
            began = time.perf_counter()
            # a redraw costs the same whatever the history (matplotlib's layout and PNG):
            # at most a fifth of the time goes to it; the counts update at every refresh
            if force or self.figure is None or began - self._drawn_at >= 4 * self.draw_seconds:
                self.figure = plot.backpressure(
                    live.timeline(), self.consumer, fig=Figure(figsize=(9, 5.5), layout="constrained"),
                    start=start)
                show_figure(self.image, self.figure, density=self.density)
                self._drawn_at = time.perf_counter()
                self.draw_seconds = self._drawn_at - began
                self.redraws += 1
            self.summary = s = live.summary()
            counts = ", ".join(f"{k.replace('_', ' ')} {int(s[k]):,}" for k in
                               ("published", "acked", "nacked", "dead_lettered") if k in s)
            self.handed_back = live.handed_back
            if self.handed_back:  # a stop put them back in the queue: they are not lost
                counts += f", handed back to the queue {self.handed_back:,}"
            if self.cancelled:
                counts += f" · {self.cancelled:,} unpublished (bursts stopped)"
            if "dropped_events" in s:  # Runtime(max_events=): the timeline keeps the newest
                counts += f" · first {int(s['dropped_events']):,} events dropped (max_events)"
            self.status.value = f"runtime {state} · t = {t_end:.1f} s · {counts}"
        else:
            self.status.value = f"runtime {state} · no events yet: publish a burst"
        self.refreshes += 1
        return True

    def publish_burst(self, n: int | None = None) -> asyncio.Task[int]:
        """Publish ``n`` (default: the burst box) messages as one task; return the task."""
        n = int(self.burst.value if n is None else n)

        self._asked += n

        async def go() -> int:
            for _ in range(n):
                await self.rt.publish(self.queue, self.body(self._counter))
                self._counter += 1
                self.published += 1
            return n

        return self._spawn(go())

    def apply_knobs(self) -> asyncio.Task[None] | None:
        """Apply the sliders to the running consumer (as a task); None when nothing changes."""
        consumer = self.rt.consumers.get(self.consumer) if self.consumer else None
        if consumer is None or not consumer.running:
            return None
        c, p = int(self.concurrency.value), int(self.prefetch.value)
        if (c, p) == (consumer.concurrency, consumer.prefetch):
            return None

        async def go() -> None:
            await self.rt.update_consumer(self.consumer, concurrency=c, prefetch=p)
            self.updates += 1
            self.refresh(force=True)

        return self._spawn(go())

    def stop(self) -> asyncio.Task[None]:
        """Stop the runtime gracefully (as a task), then stop following it."""
        if self.stopping is None:
            self.publish_button.disabled = True
            self.stop_button.disabled = True
            self.concurrency.disabled = self.prefetch.disabled = True

            async def go() -> None:
                # bursts still publishing stop first: nothing is published into a
                # runtime that is stopping, and the status says how many were not sent
                bursts = [t for t in self._tasks if t is not asyncio.current_task()]
                for t in bursts:
                    t.cancel()
                await asyncio.gather(*bursts, return_exceptions=True)
                self.cancelled = self._asked - self.published
                try:
                    await self.rt.stop()
                finally:
                    await self.close()

            self.stopping = self._spawn(go())
        return self.stopping

    # the follower task ---------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        """Start following (needs a running loop: a notebook cell, or a coroutine)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "LiveMonitor follows a runtime on the running event loop: create it in a "
                "notebook cell or inside a coroutine (after `await rt.start()`)"
            ) from None
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._follow())
        return self.task

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.refresh()
            if getattr(self.rt, "state", "running") != "running" and self.stopping is None:
                break  # the runtime was stopped elsewhere: draw once more and rest

    async def close(self) -> None:
        """Stop following; draw the final picture."""
        task, self.task = self.task, None
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.refresh(force=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __repr__(self) -> str:
        return f"LiveMonitor(consumer={self.consumer!r}, queue={self.queue!r})"

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return static_fallback(self.widget._repr_mimebundle_(**kwargs), self.image, repr(self))



# -- Replay ------------------------------------------------------------------------------


class Replay:
    """Scrub through a timeline: a Play button and a time slider draw the system's state
    at each instant as the seed page's diagram (publisher, queue, prefetch buffer, each
    worker's message, acked / nacked / dead-lettered), under a strip of the gauges.

    Works on any :class:`~wqnb.timeline.Timeline` — simulated, live or merged. The state
    at the slider's instant is :attr:`snapshot` (a :class:`wqnb.replay.Snapshot`, the
    timeline's own gauges at that time); :meth:`seek` jumps to a time, :meth:`step` moves
    a frame (what Play does, every ``interval`` ms, in the browser).
    """

    def __init__(self, timeline: Timeline, consumer: str | None = None, *,
                 frames: int = 200, interval: int = 100, start: float | None = None,
                 end: float | None = None) -> None:
        from .replay import state_at

        if frames < 2:
            raise ValueError(f"Replay: frames must be ≥ 2, got {frames!r}")
        self.timeline = timeline
        self.consumer = pick_consumer(timeline, consumer)
        self._state_at = state_at
        t_last = float(timeline.df["t"].max()) if len(timeline.df) else 0.0
        lo = 0.0 if start is None else float(start)
        hi = t_last if end is None else float(end)
        if not hi >= lo:
            raise ValueError(f"Replay: end ({hi}) must not be before start ({lo})")
        self.times = [lo + (hi - lo) * k / (frames - 1) for k in range(frames)]
        self.play = W.Play(value=0, min=0, max=frames - 1, step=1, interval=interval,
                           description="play", show_repeat=False)
        self.slider = W.IntSlider(value=0, min=0, max=frames - 1, step=1, readout=False,
                                  continuous_update=True, layout=W.Layout(width="520px"))
        W.jslink((self.play, "value"), (self.slider, "value"))  # smooth in the browser
        self.clock = W.HTML().add_class("wqnb-replay-time")
        self.frame = W.HTML().add_class("wqnb-replay")
        self.widget = W.VBox([W.HBox([self.play, self.slider, self.clock]), self.frame]
                             ).add_class("wqnb-replay-widget")
        self.snapshot = None
        self.frames_drawn = 0
        self.index = -1
        # either may change first (the play in a browser, the slider in a test)
        self.play.observe(self._on_index, names="value")
        self.slider.observe(self._on_index, names="value")
        self.show(0)

    def _on_index(self, change: dict[str, Any]) -> None:
        self.show(int(change["new"]))

    def show(self, index: int) -> None:
        """Draw frame ``index`` (0 … frames - 1)."""
        from .replay import diagram_svg

        index = max(0, min(int(index), len(self.times) - 1))
        if index == self.index:
            return
        self.index = index
        if self.slider.value != index:
            self.slider.value = index
        if self.play.value != index:
            self.play.value = index
        t = self.times[index]
        self.snapshot = self._state_at(self.timeline, t, self.consumer)
        self.frame.value = diagram_svg(self.snapshot)
        self.clock.value = f"<code>t = {t:.3f} s / {self.times[-1]:.3f} s</code>"
        self.frames_drawn += 1

    def seek(self, t: float) -> None:
        """Go to the frame nearest time ``t`` (seconds)."""
        best = min(range(len(self.times)), key=lambda k: abs(self.times[k] - t))
        self.show(best)

    def step(self, n: int = 1) -> None:
        """Move ``n`` frames on (what each tick of Play does)."""
        self.show(self.index + n)

    def __repr__(self) -> str:
        return (f"Replay(consumer={self.consumer!r}, frames={len(self.times)}, "
                f"t=0..{self.times[-1]:.3g} s)")

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        data = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        data["text/plain"] = repr(self)
        if self.frame.value:  # the first frame for static viewers (GitHub, nbviewer)
            data["image/svg+xml"] = self.frame.value
        return data, {}
