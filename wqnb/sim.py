"""Workloads on virtual time: ``simulate()`` and ``sweep()``.

A simulation is the real runtime (the same YAML entries, driver, consumer and handler
code) run on a :class:`~wqnb.clock.VirtualTimeLoop`: a handler's ``await
asyncio.sleep(s)`` (or Lua's ``time.sleep``) costs no wall time, and the same seed gives
the same timeline, every column but ``msg_id`` identical, from any context.

Randomness comes from three streams seeded from ``seed`` (arrivals, service times,
failures), so changing ``failure_rate`` does not change the arrival times.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import multiprocessing
import os
import pickle
import random
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from .clock import run_virtual
from .errors import QueueFull, StopTimeout
from .runtime import Runtime
from .timeline import Timeline

__all__ = [
    "Constant",
    "Distribution",
    "Exponential",
    "LogNormal",
    "SimulatedFailure",
    "Uniform",
    "default_executor",
    "simulate",
    "sweep",
]


class Distribution(Protocol):
    """Anything with ``sample(rng) -> seconds`` and a ``mean``."""

    mean: float

    def sample(self, rng: random.Random) -> float: ...


def _check_seconds(what: str, value: float, *, positive: bool = False) -> None:
    """A bad parameter fails when the distribution is made, naming it, not at the first
    draw deep inside a run (a ZeroDivisionError, a math domain error, negative sleeps)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{what} must be {'> 0' if positive else '>= 0'} seconds, got {value!r}")


@dataclass(frozen=True)
class Constant:
    value: float

    def __post_init__(self) -> None:
        _check_seconds("Constant value", self.value)

    @property
    def mean(self) -> float:
        return self.value

    def sample(self, rng: random.Random) -> float:
        return self.value


@dataclass(frozen=True)
class Exponential:
    """Memoryless service or inter-arrival times with the given mean (seconds)."""

    mean: float

    def __post_init__(self) -> None:
        _check_seconds("Exponential mean", self.mean, positive=True)

    def sample(self, rng: random.Random) -> float:
        return rng.expovariate(1.0 / self.mean)


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def __post_init__(self) -> None:
        _check_seconds("Uniform low", self.low)
        _check_seconds("Uniform high", self.high)
        if self.high < self.low:
            raise ValueError(f"Uniform high must be >= low, got low={self.low!r}, high={self.high!r}")

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class LogNormal:
    """Heavy-tailed service times: the shape of most real handlers. ``sigma`` of log(x)."""

    mean: float
    sigma: float = 1.0

    def __post_init__(self) -> None:
        _check_seconds("LogNormal mean", self.mean, positive=True)
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not self.sigma >= 0:
            raise ValueError(f"LogNormal sigma must be a number >= 0, got {self.sigma!r}")

    @property
    def mu(self) -> float:
        """The mean of log(x) that gives this ``mean``."""
        return math.log(self.mean) - self.sigma**2 / 2

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu, self.sigma)


def sampler(dist: Distribution, rng: random.Random) -> Callable[[], float]:
    """``draw()`` for ``dist`` on ``rng``: the same numbers as ``dist.sample(rng)``, with
    fewer Python calls for the built-in distributions (it runs once per message)."""
    if type(dist) is Exponential:
        return functools.partial(rng.expovariate, 1.0 / dist.mean)
    if type(dist) is Constant:
        return itertools.repeat(dist.value).__next__
    if type(dist) is LogNormal:
        return functools.partial(rng.lognormvariate, dist.mu, dist.sigma)
    return functools.partial(dist.sample, rng)


def _shortest(dist: Distribution) -> float:
    """The least a draw of ``dist`` can be (0 when unknown or unbounded below)."""
    if type(dist) is Constant:
        return dist.value
    if type(dist) is Uniform:
        return dist.low
    return 0.0


