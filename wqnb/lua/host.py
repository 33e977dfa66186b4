"""The Python side of the Lua modules: the callables the kernel keeps in private upvalues.

Handler code never sees these objects: each sits behind a Lua closure, and lupa's
``attribute_filter`` refuses attribute access on anything Python anyway. Every callable
here returns plain values, Lua tables, or ``(None, message)``: it must not raise, and it
must never hand a Python container to Lua (that would be a userdata the sandbox could poke).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Callable
from typing import Any

from ..durations import parse_duration
from ..errors import MessageReleased, QueueNotFound
from ..handlers.base import FunctionSpec, HandlerServices
from ..message import Delivery

__all__ = ["NOMEM", "SLACK", "SMALL", "Host", "to_python"]

#: The first value a host call returns when the Lua memory cap cannot hold its result:
#: K.pycall turns it into a Lua "not enough memory" error (the second value says what).
NOMEM = "\x00wqnb: not enough memory"
#: Bytes of headroom kept for what lupa allocates besides the values themselves (stack
#: growth, registry references, a wrapped exception).
SLACK = 8 * 1024
#: Strings up to this many bytes are returned to Lua directly (K.pycall keeps headroom
#: for them); longer ones are built as Lua values under :meth:`Host.build` and boxed.
SMALL = 1024
#: Error texts quote at most this many characters of what they name.
QUOTE = 200
#: Distinct ``logger:named`` names given their own Python logger, per function.
MAX_NAMED_LOGGERS = 64


class NoMemory(Exception):
    """A host value would not fit under the Lua memory cap (caught inside the host)."""


def clip(text: object, limit: int = QUOTE) -> str:
    """``text`` as a str of at most ``limit`` characters (error texts quote user values)."""
    s = text if isinstance(text, str) else str(text)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _lua_size(value: Any, budget: int) -> int:
    """A lower bound on the bytes a Lua copy of ``value`` takes (tables, their slots,
    strings), counted until it passes ``budget``: enough to refuse early what cannot fit."""
    total = 0
    stack = [value]
    short: set[str | bytes] = set()  # Lua interns strings up to 40 bytes: each once
    while stack and total <= budget:
        v = stack.pop()
        t = type(v)
        if t is str or t is bytes:
            if len(v) > 40:
                total += 25 + len(v)
            elif v not in short:
                short.add(v)
                total += 25 + len(v)
        elif t is list:  # a table and its array part (16-byte slots, a power of 2 of them)
            total += 56 + 16 * len(v)
            stack.extend(v)
        elif t is dict:  # a table and its hash part (24-byte nodes)
            total += 56 + 24 * len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
    return total


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value ({name} is not JSON)")


# Python's json accepts NaN and Infinity; Go's (Wippy's) does not.
_decode = json.JSONDecoder(parse_constant=_reject_constant).decode

#: Our key in a logger's ``_cache`` (whose own keys are int levels).
_THRESHOLD_KEY = "wqnb.lua threshold"

_LAYOUTS = {  # Go layouts wqnb can format (always UTC)
    "2006-01-02T15:04:05Z07:00": "%Y-%m-%dT%H:%M:%SZ",
    "2006-01-02 15:04:05": "%Y-%m-%d %H:%M:%S",
    "2006-01-02": "%Y-%m-%d",
    "15:04:05": "%H:%M:%S",
}
_RFC3339NANO = "2006-01-02T15:04:05.999999999Z07:00"


def to_python(value: Any, lua_type: Callable[[Any], str | None], depth: int = 0) -> Any:
    """A Lua value as plain Python: a sequence table becomes a list, others a dict."""
    if lua_type(value) != "table":
        return value
    if depth > 16:
        return "{...}"
    items = list(value.items())
    n = len(items)
    if n and all(type(k) is int for k, _ in items) and {k for k, _ in items} == set(range(1, n + 1)):
        return [to_python(value[i], lua_type, depth + 1) for i in range(1, n + 1)]
    return {str(k): to_python(v, lua_type, depth + 1) for k, v in items}


def _header_value(v: Any) -> Any:
    """Wippy's header mapping: strings, numbers and booleans as they are, the rest printed."""
    if v is None:
        return "<nil>"
    if isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


