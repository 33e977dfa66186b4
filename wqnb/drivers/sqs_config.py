"""The fields of ``queue.driver.sqs``, of its ``config.aws`` entry, and of the queues and
consumers on it, checked once at load time.

Wippy's fields (notes/brokers.md §3.3) with Wippy's ranges and texts: ``config`` (the id
of a ``config.aws`` entry: ``region`` or ``region_env``, ``access_key_id_env``,
``secret_access_key_env``), ``endpoint``, ``message_retention_period`` (60–1209600 s),
``default_delay_seconds`` (0–900), ``disable_message_checksum_validation``, ``use_fips``,
``use_dual_stack``. wqnb also takes a plain ``region`` instead of ``config`` (credentials
then come from the standard AWS chain: environment, ``~/.aws``, instance role) and its own
``connection_timeout``, ``publish_timeout``, ``wait_time`` (the default long poll of its
consumers), ``depth_refresh`` and ``outbox_size``.

A queue's ``driver_options.sqs.default_visibility_timeout`` is set at ``CreateQueue``; a
consumer's ``driver_options.sqs`` has ``visibility_timeout`` (per receive, kept alive by
the driver's heartbeat) and ``wait_time`` (0–20 s). ``auto_ack: true`` is refused.
Like the other broker configs this imports no AWS client.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from ._config import Fields, safe_url, validate_entry

__all__ = ["AwsConfig", "SqsConfig", "SqsConsumerOptions", "SqsQueueOptions", "validate_sqs_entry"]

#: AWS's limits (SQS developer guide, "Quotas").
MAX_VISIBILITY = 43_200  # 12 h
MAX_WAIT = 20
MAX_DELAY = 900


@dataclass(frozen=True)
class AwsConfig:
    """A ``config.aws`` entry (Wippy's ``api/service/aws/config``): where the region and
    the credentials come from. Values are read from the environment at start, never
    stored in the YAML."""

    id: str = ""
    region: str = ""
    region_env: str = ""
    access_key_id_env: str = ""
    secret_access_key_env: str = ""

    FIELDS = ("region", "region_env", "access_key_id_env", "secret_access_key_env")

    @classmethod
    def parse(cls, raw: dict[str, Any], *, driver: str, file: str | None) -> AwsConfig:
        entry = raw.get("id") or driver
        f = Fields({k: v for k, v in raw.items() if k not in ("id", "file", "kind")}, "",
                    entry, raw.get("file") or file)
        f.only(cls.FIELDS)
        c = cls(id=str(raw.get("id") or ""), region=f.string("region"), region_env=f.string("region_env"),
                access_key_id_env=f.string("access_key_id_env"),
                secret_access_key_env=f.string("secret_access_key_env"))
        if not c.region and not c.region_env:
            raise f.error("region is required", "region")
        if bool(c.access_key_id_env) != bool(c.secret_access_key_env):
            raise f.error("access_key_id_env and secret_access_key_env must be given together",
                          "access_key_id_env" if not c.access_key_id_env else "secret_access_key_env")
        return c

    def resolve(self, where: str) -> tuple[str, str | None, str | None]:
        """``(region, access key id, secret)`` from the environment now; a missing
        variable is a :class:`ConfigError` naming it (never its value)."""
        region = self.region
        if self.region_env:
            region = os.environ.get(self.region_env, "") or region
            if not region:
                raise ConfigError(f"{where}: region_env {self.region_env} is not set", entry=self.id or None,
                                  field="region_env")
        if not self.access_key_id_env:
            return region, None, None
        values = []
        for name, key in ((self.access_key_id_env, "access_key_id_env"),
                          (self.secret_access_key_env, "secret_access_key_env")):
            v = os.environ.get(name, "")
            if not v:
                raise ConfigError(f"{where}: {key} {name} is not set", entry=self.id or None, field=key)
            values.append(v)
        return region, values[0], values[1]


@dataclass(frozen=True)
class SqsConfig:
    """A ``queue.driver.sqs`` entry. Durations are seconds.

    ``wait_time``: the long poll of a ``ReceiveMessage`` (a consumer's own
    ``driver_options.sqs.wait_time`` wins); a stop waits at most this for the poll in
    flight to end, so that nothing it returns is stranded. ``depth_refresh``: how often
    the cached depth is asked of SQS (``GetQueueAttributes``; each call is a billed
    request on AWS).
    """

    aws: AwsConfig
    endpoint: str = ""
    message_retention_period: int = 0
    default_delay_seconds: int = 0
    disable_message_checksum_validation: bool = False
    use_fips: bool = False
    use_dual_stack: bool = False
    connection_timeout: float = 10.0
    publish_timeout: float = 30.0
    wait_time: int = MAX_WAIT
    depth_refresh: float = 1.0
    outbox_size: int = 1000

    FIELDS = ("config", "region", "endpoint", "message_retention_period", "default_delay_seconds",
              "disable_message_checksum_validation", "use_fips", "use_dual_stack", "connection_timeout",
              "publish_timeout", "wait_time", "depth_refresh", "outbox_size")

    @classmethod
    def parse(cls, options: dict[str, Any] | None, *, entry: str | None = None,
              file: str | None = None) -> SqsConfig:
        f = Fields(options, "", entry, file)
        f.only(cls.FIELDS)
        raw_cfg = f.raw.get("config")
        if isinstance(raw_cfg, str):  # not resolved: a Runtime built without Registry.check
            raise f.error(f"config entry not found: {raw_cfg}", "config")
        if raw_cfg is not None and not isinstance(raw_cfg, dict):
            raise f.error("must be the id of a config.aws entry", "config")
        if raw_cfg is not None and f.raw.get("region"):
            raise f.error("give config (a config.aws entry) or region, not both", "region")
        if raw_cfg is not None:
            aws = AwsConfig.parse(raw_cfg, driver=entry or "", file=file)
        else:
            region = f.string("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "")
            if not region:
                raise f.error("sqs: aws config is required (config: the id of a config.aws entry, or "
                              "region:, or AWS_REGION in the environment)", "config")
            aws = AwsConfig(region=region)
        endpoint = f.string("endpoint")
        if endpoint:
            try:
                parts = urlsplit(endpoint)
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                raise f.error(f"invalid URL {safe_url(endpoint)}", "endpoint") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise f.error(f"expected http(s)://host[:port], got {safe_url(endpoint)}", "endpoint")
            if parts.username or parts.password:
                raise f.error("credentials do not belong in the endpoint URL: use a config.aws entry",
                              "endpoint")
        retention = f.integer("message_retention_period", 0, minimum=0)
        if retention and not 60 <= retention <= 1_209_600:
            raise f.error(f"sqs: message_retention_period must be 60–1209600, got {retention}",
                          "message_retention_period")
        delay = f.integer("default_delay_seconds", 0, minimum=-(2**31))
        if not 0 <= delay <= MAX_DELAY:
            raise f.error(f"sqs: default_delay_seconds must be 0–900, got {delay}", "default_delay_seconds")
        return cls(
            aws=aws,
            endpoint=endpoint.rstrip("/"),
            message_retention_period=retention,
            default_delay_seconds=delay,
            disable_message_checksum_validation=f.boolean("disable_message_checksum_validation", False),
            use_fips=f.boolean("use_fips", False),
            use_dual_stack=f.boolean("use_dual_stack", False),
            connection_timeout=f.duration("connection_timeout", 10.0, positive=True),
            publish_timeout=f.duration("publish_timeout", 30.0, positive=True),
            wait_time=_whole_seconds(f, "wait_time", MAX_WAIT, 0, MAX_WAIT),
            depth_refresh=f.duration("depth_refresh", 1.0, positive=True),
            outbox_size=f.integer("outbox_size", 1000, minimum=1),
        )

    @property
    def where(self) -> str:
        """The endpoint as shown in messages (AWS's regional one when none is set)."""
        return safe_url(self.endpoint) if self.endpoint else f"AWS SQS in {self.aws.region or self.aws.region_env}"


@dataclass(frozen=True)
class SqsQueueOptions:
    """``driver_options.sqs`` of a queue: attributes set when wqnb creates it."""

    default_visibility_timeout: int | None = None

    @classmethod
    def parse(cls, raw: Any, *, entry: str | None, file: str | None = None) -> SqsQueueOptions:
        f = Fields(raw, "driver_options.sqs.", entry, file)
        if "max_length" in f.raw:
            raise f.error("set options.max_length instead (wqnb's approximate cap, from "
                          "ApproximateNumberOfMessages)", "max_length")
        f.only(("default_visibility_timeout",))
        vt = _whole_seconds(f, "default_visibility_timeout", None, 0, MAX_VISIBILITY)
        return cls(vt)


@dataclass(frozen=True)
class SqsConsumerOptions:
    """``driver_options.sqs`` of a consumer: its receive tunables (Wippy's names)."""

    visibility_timeout: int | None = None
    wait_time: int | None = None

    @classmethod
    def parse(cls, raw: Any, *, entry: str | None, file: str | None = None) -> SqsConsumerOptions:
        f = Fields(raw, "driver_options.sqs.", entry, file)
        f.only(("visibility_timeout", "wait_time"))
        vt = _whole_seconds(f, "visibility_timeout", None, 1, MAX_VISIBILITY)
        return cls(vt, _whole_seconds(f, "wait_time", None, 0, MAX_WAIT))


def _whole_seconds(f: Fields, key: str, default: int | None, low: int, high: int) -> int | None:
    """A duration SQS takes in whole seconds (``30``, ``"30s"``, ``"2m"``), in range."""
    seconds = f.duration(key, None)
    if seconds is None:
        return default
    if seconds != int(seconds):
        raise f.error(f"SQS takes whole seconds, got {f.raw[key]!r}", key)
    if not low <= seconds <= high:
        raise f.error(f"must be {low}–{high} seconds, got {f.raw[key]!r}", key)
    return int(seconds)


def is_fifo_name(name: str) -> bool:
    """AWS's rule: a FIFO queue's name ends in ``.fifo`` (the bare ``fifo`` does not)."""
    return len(name) > 5 and name.endswith(".fifo")


def _queue_name(entry: Any) -> None:
    name = entry.broker_name
    stem = name.removesuffix(".fifo")
    if not stem or len(name) > 80 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in stem):
        raise ConfigError(f"SQS queue names are 1–80 letters, digits, '-' and '_' (and .fifo), got {name!r}",
                          file=getattr(entry, "file", None), entry=entry.id, field="queue_name")


def validate_sqs_entry(entry: Any, driver: Any) -> None:
    """Load-time check of an SQS driver entry, or of a queue or consumer on one
    (:data:`wqnb.registry.ENTRY_VALIDATORS`); raises :class:`ConfigError`."""
    kind = type(entry).__name__
    if kind == "QueueEntry":
        _queue_name(entry)
    if kind == "ConsumerEntry" and getattr(entry, "auto_ack", False):
        raise ConfigError(
            "auto_ack: true is not supported on queue.driver.sqs: SQS has no at-most-once "
            "receive (remove it; messages are deleted after the handler)",
            file=getattr(entry, "file", None), entry=entry.id, field="auto_ack")
    validate_entry(entry, "sqs", driver=SqsConfig.parse, queue=SqsQueueOptions.parse,
                   consumer=SqsConsumerOptions.parse)
