"""The ``wqnb`` command: run a YAML app, simulate a workload, or draw the demo figure.

    wqnb run app.yaml --publish app.queue:tasks '{"id": 1}' -n 100 -o timeline.csv
    wqnb simulate --concurrency 4 --prefetch 10 --messages 1000 --plot sim.png
    wqnb demo -o demo.png
    wqnb worker app.yaml --consumers app.queue:task_consumer --name w1 -o w1.parquet
    wqnb merge pub.parquet w1.parquet w2.parquet -o all.parquet

Bad input ends with one line on stderr naming what is wrong (file, entry, field, Lua
line, option) and exit status 2, before anything runs where it can be known before; a
handler failure is a nack in the timeline, not a crash. Anything else that goes wrong is
one line too, with exit status 1 (``WQNB_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _seconds(text: str) -> float:
    from .durations import parse_duration

    try:
        return parse_duration(text, what="seconds")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _duration_or_dist(text: str) -> Any:
    """``0.05``, ``50ms``, ``exp:0.05``, ``uniform:0.01:0.09``, ``lognormal:0.05:1``."""
    from .durations import parse_duration
    from .sim import Exponential, LogNormal, Uniform

    kind, _, rest = text.partition(":")
    try:
        if kind in ("exp", "exponential"):
            return Exponential(parse_duration(rest, what="service time"))
        if kind == "uniform":
            lo, _, hi = rest.partition(":")
            return Uniform(parse_duration(lo, what="low"), parse_duration(hi, what="high"))
        if kind == "lognormal":
            mean, _, sigma = rest.partition(":")
            try:
                shape = float(sigma or 1.0)
            except ValueError:
                raise ValueError(f"lognormal sigma: expected a number, got {sigma!r}") from None
            return LogNormal(parse_duration(mean, what="mean"), shape)
        return parse_duration(text, what="service time")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _body(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (not the usage block, then the error)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wqnb", description="Wippy's queue system in Python: run, simulate, see.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a YAML app, publish messages, wait for them, print a summary")
    run.add_argument("app", nargs="+", type=Path, help="YAML files or folders")
    run.add_argument("--publish", nargs=2, metavar=("QUEUE", "BODY"), action="append", default=[],
                     help="queue id and body (JSON, or plain text); repeatable")
    run.add_argument("-n", "--count", type=_positive_int, default=1, help="publish each body this many times")
    run.add_argument("--handler", action="append", default=[], metavar="FUNC=MODULE:ATTR",
                     help="use a Python callable for a function id")
    run.add_argument("--virtual", action="store_true", help="run on virtual time (sleeps cost no wall time)")
    run.add_argument("--strict-security", action="store_true",
                     help="refuse publishes from handlers whose consumer has no lifecycle.security actor and "
                          "policies (Wippy's strict mode; also YAML security: {strict_mode: true})")
    run.add_argument("--timeout", type=_seconds, default=None,
                     help="seconds to wait for the queues to drain once every message is published (it does "
                          "not bound publishing itself, nor the consumers' stop_timeout after it; default 60; "
                          "with --virtual, virtual seconds, default 3600: an app that requeues forever still "
                          "ends). Ctrl-C stops gracefully at any point (summary and -o still written); a "
                          "second Ctrl-C exits at once")
    run.add_argument("--max-events", type=_positive_int, default=None, metavar="N",
                   help="keep about N timeline rows, dropping the oldest in chunks (counted; the summary "
                        "says so): bounds a long run's memory (Runtime(max_events=N))")
    _outputs(run)

    sim = sub.add_parser("simulate", help="simulate a workload on virtual time (wqnb.simulate)")
    sim.add_argument("--concurrency", type=_positive_int, default=4)
    sim.add_argument("--prefetch", type=_positive_int, default=10)
    sim.add_argument("--messages", type=_positive_int, default=1000)
    sim.add_argument("--arrival-rate", type=float, default=80.0, help="Poisson arrivals per second; 0 = all at t=0")
    sim.add_argument("--service-time", type=_duration_or_dist, default=0.05,
                     help="seconds or '50ms', or exp:0.05, uniform:0.01:0.09, lognormal:0.05:1")
    sim.add_argument("--failure-rate", type=float, default=0.0)
    sim.add_argument("--max-length", type=_positive_int, default=1000)
    sim.add_argument("--max-attempts", type=_positive_int, default=None, help="dead-letter after this many deliveries")
    sim.add_argument("--seed", type=int, default=1)
    _outputs(sim)

    demo = sub.add_parser("demo", help="the backpressure experiment, drawn to a PNG (no browser needed)")
    demo.add_argument("-o", "--output", type=Path, default=Path("demo.png"))
    _worker_parsers(sub)
    return p


def _outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, help="write the timeline (.csv or .parquet)")
    p.add_argument("--plot", type=Path, help="write the overview figure (.png, .svg, .pdf)")


_TIMELINE_SUFFIXES = (".csv", ".parquet", ".pq")


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail on a bad ``-o`` / ``--plot`` before the run, not after it."""
    if args.command == "demo":  # its -o is the figure
        out, fig = None, args.output
    else:
        out, fig = args.output, args.plot
    if out is not None and out.suffix not in _TIMELINE_SUFFIXES:
        raise ValueError(f"-o {out}: unknown timeline format {out.suffix or '(no suffix)'!r} (use .csv or .parquet)")
    if out is not None and out.suffix in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError(f"-o {out}: writing Parquet needs pyarrow (pip install 'wqnb[parquet]')") from None
    if fig is not None:
        from matplotlib.figure import Figure

        formats = Figure().canvas.get_supported_filetypes()
        if fig.suffix.lstrip(".").lower() not in formats:
            raise ValueError(f"--plot {fig}: unknown figure format {fig.suffix or '(no suffix)'!r} "
                             f"(use one of {', '.join('.' + f for f in sorted(formats))})")
    for flag, path in (("-o", out), ("--plot", fig)):
        if path is not None and not path.resolve().parent.is_dir():
            raise ValueError(f"{flag} {path}: no such folder: {path.resolve().parent}")
        if path is not None and path.is_dir():
            raise ValueError(f"{flag} {path}: is a folder (name the file to write)")