def as_distribution(value: float | Distribution, what: str) -> Distribution:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_seconds(what, value)
        return Constant(float(value))
    if hasattr(value, "sample"):
        return value  # type: ignore[return-value]
    raise TypeError(f"{what}: expected seconds or a distribution like wqnb.Exponential(0.05), got {value!r}")


class SimulatedFailure(Exception):
    """Raised by the built-in handler for a ``failure_rate`` failure."""


def _app_yaml(concurrency: int, prefetch: int, max_length: int, requeue_delay: float | None,
              max_attempts: int | None, timeout: float | None) -> str:
    dl = f"\n    dead_letter: {{queue: sim:dead, max_attempts: {max_attempts}}}" if max_attempts else ""
    dead = (
        "\n  - name: dead\n    kind: queue.queue\n    driver: sim:memory\n    options: {max_length: 1000000}"
        if max_attempts else ""
    )
    extra = ""
    if requeue_delay:
        extra += f"\n    requeue_delay: {requeue_delay}"
    if timeout:
        extra += f"\n    timeout: {timeout}"
    return f"""\
namespace: sim
entries:
  - name: memory
    kind: queue.driver.memory
    lifecycle: {{auto_start: true}}
  - name: tasks
    kind: queue.queue
    driver: sim:memory
    options: {{max_length: {max_length}}}{dl}{dead}
  - name: worker
    kind: queue.consumer
    queue: sim:tasks
    func: sim:handler
    concurrency: {concurrency}
    prefetch: {prefetch}{extra}
    lifecycle: {{auto_start: true}}
"""


