"""Durations as Wippy writes them: ``"50ms"``, ``"1.5s"``, ``"2m"``, or plain seconds.

Go's ``time.ParseDuration`` units are accepted (``ns us µs ms s m h``) and may be chained
(``"1m30s"``). A bare number in YAML means seconds; Lua's ``time`` module uses nanosecond
integers, which it converts itself before calling :func:`parse_duration`.
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_duration", "format_duration"]

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
#: Go's longest duration (an int64 of nanoseconds, about 292 years): Wippy cannot read a
#: longer one, and anything near it is a typo, not a timeout.
MAX_SECONDS = (2**63 - 1) / 1e9


def parse_duration(value: object, *, what: str = "duration") -> float:
    """Return seconds for a duration string or number; raise ``ValueError`` naming ``what``."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration like '200ms' or seconds, got {value!r}")
    if isinstance(value, (int, float)):
        return _checked(float(value), value, what)
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pass
        else:
            return _checked(seconds, value, what)
        pos, total = 0, 0.0
        for m in _PART.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos == len(text) and pos > 0:
            return _checked(total, value, what)  # "1<400 zeros>s" is inf
    raise ValueError(
        f"{what}: invalid duration {_quote(value)} (use '200ms', '1.5s', '1m30s' or seconds)"
    )


def _checked(seconds: float, value: object, what: str) -> float:
    if not math.isfinite(seconds):  # nan would sort nowhere on a timer heap; inf never ends
        raise ValueError(f"{what}: must be a finite number of seconds, got {_quote(value)}")
    if seconds < 0:
        raise ValueError(f"{what}: must not be negative, got {value!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{what}: longer than Go's longest duration (about 292 years), got {_quote(value)}")
    return seconds


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...{text[-10:]} ({len(text)} characters)"


def format_duration(seconds: float) -> str:
    """Short human form used in messages and plot labels: ``250ms``, ``1.5s``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"