def _report(tl: Any, args: argparse.Namespace) -> None:
    s = tl.summary()
    width = max(len(k) for k in s.index)
    for k, v in s.items():
        shown = f"{v:.4g}" if isinstance(v, float) else str(v)
        print(f"{k:<{width}}  {shown}")
    if getattr(args, "output", None):
        print(f"timeline: {tl.save(args.output)}")
    if getattr(args, "plot", None):
        _figure(tl, args.plot)
        print(f"figure: {args.plot}")


def _figure(tl: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from . import plot

    fig = plot.overview(tl)
    fig.savefig(path, dpi=110, bbox_inches="tight")


#: The exit status of a run ended by Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130
_INTERRUPTED_TEXT = ("interrupted (Ctrl-C): stopped gracefully; the messages not handled yet are back in their "
                     "queues, and the summary and timeline above are as at the stop")


def _first_ctrl_c_stops(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> Callable[[], None]:
    """Until the returned undo is called, a first SIGINT calls ``stop`` on ``loop`` (a
    graceful stop) and a second one ends the process at once. A plain signal handler, not
    ``loop.add_signal_handler``: it must work while the loop itself is busy or stopping."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGINT)
    hits = [0]

    def on_sigint(_signum: int, _frame: Any) -> None:
        hits[0] += 1
        if hits[0] == 1:
            os.write(2, b"wqnb: Ctrl-C: stopping gracefully (Ctrl-C again exits at once)\n")
            loop.call_soon_threadsafe(stop)
        else:
            os.write(2, b"wqnb: second Ctrl-C: exiting at once\n")
            os._exit(INTERRUPTED)

    signal.signal(signal.SIGINT, on_sigint)
    return lambda: signal.signal(signal.SIGINT, previous)


@dataclass
class _RunOutcome:
    """What ``wqnb run`` ends with: the timeline, what went wrong, and why."""

    timeline: Any
    problems: list[str] = field(default_factory=list)
    interrupted: bool = False
    #: consumer id -> function id, for consumers whose handlers outlived stop_timeout
    stuck: dict[str, str] = field(default_factory=dict)


async def _publish_and_drain(rt: Any, args: argparse.Namespace, timeout: float, problems: list[str]) -> None:
    for queue_id, text in args.publish:
        body = _body(text)
        for i in range(args.count):
            await rt.publish(queue_id, body)
            if i % 1000 == 999:
                await asyncio.sleep(0)  # (a publish with room does not yield: let Ctrl-C in)
    try:
        await rt.drain(timeout=timeout)
    except TimeoutError:
        clock = " of virtual time" if args.virtual else ""
        problems.append(f"queues not drained after {timeout:g}s{clock} (--timeout): stopped with messages "
                        "still queued")


async def _run_app(args: argparse.Namespace) -> _RunOutcome:
    """Run the app; return its timeline, and what went wrong at the end if anything did
    (the timeline is still worth printing then: it shows where the messages are)."""
    from .errors import StopTimeout
    from .handlers.base import FunctionSpec
    from .handlers.python import import_callable
    from .runtime import Runtime

    rt = Runtime.from_yaml(*args.app, max_events=args.max_events)
    if args.strict_security:
        rt.security.strict = True
    for item in args.handler:
        fid, sep, target = item.partition("=")
        if not sep:
            raise ValueError(f"--handler {item!r}: expected FUNC=MODULE:ATTR")
        rt.register_function(fid, import_callable(FunctionSpec(id=fid, kind="function.python", source=target)))
    for queue_id, _ in args.publish:
        rt._route(queue_id)  # an unknown queue fails here, before anything starts
    await rt.start()
    timeout = args.timeout if args.timeout is not None else (3600.0 if args.virtual else 60.0)
    out = _RunOutcome(None)
    ctrl_c = asyncio.Event()
    undo = _first_ctrl_c_stops(asyncio.get_running_loop(), ctrl_c.set)
    try:
        work = asyncio.ensure_future(_publish_and_drain(rt, args, timeout, out.problems))
        interrupt = asyncio.ensure_future(ctrl_c.wait())
        try:
            await asyncio.wait({work, interrupt}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupt.cancel()
            if not work.done():
                work.cancel()
                out.interrupted = True
            await asyncio.gather(work, interrupt, return_exceptions=True)
        if not out.interrupted:
            work.result()  # (an error while publishing: main reports it)
    finally:
        try:
            await rt.stop()
        except StopTimeout as e:
            out.problems.append(str(e))
            out.stuck = {c: rt.registry.entries[c].func for c in e.consumers}
        finally:
            undo()
    if out.interrupted:
        out.problems.append(_INTERRUPTED_TEXT)
    out.timeline = rt.timeline
    return out


def _threads_still_running(stuck: dict[str, str], deadline: float = 1.0) -> list[str]:
    """Handler threads of the ``stuck`` consumers still alive after ``deadline`` seconds
    (idle pool threads leave at once; a handler blocked in a sync call does not)."""
    prefixes = {f"wqnb-{c}_": c for c in stuck}
    end = time.monotonic() + deadline
    alive = []
    for t in threading.enumerate():
        consumer = next((c for p, c in prefixes.items() if t.name.startswith(p)), None)
        if consumer is None:
            continue
        t.join(max(0.0, end - time.monotonic()))
        if t.is_alive():
            alive.append(f"{stuck[consumer]} (consumer {consumer}, thread {t.name})")
    return alive


def main(argv: list[str] | None = None) -> int:
    from .errors import WqnbError

    args = _parser().parse_args(argv)
    try:
        _check_outputs(args)
        if args.command == "run":
            if args.virtual:
                from .clock import run_virtual

                out = run_virtual(_run_app(args))
            else:
                out = asyncio.run(_run_app(args))
            _report(out.timeline, args)
            for problem in out.problems:
                print(f"wqnb: {problem}", file=sys.stderr)
            rc = INTERRUPTED if out.interrupted else 1 if out.problems else 0
            running = _threads_still_running(out.stuck) if out.stuck else []
            if running:
                # Python would wait for these threads at exit, past every timeout given.
                print(f"wqnb: exiting without waiting for the handler still running: {', '.join(running)}",
                      file=sys.stderr)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
            if rc:
                return rc
        elif args.command == "simulate":
            from .sim import simulate

            tl = simulate(
                concurrency=args.concurrency, prefetch=args.prefetch, messages=args.messages,
                arrival_rate=args.arrival_rate or None, service_time=args.service_time,
                failure_rate=args.failure_rate, max_length=args.max_length, seed=args.seed,
                max_attempts=args.max_attempts,
            )
            _report(tl, args)
        elif args.command == "demo":
            return _demo(args.output)
        elif args.command in ("worker", "merge"):
            return _worker(args) if args.command == "worker" else _merge(args)
    except BrokenPipeError:  # `wqnb simulate | head`
        return 0
    except (WqnbError, ValueError, TypeError, OSError) as e:
        print(f"wqnb: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"wqnb: {e} (is wqnb installed with the extra this needs? see the README)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if os.environ.get("WQNB_DEBUG"):
            raise
        print(f"wqnb: internal error: {type(e).__name__}: {e} (WQNB_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    return 0


def _demo(output: Path) -> int:
    """Arrivals (60/s) outpace two workers (≈40/s): the buffer fills, then the queue, then publishers wait."""
    from .sim import Exponential, simulate

    tl = simulate(concurrency=2, prefetch=5, messages=600, arrival_rate=60.0,
                  service_time=Exponential(0.05), max_length=50, seed=7)
    import matplotlib

    matplotlib.use("Agg")
    from . import plot

    fig = plot.backpressure(tl)
    fig.savefig(output, dpi=110, bbox_inches="tight")
    s = tl.summary()
    print(f"backpressure demo: {int(s['published'])} messages, {int(s['publish_waits'])} publisher waits, "
          f"max depth {int(s['max_depth'])}/50, max unsettled {int(s['max_unsettled'])} (prefetch 5 + concurrency 2)")
    print(f"figure: {output.resolve()}")
    return 0


def _worker_parsers(sub: Any) -> None:
    """``wqnb worker`` and ``wqnb merge``: several processes on one broker (issue 9 §4)."""
    w = sub.add_parser("worker", help="run an app's consumers (no publishing) until SIGINT/SIGTERM, "
                                      "then stop gracefully and write the timeline")
    w.add_argument("app", nargs="+", type=Path, help="YAML files or folders")
    w.add_argument("--consumers", type=_id_list, default=[], metavar="ID,...",
                   help="the consumers to run (default: the app's auto_start ones)")
    w.add_argument("--name", help="this process's name in merged timelines (default: host:pid)")
    w.add_argument("--handler", action="append", default=[], metavar="FUNC=MODULE:ATTR",
                   help="use a Python callable for a function id")
    w.add_argument("--strict-security", action="store_true",
                   help="refuse publishes from handlers whose consumer has no lifecycle.security actor and "
                        "policies (Wippy's strict mode; also YAML security: {strict_mode: true})")
    w.add_argument("--checkpoint", type=_seconds, default=None, metavar="SECONDS",
                   help="also rewrite -o every SECONDS (a worker killed with -9 leaves its timeline so far)")
    w.add_argument("-o", "--output", type=Path, help="write the timeline (.csv or .parquet)")
    w.add_argument("--max-events", type=_positive_int, default=None, metavar="N",
                   help="keep about N timeline rows, dropping the oldest in chunks (counted; the summary "
                        "says so): bounds a long run's memory (Runtime(max_events=N))")
    w.set_defaults(plot=None)
    m = sub.add_parser("merge", help="join the timelines of several processes into one (by msg_id, on one t)")
    m.add_argument("inputs", nargs="+", type=Path, metavar="TIMELINE", help=".parquet or .csv files")
    m.add_argument("-o", "--output", type=Path, required=True, help="the merged timeline (.csv or .parquet)")
    m.add_argument("--plot", type=Path, help="write the overview figure of the first consumer")


def _id_list(text: str) -> list[str]:
    ids = [part.strip() for part in text.split(",")]
    if not all(ids):
        raise argparse.ArgumentTypeError(f"expected ID,ID,... without empty names, got {text!r}")
    return ids


def _worker(args: argparse.Namespace) -> int:
    from .worker import WorkerOptions, one_line, print_ready, run_worker, save_atomically

    if args.checkpoint is not None and args.output is None:
        raise ValueError("--checkpoint needs -o (the file it rewrites)")
    opts = WorkerOptions(app=args.app, consumers=args.consumers, output=args.output, name=args.name,
                         handlers=args.handler, checkpoint=args.checkpoint,
                         strict_security=args.strict_security, max_events=args.max_events)
    result = asyncio.run(run_worker(opts, started=print_ready))
    line = one_line(result.timeline)
    if args.output is not None:
        line += f"; timeline: {save_atomically(result.timeline, args.output)}"
    print(line)
    for problem in result.problems:
        print(f"wqnb: {problem}", file=sys.stderr)
    return 1 if result.problems else 0


def _merge(args: argparse.Namespace) -> int:
    from .timeline import Timeline

    tl = Timeline.merge(args.inputs)
    procs = tl.df["process"].cat.categories if "process" in tl.df.columns else []
    s = tl.summary()
    print(f"merged {len(args.inputs)} timelines ({', '.join(map(str, procs))}): {len(tl)} events, "
          f"{tl.df['msg_id'].nunique()} messages, {int(s['acked'])} acked; timeline: {tl.save(args.output)}")
    if args.plot:
        _figure(tl, args.plot)
        print(f"figure: {args.plot}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
