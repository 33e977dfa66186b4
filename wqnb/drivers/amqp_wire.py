"""wqnb messages on the AMQP wire, and back: what a plain AMQP client sees and sends.

Publishing (:func:`encode`):

* the body is the message's bytes; a ``str`` body is UTF-8 with ``content_type``
  ``text/plain; charset=utf-8``, a ``bytes`` body is ``application/octet-stream``;
* ``message_id`` is wqnb's id; ``delivery_mode`` 2 (persistent) unless the header
  ``amqp.delivery_mode`` says otherwise;
* Wippy's header ↔ property mapping (notes/brokers.md §3.2): ``correlation_id``,
  ``reply_to``, ``message_type`` (→ ``type``), ``content_type``, ``encoding`` (→
  ``content_encoding``), ``timestamp`` (integer seconds), ``amqp.priority``,
  ``amqp.expiration``, ``amqp.delivery_mode``, ``amqp.content_encoding``, ``amqp.user_id``,
  ``amqp.app_id``, ``amqp.x_delay`` (→ header ``x-delay``). Every other header goes into
  the AMQP headers table with its JSON type (int, float as a 64-bit double, bool, str,
  None, lists and nested mappings);
* the attempt a nack raised travels in the header ``x-wqnb-attempt`` (absent = 1). With a
  custom ``content_type`` on a ``bytes`` body, ``x-wqnb-body: bytes`` tells the receiver to
  keep bytes.

Receiving (:func:`decode`) undoes all of this. A message from a plain client: no
``x-wqnb-attempt`` → attempt 1; no ``message_id`` → a fresh uuid4 id; no ``content_type``
(or a textual one) → ``str`` if the body is valid UTF-8, else ``bytes``;
``application/octet-stream`` → ``bytes``.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import uuid
from typing import Any

import pamqp.encode as _pamqp_encode
from pamqp.commands import Basic

from ..message import Message

__all__ = ["ATTEMPT_HEADER", "decode", "encode", "properties_of"]

ATTEMPT_HEADER = "x-wqnb-attempt"
BODY_HEADER = "x-wqnb-body"
TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"

# Neutral header -> AMQP property (strings), as Wippy's buildPublishing.
_STR_PROPS = {
    "correlation_id": "correlation_id",
    "reply_to": "reply_to",
    "message_type": "message_type",
    "encoding": "content_encoding",
    "amqp.content_encoding": "content_encoding",
    "amqp.user_id": "user_id",
    "amqp.app_id": "app_id",
}
_BACK = {"correlation_id": "correlation_id", "reply_to": "reply_to",
         "message_type": "message_type", "content_encoding": "encoding",
         "user_id": "amqp.user_id", "app_id": "amqp.app_id"}


def _install_double_floats() -> None:
    """Header floats as 64-bit doubles: pamqp encodes a Python float as a 32-bit ``f``,
    which turns 1.1 into 1.100000023841858 (headers must keep their JSON values).

    Patched once, process-wide, in ``pamqp.encode.encode_table_value`` (RabbitMQ and
    every client decode ``d``); only ``float`` changes, every other type is pamqp's."""
    original = _pamqp_encode.encode_table_value
    if getattr(original, "_wqnb_doubles", False):
        return
    double = _pamqp_encode.double

    def encode_table_value(value: Any) -> bytes:
        if type(value) is float:
            return b"d" + double(value)
        if type(value) is bytes:
            value = bytearray(value)
        return original(value)

    encode_table_value._wqnb_doubles = True  # type: ignore[attr-defined]
    _pamqp_encode.encode_table_value = encode_table_value


_install_double_floats()