class Host:
    """What one Lua runtime may ask of Python, bound to one function entry."""

    def __init__(
        self,
        lua: Any,
        lua_type: Callable[[Any], str | None],
        spec: FunctionSpec,
        services: HandlerServices | None,
        live: dict[int, Delivery],
    ) -> None:
        self.lua = lua
        self.table_from = lua.table_from
        self.lua_type = lua_type
        self.services = services
        self.live = live
        self.logger = logging.getLogger(f"wqnb.lua.{spec.id}")
        self._named: dict[str, logging.Logger] = {}
        #: The memory cap in bytes (0 while the runtime is being built, or without one).
        self.cap = 0
        self._clock0 = self._unix()

    # -- making Lua values under the memory cap --------------------------------------------
    def build(self, value: Any, make: Callable[[], Any], upper: int | None = None) -> Any:
        """``make()`` (which makes Lua values from ``value``) with the memory cap lifted.

        lupa converts Python values to Lua with unprotected API calls: a memory error
        there longjmps out of lupa's C frames (outside a handler the process aborts with
        PANIC; inside a host call the GIL taken by lupa's callback wrapper is never given
        back, and the next call waits for it for ever). So the cap is lifted while lupa
        pushes, once an estimate says the value fits; a value that turned out bigger is
        dropped. ``upper``, a cheap upper bound on the size when one is known, spares
        the estimate's walk when it fits. Raises :class:`NoMemory`."""
        cap = self.cap
        if not cap:
            return make()
        lua = self.lua
        free = cap - lua.get_memory_used() - SLACK
        if (upper is None or upper > free) and _lua_size(value, free) > free:
            lua.gccollect()
            free = cap - lua.get_memory_used() - SLACK
            need = _lua_size(value, free)
            if need > free:
                raise NoMemory(f"the value needs at least {need} bytes, {max(free, 0)} are free")
        lua.set_max_memory(0)
        try:
            made = make()
        finally:
            lua.set_max_memory(cap)
        if lua.get_memory_used() + SLACK > cap:
            del made
            lua.gccollect()
            raise NoMemory("the value did not fit")
        return made

    def _box(self, text: str) -> Any:
        """A long string as a Lua table ``{text}`` made under :meth:`build` (pushing the
        string itself as a return value would happen outside it)."""
        return self.build(text, lambda: self.table_from([text]))

    def callables(self) -> dict[str, Callable[..., Any]]:
        return {
            "json_decode": self.json_decode,
            "log": self.log,
            "log_enabled": self.log_enabled,
            "queue_info": self.queue_info,
            "msg": self.msg,
            "now": self.now,
            "clock": self.clock,
            "parse_duration": self.parse_duration,
            "format_time": self.format_time,
            "print": self.print,
        }

    # -- json ---------------------------------------------------------------------------
    def json_decode(self, text: str) -> Any:
        """JSON text to a Lua value: Python's C decoder, then one table_from for containers."""
        try:
            value = _decode(text)
        except ValueError as e:
            return None, clip(e)
        except RecursionError:
            return None, "exceeded maximum nesting depth for JSON decoding"
        try:
            if type(value) is dict or type(value) is list:
                # (no JSON text takes more than 64 bytes a character in Lua: "[]" is a 56-byte table)
                return self.build(value, lambda: self.table_from(value, recursive=True), 64 * len(text) + 1024)
            if type(value) is str and len(value) > SMALL:
                return None, None, self._box(value)
        except NoMemory as e:
            return NOMEM, f"json.decode: {e}"
        except Exception as e:  # an integer overflow  # noqa: BLE001 - must not raise into Lua
            return None, clip(f"{type(e).__name__}: {e}")
        return value

    # -- logger -------------------------------------------------------------------------
    def _logger(self, name: str | None) -> logging.Logger:
        """The Python logger of ``logger:named(name)``: ``wqnb.lua.<function>.<name>``.

        Python keeps every logger it makes for ever, so only the first
        MAX_NAMED_LOGGERS names of a function get their own; records of later names go
        to the function's logger, their name in the ``logger`` field."""
        if name is None:
            return self.logger
        lg = self._named.get(name)
        if lg is None:
            if len(self._named) >= MAX_NAMED_LOGGERS:
                return self.logger
            lg = self._named[name] = self.logger.getChild(name)
        return lg

    def log(self, name: str | None, level: int, msg: str, fields: Any) -> None:
        fields = to_python(fields, self.lua_type)
        lg = self._logger(name)
        if name is not None and lg is self.logger and isinstance(fields, dict):
            fields.setdefault("logger", name)
        lg.log(level, msg, extra={"fields": fields})

    def log_enabled(self, name: str | None, level: int) -> bool:
        return self._logger(name).isEnabledFor(level)

    def log_threshold(self) -> int:
        """The lowest level the function's logger emits now (Lua skips lower ones itself).

        Asked before every delivery, so it is kept where ``logging`` keeps its own answers
        to ``isEnabledFor``: the logger's ``_cache``, which ``setLevel`` and
        ``logging.disable`` clear (on every logger) whenever a level changes."""
        lg = self.logger
        if lg.disabled:  # (not part of logging's cache either)
            return 1000
        cache = getattr(lg, "_cache", None)
        threshold = cache.get(_THRESHOLD_KEY) if cache is not None else None
        if threshold is None:
            threshold = max(lg.getEffectiveLevel(), lg.manager.disable + 1, 1)
            if cache is not None:
                cache[_THRESHOLD_KEY] = threshold
        return threshold

    # -- queue ----------------------------------------------------------------------------
    def queue_info(self, queue_id: str) -> Any:
        if self.services is None:
            return False, "queue manager not found in context", "Invalid", None
        try:
            info = self.services.queue_info(queue_id)
        except QueueNotFound:
            return False, "queue not found", "Internal", "queue not found"
        except Exception as e:  # noqa: BLE001 - must not raise into Lua
            return False, clip(e), "Internal", "get queue info failed"
        try:
            return True, self.build(info, lambda: self.table_from(info, recursive=True))
        except NoMemory as e:
            return NOMEM, f"queue.info: {e}"

    def msg(self, token: int, what: str, key: str | None = None) -> Any:
        """``msg:id()``, ``msg:header(k)``, ``msg:headers()`` of a live delivery."""
        d = self.live.get(token)
        try:
            if d is None:
                raise MessageReleased("queue.Message released")
            if what == "id":
                value = d.id
            elif what == "header":
                headers = d.headers
                value = _header_value(headers[key]) if key in headers else None
            else:
                mapped = {k: _header_value(v) for k, v in d.headers.items()}
                return True, self.build(mapped, lambda: self.table_from(mapped))
            if type(value) is str and len(value) > SMALL:
                return True, None, self._box(value)
            return True, value
        except MessageReleased as e:
            return False, str(e)
        except NoMemory as e:
            return NOMEM, f"queue.Message:{what}(): {e}"

    # -- time -----------------------------------------------------------------------------
    def _unix(self) -> float:
        if self.services is None:
            import time

            return time.time()
        return self.services.now()

    def now(self) -> int:
        """Unix time in nanoseconds (microsecond precision: a float of seconds holds no more)."""
        if self.services is None:
            import time

            return time.time_ns()
        return int(self.services.now() * 1_000_000) * 1000

    def clock(self) -> float:
        """``os.clock()``: the timeline's ``t`` when the runtime lends ``services.clock``,
        else seconds on the runtime's clock since this Lua runtime was made (at ``start()``;
        on virtual time, the virtual seconds). Wippy's gopher-lua counts from when its state
        started, too; Lua's own CPU time would make runs differ."""
        clock = getattr(self.services, "clock", None)
        if clock is not None:
            return clock()
        return self._unix() - self._clock0

    @staticmethod
    def parse_duration(text: str) -> Any:
        t = text.strip()
        try:
            float(t)
        except ValueError:
            pass
        else:
            if float(t) != 0:  # Go's ParseDuration wants a unit, except for "0"
                return None, f'time: missing unit in duration "{clip(text)}"'
        try:
            return parse_duration(t, what="duration")
        except ValueError as e:
            return None, clip(e, 2 * QUOTE)

    @staticmethod
    def format_time(ns: int, layout: str) -> Any:
        fmt = _LAYOUTS.get(layout)
        if fmt is None and layout != _RFC3339NANO:
            known = "time.RFC3339, time.RFC3339NANO, time.DATE_TIME, time.DATE_ONLY, time.TIME_ONLY"
            return None, f"layout {clip(layout)!r} is not supported by wqnb (use {known})"
        try:  # t:add(1e30) makes a time no calendar holds (a float, too)
            t = _dt.datetime.fromtimestamp(int(ns) // 1_000_000_000, _dt.UTC)
            if fmt is None:
                frac = f"{int(ns) % 1_000_000_000:09d}".rstrip("0")
                return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"
            return t.strftime(fmt)
        except (OverflowError, ValueError, OSError, TypeError) as e:
            return None, f"time out of range ({e})"

    # -- print ----------------------------------------------------------------------------
    @staticmethod
    def print(text: str) -> None:
        print(text)
