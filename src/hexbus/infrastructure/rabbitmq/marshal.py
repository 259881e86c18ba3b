"""The CloudEvents AMQP protocol binding (binary content mode): event ⇄ message parts.

Why a module of its own: ``codec.py`` holds the CloudEvents core shared by every broker;
how attributes become AMQP application properties (``cloudEvents:<name>``, the message's
``content_type``) is this adapter's business only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from hexbus.domain.errors import DecodeError
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.codec import CloudEventCodec, decode_error, format_time
from hexbus.infrastructure.names import AMQP_HEADER_PREFIX

__all__ = [
    "AMQP_PREFIX",
    "AMQP_PREFIX_JMS",
    "decode_message",
    "encode_message",
    "from_amqp_headers",
    "to_amqp_headers",
]

AMQP_PREFIX: Final = AMQP_HEADER_PREFIX
#: The AMQP binding's alternative prefix, for JMS / RabbitMQ clients that disallow ':'.
AMQP_PREFIX_JMS: Final = "cloudEvents_"
_AMQP_PREFIX_LEN: Final = len(AMQP_PREFIX)  # == len(AMQP_PREFIX_JMS)


def to_amqp_headers(attributes: Mapping[str, str]) -> dict[str, str]:
    """AMQP binding, binary mode: ``cloudEvents:<name>`` application properties.

    ``datacontenttype`` is left out on purpose: the binding maps it to the message's
    ``content_type`` property, which the caller sets (``encode_message`` returns it).
    """
    return {
        AMQP_PREFIX + name: value for name, value in attributes.items() if name != "datacontenttype"
    }


def from_amqp_headers(headers: Mapping[str, Any], content_type: str | None) -> dict[str, str]:
    """Attributes from AMQP headers (``cloudEvents:`` or ``cloudEvents_``) + content type.

    Values may arrive as AMQP types (bytes, int, timestamp) from foreign producers; they
    are turned back into the CloudEvents string forms. Other headers are ignored.
    """
    attributes: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith((AMQP_PREFIX, AMQP_PREFIX_JMS)):
            attr = name[_AMQP_PREFIX_LEN:]
        else:
            continue
        if isinstance(value, str):
            attributes[attr] = value
        elif value is None:
            continue
        elif isinstance(value, bytes):
            try:
                attributes[attr] = value.decode()
            except UnicodeDecodeError:
                raise decode_error(
                    f"AMQP header {name!r} is not valid UTF-8", "malformed", b"", headers
                ) from None
        elif isinstance(value, bool):
            attributes[attr] = "true" if value else "false"
        elif isinstance(value, datetime):
            aware = value if value.utcoffset() is not None else value.replace(tzinfo=UTC)
            attributes[attr] = format_time(aware)
        else:
            attributes[attr] = str(value)
    if content_type:
        attributes["datacontenttype"] = content_type
    return attributes


def encode_message(
    codec: CloudEventCodec, event: DomainEvent, metadata: Mapping[str, str] | None = None
) -> tuple[dict[str, str], str, bytes]:
    """``codec.encode`` + ``to_amqp_headers``: (headers, content_type, body)."""
    attributes, body = codec.encode(event, metadata)
    return to_amqp_headers(attributes), attributes["datacontenttype"], body


def decode_message(
    codec: CloudEventCodec,
    headers: Mapping[str, Any] | None,
    content_type: str | None,
    body: bytes,
) -> tuple[DomainEvent, dict[str, str]]:
    """``from_amqp_headers`` + ``codec.decode``; every failure is a ``DecodeError``."""
    try:
        attributes = from_amqp_headers(headers or {}, content_type)
    except DecodeError as exc:
        exc.raw = body
        raise
    return codec.decode(attributes, body)
