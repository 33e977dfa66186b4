"""The fields of ``queue.driver.amqp`` and of the queues and consumers on it, checked once.

Wippy's AMQP driver fields (notes/brokers.md §3.2) are read from the driver entry's top
level or its ``options:`` (the registry merges both); a queue's broker options live in
``driver_options.amqp`` and a consumer's in its own ``driver_options.amqp``. This module
needs no AMQP client: :func:`validate_amqp_entry` runs at load time (the registry calls
it through ``ENTRY_VALIDATORS``), so a bad field fails before anything connects, with a
:class:`~wqnb.errors.ConfigError` naming file, entry and field. Credentials never appear
in a message: every URL shown goes through :func:`safe_url`.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from ._config import Fields, check_url, safe_url, validate_entry

__all__ = [
    "AmqpConfig",
    "AmqpConsumerOptions",
    "AmqpQueueOptions",
    "TlsConfig",
    "safe_url",
    "validate_amqp_entry",
]

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"

#: The name this module gave ``Fields`` before it moved to ``._config`` (still imported).
_Fields = Fields


@dataclass(frozen=True)
class TlsConfig:
    """``tls.*``: Wippy's inline PEM or ``*_env`` variables (exclusive), or file paths."""

    enabled: bool = False
    server_name: str = ""
    cert: str = ""
    key: str = ""
    ca: str = ""
    cert_env: str = ""
    key_env: str = ""
    ca_env: str = ""
    insecure_skip_verify: bool = False

    FIELDS = ("enabled", "server_name", "cert", "key", "ca", "cert_env", "key_env", "ca_env",
              "insecure_skip_verify")

    @classmethod
    def parse(cls, f: Fields) -> TlsConfig:
        f.only(cls.FIELDS)
        t = cls(
            enabled=f.boolean("enabled", False),
            server_name=f.string("server_name"),
            insecure_skip_verify=f.boolean("insecure_skip_verify", False),
            **{k: f.string(k) for k in ("cert", "key", "ca", "cert_env", "key_env", "ca_env")},
        )
        for name in ("cert", "key", "ca"):
            if getattr(t, name) and getattr(t, f"{name}_env"):
                raise f.error(f"{name} and {name}_env are mutually exclusive", name)
        has_cert = bool(t.cert or t.cert_env)
        has_key = bool(t.key or t.key_env)
        if has_cert != has_key:
            raise f.error("cert and key must be given together", "cert" if has_cert else "key")
        return t

    def _pem(self, name: str) -> str:
        env = getattr(self, f"{name}_env")
        if env:
            value = os.environ.get(env)
            if value is None:
                raise ConfigError(f"tls.{name}_env: environment variable {env} is not set")
            return value
        return getattr(self, name)

    def context(self) -> ssl.SSLContext:
        """The client context: the CA (PEM text or a file) and an optional client cert."""
        ca = self._pem("ca")
        ctx = ssl.create_default_context()
        if ca:
            if "-----BEGIN" in ca:
                ctx.load_verify_locations(cadata=ca)
            else:
                ctx.load_verify_locations(cafile=ca)
        cert, key = self._pem("cert"), self._pem("key")
        if cert:
            if "-----BEGIN" in cert:  # inline PEM: ssl wants files
                import tempfile

                with tempfile.TemporaryDirectory() as d:
                    cp, kp = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
                    with open(cp, "w") as fh:
                        fh.write(cert)
                    with open(kp, "w", opener=lambda p, fl: os.open(p, fl, 0o600)) as fh:
                        fh.write(key)
                    ctx.load_cert_chain(cp, kp)
            else:
                ctx.load_cert_chain(cert, key)
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True)
class AmqpConfig:
    """A ``queue.driver.amqp`` entry. Durations are seconds; ``None`` = not set.

    ``reconnect_delay`` 0 turns reconnecting off (Wippy); ``publish_timeout`` bounds how
    long ``publish`` retries while the broker is unreachable (never while it is merely
    full); ``outbox_size`` bounds ``publish_nowait``'s local outbox. ``frame_size`` and
    ``channel_max`` are checked and accepted for Wippy's files, but aiormq takes the
    broker's tuning. ``heartbeat`` is sent in whole seconds (0 turns heartbeats off).
    """

    url: str = DEFAULT_URL
    vhost: str = ""
    connection_name: str = ""
    auth_mechanism: str = "PLAIN"
    heartbeat: float | None = None
    connection_timeout: float = 10.0
    reconnect_delay: float = 1.0
    reconnect_max_delay: float = 30.0
    publish_timeout: float = 30.0
    prefetch_count: int | None = None
    default_message_ttl: float | None = None
    default_queue_ttl: float | None = None
    default_queue_expiry: float | None = None
    frame_size: int | None = None
    channel_max: int | None = None
    outbox_size: int = 1000
    tls: TlsConfig = field(default_factory=TlsConfig)

    FIELDS = ("url", "vhost", "connection_name", "auth_mechanism", "heartbeat",
              "connection_timeout", "reconnect_delay", "reconnect_max_delay", "publish_timeout",
              "prefetch_count", "default_message_ttl", "default_queue_ttl",
              "default_queue_expiry", "frame_size", "channel_max", "outbox_size", "tls")

    @classmethod
    def parse(cls, options: dict[str, Any] | None, *, entry: str | None = None,
              file: str | None = None) -> AmqpConfig:
        f = Fields(options, "", entry, file)
        f.only(cls.FIELDS)
        url = f.string("url", DEFAULT_URL) or DEFAULT_URL
        check_url(f, url, ("amqp", "amqps"), "amqp://user:password@host:port/vhost")
        mech = f.string("auth_mechanism", "PLAIN").upper() or "PLAIN"
        if mech not in ("PLAIN", "EXTERNAL"):
            raise f.error(f"unsupported auth mechanism {mech!r} (use PLAIN or EXTERNAL)", "auth_mechanism")
        cfg = cls(
            url=url,
            vhost=f.string("vhost"),
            connection_name=f.string("connection_name"),
            auth_mechanism=mech,
            heartbeat=f.duration("heartbeat", None),
            connection_timeout=f.duration("connection_timeout", 10.0, positive=True),
            reconnect_delay=f.duration("reconnect_delay", 1.0),
            reconnect_max_delay=f.duration("reconnect_max_delay", 30.0),
            publish_timeout=f.duration("publish_timeout", 30.0, positive=True),
            prefetch_count=f.integer("prefetch_count", None, minimum=0, maximum=65535) or None,
            default_message_ttl=f.duration("default_message_ttl", None),
            default_queue_ttl=f.duration("default_queue_ttl", None),
            default_queue_expiry=f.duration("default_queue_expiry", None, positive=True),
            frame_size=f.integer("frame_size", None, minimum=4096),
            channel_max=f.integer("channel_max", None, minimum=1, maximum=65535),
            outbox_size=f.integer("outbox_size", 1000, minimum=1),
            tls=TlsConfig.parse(Fields(f.raw.get("tls"), "tls.", entry, file)),
        )
        if cfg.reconnect_max_delay < cfg.reconnect_delay:
            raise f.error(f"must not be less than reconnect_delay ({cfg.reconnect_delay:g}s)",
                          "reconnect_max_delay")
        return cfg

    @property
    def safe_url(self) -> str:
        return safe_url(self.url)

    @property
    def tls_enabled(self) -> bool:
        return self.tls.enabled or urlsplit(self.url).scheme == "amqps"


