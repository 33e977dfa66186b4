"""Python handlers: plain callables, sync or async, taking the body (and the delivery).

* ``fn(body)`` or ``fn(body, message)``: the second parameter, when the function has
  one, receives the :class:`~wqnb.message.Delivery` (id, headers, attempt, ack, nack).
* An ``async def`` runs on the loop. A plain ``def`` runs in a worker thread on real
  time, so a blocking call (``time.sleep``, an HTTP request) does not freeze the notebook
  or the other workers; on virtual time it runs inline (threads would make a run
  non-deterministic, and virtual time models waiting with ``await asyncio.sleep``).
  ``offload=False`` runs a cheap sync function inline on real time too.
* Each consumer running sync handlers in threads has a pool of its own, of
  ``concurrency`` threads (asyncio's shared default pool has ``min(32, cpus + 4)``: at
  concurrency 40 only 6 would run while ``busy`` said 40, and one consumer's blocked
  handlers would starve every other consumer's). So ``busy`` is the truth.
* ``sys.exit()`` (or ``KeyboardInterrupt``) raised by a handler is a handler failure: a
  nack with the text recorded, not the end of the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, HandlerError
from ..message import Delivery
from .base import FunctionSpec, Handler

__all__ = ["python_handler", "import_callable"]


def _wants_message(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    params = [
        p for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(params) >= 2 or "message" in sig.parameters or any(
        p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()
    )


def _exit_as_failure(exc: BaseException) -> HandlerError:
    if isinstance(exc, SystemExit):
        what = f"sys.exit({'' if exc.code is None else repr(exc.code)})"
    else:
        what = f"raised {type(exc).__name__}"
    return HandlerError(f"handler called {what}: a handler cannot stop the process")


def _call_guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, with a ``SystemExit``/``KeyboardInterrupt`` it raises turned into a
    :class:`HandlerError` (in a worker thread it would otherwise end the event loop when
    the future is awaited)."""
    try:
        return fn(*args)
    except (SystemExit, KeyboardInterrupt) as e:
        raise _exit_as_failure(e) from None


def python_handler(fn: Callable[..., Any], *, offload: bool, threads: int = 1, name: str = "") -> Handler:
    """Adapt ``fn`` to the handler contract (``await handler(delivery)``).

    ``threads``: the size of the pool a sync ``fn`` runs in when offloaded (the consumer's
    ``concurrency``); the pool is made on first use and shut down with the handler."""
    if not callable(fn):
        raise TypeError(f"handler must be callable, got {fn!r}")
    wants = _wants_message(fn)
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
        if wants:
            async def handle(d: Delivery) -> None:
                await fn(d.message.body, d)
        else:
            async def handle(d: Delivery) -> None:
                await fn(d.message.body)
            handle.body_fn = fn  # type: ignore[attr-defined]  # the consumer may call fn(body) itself
        return handle

    if offload:
        pool: list[concurrent.futures.ThreadPoolExecutor] = []

        async def handle_in_thread(d: Delivery) -> None:
            if not pool:
                pool.append(concurrent.futures.ThreadPoolExecutor(
                    max_workers=max(1, threads), thread_name_prefix=f"wqnb-{name or 'handler'}"))
                weakref.finalize(handle_in_thread, pool[0].shutdown, wait=False)
            loop = asyncio.get_running_loop()
            args = (d.message.body, d) if wants else (d.message.body,)
            result = await loop.run_in_executor(pool[0], _call_guarded, fn, *args)
            if inspect.isawaitable(result):
                await result

        def close() -> None:
            """Let the pool's threads go once their handlers return (consumer stop)."""
            if pool:
                pool.pop().shutdown(wait=False)
        handle_in_thread.close = close  # type: ignore[attr-defined]
        handle_in_thread.threads = threads  # type: ignore[attr-defined]
        return handle_in_thread

    async def handle_inline(d: Delivery) -> None:
        try:
            result = fn(d.message.body, d) if wants else fn(d.message.body)
        except (SystemExit, KeyboardInterrupt) as e:
            raise _exit_as_failure(e) from None
        if inspect.isawaitable(result):
            await result
    return handle_inline


def import_callable(spec: FunctionSpec) -> Callable[..., Any]:
    """Resolve a ``function.python`` entry's ``source: module:attr``."""
    module_name, sep, attr = spec.source.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"source must be 'module:attr', got {spec.source!r}", entry=spec.id, field="source",
            file=spec.file,
        )
    import sys

    added = False
    if spec.yaml_file is not None and str(spec.yaml_file.parent) not in sys.path:
        sys.path.insert(0, str(spec.yaml_file.parent))  # modules beside the YAML file
        added = True
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - a missing module, or one that fails as it runs (SyntaxError...)
        text = str(e) if isinstance(e, ImportError) else f"{type(e).__name__}: {e}"
        raise ConfigError(
            f"cannot import module {module_name!r}: {text}", entry=spec.id, field="source",
            file=spec.file,
        ) from None
    finally:
        if added:
            sys.path.remove(str(spec.yaml_file.parent))
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"module {module_name!r} has no attribute {attr!r}", entry=spec.id, field="source",
                file=spec.file,
            ) from None
    if not callable(obj):
        raise ConfigError(f"{spec.source} is not callable", entry=spec.id, field="source", file=spec.file)
    return obj