def simulate(
    concurrency: int = 4,
    prefetch: int = 10,
    messages: int = 1000,
    arrival_rate: float | None = 80.0,
    service_time: float | Distribution = 0.05,
    failure_rate: float = 0.0,
    max_length: int = 1000,
    seed: int = 1,
    *,
    max_attempts: int | None = None,
    requeue_delay: float | None = None,
    timeout: float | None = None,
    app: str | Path | Runtime | None = None,
    queue: str | None = None,
    handlers: Mapping[str, Callable[..., Any]] | None = None,
    body: Callable[[int], Any] | None = None,
    until: float | None = None,
) -> Timeline:
    """Run a workload on virtual time and return its :class:`~wqnb.timeline.Timeline`.

    Built-in app: one memory queue (``max_length``) and one consumer (``concurrency``,
    ``prefetch``, optional ``requeue_delay``, handler ``timeout`` and a dead-letter queue
    after ``max_attempts``) whose handler sleeps ``service_time`` and fails with
    probability ``failure_rate``. Arrivals are Poisson at ``arrival_rate`` per second,
    or all at t = 0 when it is ``None``; one publisher publishes them in order and waits
    when the queue is full (``publish_wait`` rows).

    Your own app: pass ``app`` (a YAML path, YAML text containing ``entries:``, or a
    :class:`Runtime` not yet started), the ``queue`` to publish to and ``handlers``
    (function id → Python callable) for functions that are not Lua entries.
    ``until`` stops the run at that virtual time instead of draining: no more intake, and
    running handlers get the consumer's ``stop_timeout`` (10 s) to finish before they are
    cut off and their messages requeued, as in any graceful stop.
    """
    if isinstance(messages, bool) or not isinstance(messages, int) or messages < 0:
        raise ValueError(f"messages must be a whole number ≥ 0, got {messages!r}")
    if not 0.0 <= failure_rate <= 1.0:  # (False for nan too)
        raise ValueError(f"failure_rate must be between 0 and 1, got {failure_rate}")
    if failure_rate >= 1.0 and not max_attempts:
        raise ValueError("failure_rate 1.0 without max_attempts would requeue every message forever")
    if arrival_rate is not None and not 0 < arrival_rate < math.inf:
        raise ValueError(f"arrival_rate must be > 0 and finite (or None for all at t = 0), got {arrival_rate}")
    if until is not None and (isinstance(until, bool) or not isinstance(until, (int, float))
                              or not 0 <= until < math.inf):
        raise ValueError(f"until must be a finite number of virtual seconds ≥ 0, got {until!r}")
    service = as_distribution(service_time, "service_time")
    if app is None and timeout and not max_attempts and _shortest(service) >= timeout:
        raise ValueError(
            f"service_time {_shortest(service):g}s is never shorter than timeout {timeout:g}s: every delivery "
            "would time out and be requeued forever (set max_attempts, or a timeout above the service time)"
        )
    params = dict(concurrency=concurrency, prefetch=prefetch, messages=messages, arrival_rate=arrival_rate,
                  service_time=service, failure_rate=failure_rate, max_length=max_length, seed=seed,
                  max_attempts=max_attempts, requeue_delay=requeue_delay, timeout=timeout)

    async def run() -> Timeline:
        sleep_for = asyncio.get_running_loop().sleep_future  # type: ignore[attr-defined]
        rng_arrivals = random.Random(f"{seed}:arrivals")
        rng_service = random.Random(f"{seed}:service")
        rng_failure = random.Random(f"{seed}:failures")
        if app is None:
            rt = Runtime.from_yaml_string(
                _app_yaml(concurrency, prefetch, max_length, requeue_delay, max_attempts, timeout),
                name="<simulate>",
            )
            target = "sim:tasks"
            draw = sampler(service, rng_service)
            chance = rng_failure.random
            if failure_rate:
                async def handler(_body: Any) -> None:
                    await sleep_for(draw())
                    if chance() < failure_rate:
                        raise SimulatedFailure("simulated failure")
            else:
                async def handler(_body: Any) -> None:
                    await sleep_for(draw())

            rt.register_function("sim:handler", handler)
        else:
            rt = _user_runtime(app)
            if queue is None:
                raise ValueError("simulate(app=...) needs queue= (the queue id to publish to)")
            target = queue
        for fid, fn in (handlers or {}).items():
            rt.register_function(fid, fn)
        make_body = body or '{{"id": {}}}'.format  # JSON text, as publish would make
        await rt.start()

        async def publisher() -> None:
            # publish_nowait while there is room (a plain call), publish (which records the
            # wait and waits) when the queue is full: the same rows as always awaiting publish.
            publish, publish_nowait = rt.publish, rt._publish_nowait
            gap = None if arrival_rate is None else functools.partial(rng_arrivals.expovariate, arrival_rate)
            for i in range(messages):
                if gap is not None:
                    await sleep_for(gap())
                data = make_body(i)
                try:
                    publish_nowait(target, data)
                except QueueFull:
                    await publish(target, data)

        if until is None:
            await publisher()
            await rt.drain()
            await rt.stop()
        else:
            pub = asyncio.ensure_future(publisher())
            await asyncio.sleep(until)
            pub.cancel()
            (outcome,) = await asyncio.gather(pub, return_exceptions=True)
            try:
                await rt.stop()
            except StopTimeout:
                pass  # handlers outlasted stop_timeout: cut off, their messages requeued and recorded
            if isinstance(outcome, Exception):
                raise outcome  # the publisher failed (a bad queue, a body that raised): say so
        tl = rt.timeline
        tl.params = params
        return tl

    return run_virtual(run())


def _user_runtime(app: str | Path | Runtime) -> Runtime:
    if isinstance(app, Runtime):
        if app.state == "running":
            raise ValueError("simulate(app=rt): the runtime must not be running already")
        return app
    if isinstance(app, str) and "entries:" in app:
        return Runtime.from_yaml_string(app)
    return Runtime.from_yaml(app)


def _sweep_cell(concurrency: int, prefetch: int, seed: int | None,
                kwargs: dict[str, Any]) -> dict[str, Any]:
    """One cell of a sweep (module level: a process pool pickles it by name)."""
    extra = {} if seed is None else {"seed": seed}
    s = simulate(concurrency=concurrency, prefetch=prefetch, **kwargs, **extra).summary()
    row: dict[str, Any] = {"concurrency": concurrency, "prefetch": prefetch}
    if seed is not None:
        row["seed"] = seed
    return {**row, **summary_row(s)}


