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

__all__ = ["Host", "to_python"]


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
        self.table_from = lua.table_from
        self.lua_type = lua_type
        self.services = services
        self.live = live
        self.logger = logging.getLogger(f"wqnb.lua.{spec.id}")

    def callables(self) -> dict[str, Callable[..., Any]]:
        return {
            "json_decode": self.json_decode,
            "log": self.log,
            "log_enabled": self.log_enabled,
            "queue_info": self.queue_info,
            "msg": self.msg,
            "now": self.now,
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
            return None, str(e)
        except RecursionError:
            return None, "exceeded maximum nesting depth for JSON decoding"
        if type(value) is dict or type(value) is list:
            try:
                return self.table_from(value, recursive=True)
            except Exception as e:  # the memory cap, an integer overflow  # noqa: BLE001 - must not raise into Lua
                return None, f"{type(e).__name__}: {e}"
        return value

    # -- logger -------------------------------------------------------------------------
    def _logger(self, name: str | None) -> logging.Logger:
        return self.logger if name is None else self.logger.getChild(name)

    def log(self, name: str | None, level: int, msg: str, fields: Any) -> None:
        fields = to_python(fields, self.lua_type)
        self._logger(name).log(level, msg, extra={"fields": fields})

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
            return False, str(e), "Internal", "get queue info failed"
        return True, self.table_from(info, recursive=True)

    def msg(self, token: int, what: str, key: str | None = None) -> Any:
        """``msg:id()``, ``msg:header(k)``, ``msg:headers()`` of a live delivery."""
        d = self.live.get(token)
        try:
            if d is None:
                raise MessageReleased("queue.Message released")
            if what == "id":
                return True, d.id
            headers = d.headers
            if what == "header":
                return True, _header_value(headers[key]) if key in headers else None
            return True, self.table_from({k: _header_value(v) for k, v in headers.items()})
        except MessageReleased as e:
            return False, str(e)

    # -- time -----------------------------------------------------------------------------
    def now(self) -> int:
        """Unix time in nanoseconds (microsecond precision: a float of seconds holds no more)."""
        if self.services is None:
            import time

            return time.time_ns()
        return int(self.services.now() * 1_000_000) * 1000

    @staticmethod
    def parse_duration(text: str) -> Any:
        t = text.strip()
        try:
            float(t)
        except ValueError:
            pass
        else:
            if float(t) != 0:  # Go's ParseDuration wants a unit, except for "0"
                return None, f'time: missing unit in duration "{text}"'
        try:
            return parse_duration(t, what="duration")
        except ValueError as e:
            return None, str(e)

    @staticmethod
    def format_time(ns: int, layout: str) -> Any:
        fmt = _LAYOUTS.get(layout)
        if fmt is None and layout != _RFC3339NANO:
            known = "time.RFC3339, time.RFC3339NANO, time.DATE_TIME, time.DATE_ONLY, time.TIME_ONLY"
            return None, f"layout {layout!r} is not supported by wqnb (use {known})"
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
