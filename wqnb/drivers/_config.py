"""What every broker driver's config module shares: reading fields with errors that name
file, entry and field, URLs shown without their password, and the load-time dispatch of a
driver, queue or consumer entry to the right parser.

No broker client is imported here, so the registry can check entries before any driver
module (or its client library) loads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

from ..durations import parse_duration
from ..errors import ConfigError

__all__ = ["Fields", "check_url", "safe_url", "validate_entry"]

#: ``parse(raw, *, entry=..., file=...)`` of one mapping of options.
Parser = Callable[..., Any]


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (Wippy's ``sanitizeURL``); an URL
    that does not parse is shown as ``<unparsable URL>`` rather than risk a secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except (ValueError, TypeError):
        return "<unparsable URL>"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{port}" if port is not None else "")
    if parts.username is not None:
        user = quote(unquote(parts.username), safe="")
        netloc = f"{user}{':***' if parts.password is not None else ''}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Fields:
    """Reads one mapping of options; every error names the entry and ``prefix.key``."""

    def __init__(self, raw: Any, prefix: str, entry: str | None, file: str | None) -> None:
        self.prefix = prefix
        self.entry = entry
        self.file = file
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise self.error(f"expected a mapping, got {type(raw).__name__}", "")
        self.raw: dict[str, Any] = raw

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}" if key else self.prefix.rstrip(".")

    def error(self, text: str, key: str) -> ConfigError:
        return ConfigError(text, file=self.file, entry=self.entry, field=self.name(key) or None)

    def only(self, known: tuple[str, ...]) -> None:
        for key in self.raw:
            if key not in known:
                raise self.error(f"unknown field {key!r} (known: {', '.join(known)})", str(key))

    def boolean(self, key: str, default: bool) -> bool:
        v = self.raw.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.error(f"must be true or false, got {v!r}", key)
        return v

    def string(self, key: str, default: str = "") -> str:
        v = self.raw.get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.error(f"must be a string, got {type(v).__name__}", key)
        return v

    def integer(self, key: str, default: int | None, *, minimum: int = 0,
                maximum: int | None = None) -> int | None:
        v = self.raw.get(key)
        if v is None:
            return default
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                or v != int(v)):
            raise self.error(f"must be an integer, got {v!r}", key)
        v = int(v)
        if v < minimum or (maximum is not None and v > maximum):
            top = f" and {maximum}" if maximum is not None else ""
            raise self.error(f"must be between {minimum}{top}, got {v}" if top
                             else f"must be at least {minimum}, got {v}", key)
        return v

    def duration(self, key: str, default: float | None, *, positive: bool = False) -> float | None:
        v = self.raw.get(key)
        if v is None:
            return default
        try:
            seconds = parse_duration(v, what=self.name(key))
        except ValueError as e:
            raise ConfigError(str(e).partition(": ")[2] or str(e), file=self.file,
                              entry=self.entry, field=self.name(key)) from None
        if positive and seconds <= 0:
            raise self.error(f"must be more than 0, got {v!r}", key)
        return seconds


def check_url(f: Fields, url: str, schemes: tuple[str, ...], expected: str) -> SplitResult:
    """``url`` split, or the error naming field ``url``: it must parse, have a host and
    one of ``schemes`` (``expected`` is the form shown, e.g. ``redis://host:port/db``)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise f.error(f"invalid URL {safe_url(url)}", "url") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise f.error(f"expected {expected}, got {safe_url(url)}", "url")
    return parts


def validate_entry(entry: Any, key: str, *, driver: Parser, queue: Parser, consumer: Parser) -> None:
    """The load-time check of a driver entry (``driver(entry.options)``), or of a queue
    or consumer on one (``queue``/``consumer`` of its ``driver_options[key]``); each
    parser raises :class:`~wqnb.errors.ConfigError` naming entry and field."""
    kind = type(entry).__name__
    file = getattr(entry, "file", None)
    if kind == "DriverEntry":
        driver(entry.options, entry=entry.id, file=file)
    elif kind in ("QueueEntry", "ConsumerEntry"):
        dopts = entry.driver_options
        raw = dopts.get(key) if isinstance(dopts, dict) else None
        (queue if kind == "QueueEntry" else consumer)(raw, entry=entry.id, file=file)
