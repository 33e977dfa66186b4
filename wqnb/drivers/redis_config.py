"""The fields of ``queue.driver.redis`` and of the queues and consumers on it, checked once.

The driver entry takes ``url`` (``redis://[user:pass@]host:port/db``, ``rediss://`` for
TLS) or the fields of Wippy's removed driver (notes/brokers.md §3.4): ``addrs``/``addr``,
``username``, ``password``, ``db``, ``client_name``, ``tls.*``; plus wqnb's
``claim_min_idle``, ``block``, ``group`` and timeouts. Like :mod:`.amqp_config` this needs
no Redis client: :func:`validate_redis_entry` runs at load time (``ENTRY_VALIDATORS``), so a
bad field fails before anything connects, naming file, entry and field; every URL shown
goes through :func:`~._config.safe_url` (passwords never printed).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ..errors import ConfigError
from ._config import Fields, check_url, safe_url, validate_entry

__all__ = ["DEFAULT_URL", "RedisConfig", "RedisTls", "validate_redis_entry"]

DEFAULT_URL = "redis://localhost:6379/0"


@dataclass(frozen=True)
class RedisTls:
    """``tls.*`` as Wippy's driver spelled it (file paths)."""

    enabled: bool = False
    server_name: str = ""
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    insecure_skip_verify: bool = False

    FIELDS = ("enabled", "server_name", "cert_file", "key_file", "ca_file", "insecure_skip_verify")

    @classmethod
    def parse(cls, f: Fields) -> RedisTls:
        f.only(cls.FIELDS)
        t = cls(enabled=f.boolean("enabled", False), server_name=f.string("server_name"),
                cert_file=f.string("cert_file"), key_file=f.string("key_file"),
                ca_file=f.string("ca_file"),
                insecure_skip_verify=f.boolean("insecure_skip_verify", False))
        if bool(t.cert_file) != bool(t.key_file):
            raise f.error("cert_file and key_file must be given together",
                          "cert_file" if t.cert_file else "key_file")
        return t

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file or None)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True)
class RedisConfig:
    """A ``queue.driver.redis`` entry. Durations are seconds.

    ``claim_min_idle``: how long an entry delivered to a consumer may go unrefreshed
    before another consumer claims it (a dead consumer's messages come back after this;
    a live consumer's refresher re-claims its own every third of it). ``block``: the
    longest blocking ``XREADGROUP`` (a stop waits at most this for the read to end).
    ``publish_timeout``: how long operations retry while Redis is unreachable.
    """

    url: str = DEFAULT_URL
    claim_min_idle: float = 30.0
    block: float = 1.0
    group: str = "wqnb"
    client_name: str = ""
    connection_timeout: float = 5.0
    publish_timeout: float = 30.0
    reconnect_delay: float = 0.1
    reconnect_max_delay: float = 2.0
    outbox_size: int = 1000
    tls: RedisTls = field(default_factory=RedisTls)

    FIELDS = ("url", "addrs", "addr", "username", "password", "db", "client_name", "tls",
              "claim_min_idle", "block", "group", "connection_timeout", "publish_timeout",
              "reconnect_delay", "reconnect_max_delay", "outbox_size")

    @classmethod
    def parse(cls, options: dict[str, Any] | None, *, entry: str | None = None,
              file: str | None = None) -> RedisConfig:
        f = Fields(options, "", entry, file)
        f.only(cls.FIELDS)
        url = f.string("url", "")
        addr = _addr(f)
        if url and addr:
            raise f.error("give url or addrs/addr, not both", "addrs" if "addrs" in f.raw else "addr")
        url = url or (f"redis://{addr}/0" if addr else DEFAULT_URL)
        parts = check_url(f, url, ("redis", "rediss"), "redis://[user:password@]host:port/db")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise f.error(f"the database in the URL must be a number, got {path!r}", "url")
        url = _with_credentials(url, f.string("username") or None, f.string("password") or None,
                                f.integer("db", None, minimum=0, maximum=65535))
        group = f.string("group", "wqnb") or "wqnb"
        cfg = cls(
            url=url,
            claim_min_idle=f.duration("claim_min_idle", 30.0, positive=True),
            block=f.duration("block", 1.0, positive=True),
            group=group,
            client_name=f.string("client_name"),
            connection_timeout=f.duration("connection_timeout", 5.0, positive=True),
            publish_timeout=f.duration("publish_timeout", 30.0, positive=True),
            reconnect_delay=f.duration("reconnect_delay", 0.1, positive=True),
            reconnect_max_delay=f.duration("reconnect_max_delay", 2.0, positive=True),
            outbox_size=f.integer("outbox_size", 1000, minimum=1),
            tls=RedisTls.parse(Fields(f.raw.get("tls"), "tls.", entry, file)),
        )
        if cfg.claim_min_idle < 0.03:
            raise f.error(f"must be at least 30ms (the refresher runs every third of it), got "
                          f"{f.raw['claim_min_idle']!r}", "claim_min_idle")
        if cfg.reconnect_max_delay < cfg.reconnect_delay:
            raise f.error(f"must not be less than reconnect_delay ({cfg.reconnect_delay:g}s)",
                          "reconnect_max_delay")
        if " " in group:
            raise f.error(f"must not contain spaces, got {group!r}", "group")
        return cfg

    @property
    def safe_url(self) -> str:
        return safe_url(self.url)

    @property
    def tls_enabled(self) -> bool:
        return self.tls.enabled or urlsplit(self.url).scheme == "rediss"


