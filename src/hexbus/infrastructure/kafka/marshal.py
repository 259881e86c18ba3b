"""The CloudEvents Kafka protocol binding (binary content mode): event ⇄ record.

Why a module of its own: ``codec.py`` holds the CloudEvents core shared by every broker;
how attributes become Kafka headers (``ce_<name>``, ``content-type``) is this adapter's
business only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from hexbus.domain.errors import DecodeError
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.codec import CloudEventCodec, decode_error
from hexbus.infrastructure.names import KAFKA_CONTENT_TYPE_HEADER, KAFKA_HEADER_PREFIX

__all__ = [
    "KAFKA_CONTENT_TYPE_HEADER",
    "KAFKA_PREFIX",
    "TYPE_HEADER",
    "decode_record",
    "encode_record",
    "from_kafka_headers",
    "header",
    "to_kafka_headers",
]

KAFKA_PREFIX: Final = KAFKA_HEADER_PREFIX
#: The header that names the event type (read before decoding, for shared topics).
TYPE_HEADER: Final = KAFKA_PREFIX + "type"
_KAFKA_PREFIX_LEN: Final = len(KAFKA_PREFIX)


def to_kafka_headers(attributes: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Kafka binding, binary mode: ``ce_<name>`` headers; ``datacontenttype`` → ``content-type``."""
    return [
        (
            KAFKA_CONTENT_TYPE_HEADER if name == "datacontenttype" else KAFKA_PREFIX + name,
            value.encode(),
        )
        for name, value in attributes.items()
    ]


def from_kafka_headers(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    """Attributes from Kafka headers; other headers are ignored. Bad UTF-8 → ``DecodeError``."""
    attributes: dict[str, str] = {}
    for name, value in headers or ():
        if name.startswith(KAFKA_PREFIX):
            attr = name[_KAFKA_PREFIX_LEN:]
        elif name.lower() == KAFKA_CONTENT_TYPE_HEADER:
            attr = "datacontenttype"
        else:
            continue
        if value is None:
            continue
        try:
            attributes[attr] = value.decode() if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            raise decode_error(
                f"Kafka header {name!r} is not valid UTF-8", "malformed", b"", dict(headers or ())
            ) from None
    return attributes


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The value of the first header called ``name`` (``None`` if absent)."""
    for key, value in headers or ():
        if key == name:
            return value
    return None


def encode_record(
    codec: CloudEventCodec, event: DomainEvent, metadata: Mapping[str, str] | None = None
) -> tuple[list[tuple[str, bytes]], bytes]:
    """``codec.encode`` + ``to_kafka_headers``: (headers, value)."""
    attributes, body = codec.encode(event, metadata)
    return to_kafka_headers(attributes), body


def decode_record(
    codec: CloudEventCodec, headers: Sequence[tuple[str, bytes]] | None, value: bytes
) -> tuple[DomainEvent, dict[str, str]]:
    """``from_kafka_headers`` + ``codec.decode``; every failure is a ``DecodeError``."""
    try:
        attributes = from_kafka_headers(headers)
    except DecodeError as exc:
        exc.raw = value
        raise
    return codec.decode(attributes, value)