def summary_row(s: pd.Series) -> dict[str, Any]:
    """A summary as a sweep's row: counts as ``int`` (so a results table shows ``333``,
    not ``333.0``), the rest as floats."""
    from .views import Summary

    return Summary(s).as_row()


def _start_method() -> str:
    """``fork`` where it is safe and cheapest (Linux, Python < 3.12: a worker starts in
    milliseconds with wqnb already imported); else ``forkserver``, else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and sys.version_info < (3, 12):
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


#: What a ``forkserver`` imports once, before it forks the workers: without it every
#: worker imports wqnb, pandas and numpy itself (about a second of CPU each).
FORKSERVER_PRELOAD = ["__main__", "wqnb.sim", "wqnb.views"]


def default_executor(cells: int) -> Executor | None:
    """A process pool with one worker per core (at most one per cell), or ``None`` (run
    in this process) on one core or for a single cell: what :func:`sweep` uses by default."""
    workers = min(os.cpu_count() or 1, cells)
    if workers < 2:
        return None
    ctx = multiprocessing.get_context(_start_method())
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(FORKSERVER_PRELOAD)  # (no effect once the server runs)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - lambdas, local handlers, open runtimes...
        return False
    return True


def sweep(
    concurrency: Iterable[int] = (1, 2, 4, 8),
    prefetch: Iterable[int] = (1, 10, 100),
    *,
    seeds: Iterable[int] | None = None,
    executor: Executor | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """``simulate()`` over every concurrency × prefetch pair; one summary row each.

    Other keyword arguments go to :func:`simulate` unchanged (same seed for every cell, so
    the cells differ only by the two knobs). ``seeds`` repeats every cell once per seed
    (a ``seed`` column tells them apart: the spread over seeds is the noise of a finite
    run). ``progress(done, total)`` is called after each run (the ``Sweep`` widget drives
    its progress bar with it).

    The runs are independent, so by default they run on every core (a process pool, see
    :func:`default_executor`); ``executor=`` takes any :class:`concurrent.futures.Executor`
    — a Dask cluster's ``distributed.Client(...).get_executor()`` spreads a large sweep
    over many machines — and ``executor="serial"`` runs them here, one after another.
    Rows come back in grid order and equal a serial run's: every run is on virtual time
    with its own seeded streams. Arguments a process cannot receive (a lambda ``body``,
    local handlers) make the default run serially.
    """
    cells = [(c, p, sd) for c, p in itertools.product(concurrency, prefetch)
             for sd in (list(seeds) if seeds is not None else [None])]
    if seeds is not None and "seed" in kwargs:
        raise ValueError("sweep: give seeds= or seed=, not both")
    own_pool = False
    if executor == "serial":
        pool: Executor | None = None
    elif isinstance(executor, str):
        raise ValueError(f"executor must be an Executor, 'serial' or None, not {executor!r}")
    elif executor is None:
        pool = default_executor(len(cells)) if _picklable(kwargs) else None
        own_pool = pool is not None
    else:
        pool = executor
    rows: list[dict[str, Any]] = []
    try:
        if pool is None:
            for i, (c, p, sd) in enumerate(cells, 1):
                rows.append(_sweep_cell(c, p, sd, kwargs))
                if progress is not None:
                    progress(i, len(cells))
        else:
            futures = [pool.submit(_sweep_cell, c, p, sd, kwargs) for c, p, sd in cells]
            if progress is not None:
                for i, _ in enumerate(as_completed(futures), 1):
                    progress(i, len(cells))
            rows = [f.result() for f in futures]
    finally:
        if own_pool and pool is not None:
            pool.shutdown(cancel_futures=True)
    return pd.DataFrame(rows)