def _addr(f: Fields) -> str:
    """Wippy's ``addrs`` (a list; wqnb takes one server) or ``addr``, as ``host:port``."""
    addrs = f.raw.get("addrs")
    if addrs is not None:
        if isinstance(addrs, str):
            addrs = [addrs]
        if not isinstance(addrs, list) or not all(isinstance(a, str) and a for a in addrs):
            raise f.error("must be a list of host:port strings", "addrs")
        if len(addrs) != 1:
            raise f.error(f"wqnb talks to one Redis server (no cluster or sentinel), got "
                          f"{len(addrs)} addresses", "addrs")
        return _check_addr(f, addrs[0], "addrs")
    addr = f.string("addr")
    return _check_addr(f, addr, "addr") if addr else ""


def _check_addr(f: Fields, addr: str, key: str) -> str:
    try:
        parts = urlsplit(f"redis://{addr}")
        parts.port  # noqa: B018
    except ValueError:
        raise f.error(f"expected host:port, got {addr!r}", key) from None
    if not parts.hostname or parts.username is not None or parts.path:
        raise f.error(f"expected host:port, got {addr!r}", key)
    return addr


def _with_credentials(url: str, username: str | None, password: str | None, db: int | None) -> str:
    """``url`` with the separate ``username``/``password``/``db`` fields folded in."""
    parts = urlsplit(url)
    user = username if username is not None else (unquote(parts.username) if parts.username else None)
    pw = password if password is not None else (unquote(parts.password) if parts.password else None)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    if user is not None or pw is not None:
        cred = quote(user or "", safe="") + (f":{quote(pw, safe='')}" if pw is not None else "")
        netloc = f"{cred}@{netloc}"
    path = f"/{db}" if db is not None else (parts.path or "/0")
    return urlunsplit((parts.scheme, netloc, path, parts.query, ""))


def _queue_options(raw: Any, *, entry: str | None, file: str | None) -> None:
    f = Fields(raw, "driver_options.redis.", entry, file)
    if "max_length" in f.raw:
        raise f.error("set options.max_length instead (wqnb refuses publishes into a full "
                      "stream; it never trims with MAXLEN, which drops pending entries)", "max_length")
    f.only(())


def _consumer_options(raw: Any, *, entry: str | None, file: str | None) -> None:
    Fields(raw, "driver_options.redis.", entry, file).only(())


def validate_redis_entry(entry: Any, driver: Any) -> None:
    """Load-time check of a Redis driver entry, or of a queue or consumer on one.

    Called by :meth:`wqnb.registry.Registry.check` (``ENTRY_VALIDATORS``) as
    ``fn(entry, driver_entry)``; raises :class:`~wqnb.errors.ConfigError`.
    """
    if type(entry).__name__ == "ConsumerEntry" and getattr(entry, "auto_ack", False):
        raise ConfigError(
            "auto_ack: true is not supported on queue.driver.redis: a stream has no "
            "at-most-once consume worth the name (remove it; messages are acked after the "
            "handler)", file=getattr(entry, "file", None), entry=entry.id, field="auto_ack")
    validate_entry(entry, "redis", driver=RedisConfig.parse, queue=_queue_options,
                   consumer=_consumer_options)