@dataclass(frozen=True)
class AmqpQueueOptions:
    """``driver_options.amqp`` of a queue: what ``queue.declare`` is asked for."""

    durable: bool = True
    auto_delete: bool = False
    message_ttl: float | None = None
    queue_expiry: float | None = None
    queue_type: str = "classic"

    FIELDS = ("durable", "auto_delete", "message_ttl", "queue_expiry", "queue_type")

    @classmethod
    def parse(cls, raw: Any, *, entry: str | None = None, file: str | None = None) -> AmqpQueueOptions:
        f = Fields(raw, "driver_options.amqp.", entry, file)
        if "max_length" in f.raw:
            raise f.error("set options.max_length instead (wqnb declares x-max-length with "
                          "x-overflow: reject-publish, so a full queue refuses publishes "
                          "rather than dropping the oldest message)", "max_length")
        f.only(cls.FIELDS)
        qtype = f.string("queue_type", "classic") or "classic"
        if qtype not in ("classic", "quorum"):
            raise f.error(f"must be classic or quorum, got {qtype!r}", "queue_type")
        opts = cls(
            durable=f.boolean("durable", True),
            auto_delete=f.boolean("auto_delete", False),
            message_ttl=f.duration("message_ttl", None),
            queue_expiry=f.duration("queue_expiry", None, positive=True),
            queue_type=qtype,
        )
        if qtype == "quorum" and not opts.durable:
            raise f.error("a quorum queue is always durable: remove durable: false", "durable")
        if qtype == "quorum" and opts.auto_delete:
            raise f.error("a quorum queue cannot be auto_delete", "auto_delete")
        return opts

    def arguments(self, max_length: int | None, config: AmqpConfig) -> dict[str, Any]:
        """The ``x-`` arguments of ``queue.declare`` (milliseconds, as RabbitMQ wants)."""
        args: dict[str, Any] = {}
        if max_length is not None:
            args["x-max-length"] = int(max_length)
            args["x-overflow"] = "reject-publish"
        ttl = self.message_ttl if self.message_ttl is not None else config.default_queue_ttl
        if ttl is not None:
            args["x-message-ttl"] = int(round(ttl * 1000))
        expiry = self.queue_expiry if self.queue_expiry is not None else config.default_queue_expiry
        if expiry is not None:
            args["x-expires"] = max(1, int(round(expiry * 1000)))
        if self.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
        return args


@dataclass(frozen=True)
class AmqpConsumerOptions:
    """``driver_options.amqp`` of a consumer. ``no_local`` and ``no_wait`` are accepted
    for Wippy's files and have no effect (RabbitMQ ignores no_local; wqnb always waits for
    ``basic.consume-ok``)."""

    exclusive: bool = False
    consumer_tag: str = ""

    FIELDS = ("exclusive", "consumer_tag", "no_local", "no_wait")

    @classmethod
    def parse(cls, raw: Any, *, entry: str | None = None, file: str | None = None) -> AmqpConsumerOptions:
        f = Fields(raw, "driver_options.amqp.", entry, file)
        f.only(cls.FIELDS)
        f.boolean("no_local", False)
        f.boolean("no_wait", False)
        return cls(exclusive=f.boolean("exclusive", False), consumer_tag=f.string("consumer_tag"))


def validate_amqp_entry(entry: Any, driver: Any) -> None:
    """Load-time check of an AMQP driver entry, or of a queue or consumer on one.

    Called by :meth:`wqnb.registry.Registry.check` (``ENTRY_VALIDATORS``) as
    ``fn(entry, driver_entry)``; raises :class:`~wqnb.errors.ConfigError`.
    """
    validate_entry(entry, "amqp", driver=AmqpConfig.parse, queue=AmqpQueueOptions.parse,
                   consumer=AmqpConsumerOptions.parse)