def properties_of(message: Message, *, default_expiration_ms: int | None = None) -> Basic.Properties:
    """The AMQP properties (and headers table) that carry ``message``."""
    headers = dict(message.headers)
    props: dict[str, Any] = {"message_id": message.id, "delivery_mode": 2}
    for key, prop in _STR_PROPS.items():
        v = headers.get(key)
        if isinstance(v, str):
            props[prop] = headers.pop(key)
    ts = headers.get("timestamp")
    if type(ts) is int and 0 <= ts < 2**62:
        props["timestamp"] = _dt.datetime.fromtimestamp(headers.pop("timestamp"), _dt.timezone.utc)
    pr = headers.get("amqp.priority")
    if type(pr) is int and 0 <= pr <= 255:
        props["priority"] = headers.pop("amqp.priority")
    dm = headers.get("amqp.delivery_mode")
    if dm in (1, 2) and type(dm) is int:
        props["delivery_mode"] = headers.pop("amqp.delivery_mode")
    exp = headers.get("amqp.expiration")
    if isinstance(exp, str) or (type(exp) is int and exp >= 0):
        props["expiration"] = str(headers.pop("amqp.expiration"))
    elif default_expiration_ms is not None:
        props["expiration"] = str(default_expiration_ms)
    if "amqp.x_delay" in headers:
        headers["x-delay"] = headers.pop("amqp.x_delay")
    ct = headers.get("content_type")
    body = message.body
    if isinstance(ct, str):
        props["content_type"] = headers.pop("content_type")
        if isinstance(body, (bytes, bytearray)) and ct != BINARY:
            headers[BODY_HEADER] = "bytes"
    else:
        props["content_type"] = TEXT if isinstance(body, str) else BINARY
    if message.attempt > 1:
        headers[ATTEMPT_HEADER] = int(message.attempt)
    if headers:
        props["headers"] = headers
    return Basic.Properties(**props)


def encode(message: Message, *, default_expiration_ms: int | None = None) -> tuple[bytes, Basic.Properties]:
    """``(body bytes, properties)`` for one publish. Raises ``ValueError`` naming what
    cannot travel (a ``str`` that is not valid Unicode, a header AMQP cannot encode)."""
    body = message.body
    if isinstance(body, str):
        try:
            data = body.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"message {message.id}: body is not valid Unicode ({e.reason})") from None
    else:
        data = bytes(body)
    props = properties_of(message, default_expiration_ms=default_expiration_ms)
    if props.headers:
        try:
            _pamqp_encode.field_table(props.headers)
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"message {message.id}: header cannot be sent over AMQP: {e}") from None
    return data, props


def decode(properties: Basic.Properties, body: bytes) -> Message:
    """A :class:`Message` (``seq`` -1: the consumer numbers it) from one delivery."""
    raw = properties.headers
    headers: dict[str, Any] = {}
    if raw:
        for k, v in raw.items():
            headers[k] = _plain(v)
    attempt = headers.pop(ATTEMPT_HEADER, 1)
    if type(attempt) is not int or attempt < 1:
        attempt = 1
    keep_bytes = headers.pop(BODY_HEADER, None) == "bytes"
    ct = properties.content_type
    if ct is not None and ct not in (TEXT, BINARY):
        headers["content_type"] = ct
    for prop, key in _BACK.items():
        v = getattr(properties, prop, None)
        if v is not None:
            headers[key] = v
    if properties.timestamp is not None:
        ts = properties.timestamp
        headers["timestamp"] = (calendar.timegm(ts.utctimetuple()) if ts.tzinfo is None
                                else int(ts.timestamp()))
    if properties.priority is not None:
        headers["amqp.priority"] = properties.priority
    if properties.delivery_mode not in (None, 2):
        headers["amqp.delivery_mode"] = properties.delivery_mode
    if properties.expiration is not None:
        headers["amqp.expiration"] = properties.expiration
    if "x-delay" in headers:
        headers["amqp.x_delay"] = headers.pop("x-delay")
    data: str | bytes = bytes(body)
    if not keep_bytes and ct != BINARY:  # text, JSON, none at all: str where it decodes
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    message_id = properties.message_id or str(uuid.uuid4())
    return Message(message_id, -1, data, headers, attempt)


def _plain(v: Any) -> Any:
    """Table values as JSON types: byte arrays become bytes, timestamps integer seconds,
    decimals floats."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, bytearray):
        return bytes(v)
    if isinstance(v, _dt.datetime):
        return calendar.timegm(v.utctimetuple()) if v.tzinfo is None else int(v.timestamp())
    if type(v).__name__ == "Decimal":
        return float(v)
    return v
