"""The CloudEvents Kafka protocol binding: event ⇄ record.

Why a module of its own: ``codec.py`` holds the CloudEvents core shared by every broker;
how attributes become Kafka headers (``ce_<name>``, ``content-type``) is this adapter's
business only.

hexbus writes binary content mode (attributes as ``ce_`` headers, the event's fields as
the value). It reads both modes, as the binding asks of receivers: a ``content-type``
beginning with ``application/cloudevents`` means structured mode (the value is the
whole event in the JSON format); so does a record without any ``ce_`` header and
without a ``content-type`` (what the CloudEvents SDKs' ``from_kafka`` also assume).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, cast

from hexbus.domain.errors import DecodeError
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.codec import (
    CONTENT_TYPE,
    SPECVERSION,
    STRUCTURED_CONTENT_TYPE,
    CloudEventCodec,
    DecodeReason,
    Delivered,
    decode_error,
    format_time,
    is_structured,
    structured_identity,
)
from hexbus.infrastructure.names import KAFKA_CONTENT_TYPE_HEADER, KAFKA_HEADER_PREFIX

__all__ = [
    "KAFKA_CONTENT_TYPE_HEADER",
    "KAFKA_PREFIX",
    "PlainHeaders",
    "TYPE_HEADER",
    "decode_record",
    "encode_record",
    "from_kafka_headers",
    "header",
    "read_record",
    "to_kafka_headers",
    "wire_identity",
]

KAFKA_PREFIX: Final = KAFKA_HEADER_PREFIX
#: The header that names the event type (read before decoding, for shared topics).
TYPE_HEADER: Final = KAFKA_PREFIX + "type"
_ID_HEADER: Final = KAFKA_PREFIX + "id"
_KAFKA_PREFIX_LEN: Final = len(KAFKA_PREFIX)


def to_kafka_headers(attributes: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Kafka binding, binary mode: ``ce_<name>`` headers; ``datacontenttype`` → ``content-type``.

    A ``correlationid`` equal to the ``id`` (the first event of a conversation, i.e.
    nearly every event) is left out: it says nothing a reader does not already know,
    since an absent ``correlationid`` reads as the event's ``id`` (``codec.py``,
    ``docs/architecture/interop.md``). That is ~55 bytes of every record.
    """
    event_id = attributes.get("id")
    return [
        (
            KAFKA_CONTENT_TYPE_HEADER if name == "datacontenttype" else KAFKA_PREFIX + name,
            value.encode(),
        )
        for name, value in attributes.items()
        if name != "correlationid" or value != event_id
    ]


_SPECVERSION_PAIR: Final = (KAFKA_PREFIX + "specversion", SPECVERSION.encode())
_CONTENT_TYPE_PAIR: Final = (KAFKA_CONTENT_TYPE_HEADER, CONTENT_TYPE.encode())
_TIME_HEADER: Final = KAFKA_PREFIX + "time"
_SOURCE_HEADER: Final = KAFKA_PREFIX + "source"
_CORRELATION_HEADER: Final = KAFKA_PREFIX + "correlationid"
_CAUSATION_HEADER: Final = KAFKA_PREFIX + "causationid"


class PlainHeaders:
    """``to_kafka_headers(codec.attributes(event, None, event_id))``, made with fewer
    objects: the headers of an event published without metadata.

    Why: ``publish_many`` builds a header list per record, and the attributes dict and
    the eight header pairs behind it were ~1 µs an event, plus the garbage collector's
    time over the objects they left (a third of the publisher's CPU per event in a
    10,000-event ``publish_many``). Here the pairs that are the same for every event of
    a class (specversion, type, source, content type, version) are made once; only the
    id, the time and the conversation ids are new per event. Same headers, same order
    (a unit test compares them over generated events).
    """

    __slots__ = ("_by_class", "_source", "_source_pair")

    def __init__(self, source: str) -> None:
        self._source = source
        self._source_pair = (_SOURCE_HEADER, source.encode())
        self._by_class: dict[type[DomainEvent], tuple[tuple[str, bytes], tuple[str, bytes]]] = {}

    def __call__(self, event: DomainEvent, event_id: str) -> list[tuple[str, bytes]]:
        cls = event.__class__
        fixed = self._by_class.get(cls)
        if fixed is None:
            fixed = self._by_class[cls] = (
                (TYPE_HEADER, cls.event_type.encode()),
                (KAFKA_PREFIX + "eventversion", str(cls.event_version).encode()),
            )
        source = event.source
        headers = [
            _SPECVERSION_PAIR,
            (_ID_HEADER, event_id.encode()),
            fixed[0],
            self._source_pair
            if not source or source == self._source
            else (_SOURCE_HEADER, source.encode()),
            (_TIME_HEADER, format_time(event.occurred_at).encode()),
            _CONTENT_TYPE_PAIR,
        ]
        correlation = event.correlation_id
        if correlation != event_id:  # the same as the id: left out (``to_kafka_headers``)
            headers.append((_CORRELATION_HEADER, correlation.encode()))
        headers.append(fixed[1])
        causation = event.causation_id
        if causation is not None:
            headers.append((_CAUSATION_HEADER, causation.encode()))
        return headers


def from_kafka_headers(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    """Attributes from Kafka headers; other headers are ignored. Bad UTF-8 → ``DecodeError``.

    The consumer's hot path: which attribute a header name stands for is looked up in a
    small cache (``_attribute_of``) instead of being worked out for every record.
    """
    attributes: dict[str, str] = {}
    names = _ATTRIBUTE_OF
    for name, value in headers or ():
        attr = names.get(name)
        if attr is None:
            attr = _attribute_of(name)
        if not attr or value is None:
            continue
        try:
            attributes[attr] = value.decode() if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            raise decode_error(
                f"Kafka header {name!r} is not valid UTF-8", "malformed", b"", dict(headers or ())
            ) from None
    return attributes


#: Header name -> attribute name (``""``: not an attribute), for the names met so far.
_ATTRIBUTE_OF: dict[str, str] = {}
#: Bounds the cache: foreign producers may send any header names (ids in names, say).
_ATTRIBUTE_CACHE_LIMIT: Final = 1024


def _attribute_of(name: str) -> str:
    if name.startswith(KAFKA_PREFIX):
        attr = name[_KAFKA_PREFIX_LEN:]
    elif name.lower() == KAFKA_CONTENT_TYPE_HEADER:
        attr = "datacontenttype"
    else:
        attr = ""
    if len(_ATTRIBUTE_OF) < _ATTRIBUTE_CACHE_LIMIT:
        _ATTRIBUTE_OF[name] = attr
    return attr


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
    """The event and metadata of a record, either content mode; failures: ``DecodeError``."""
    event, metadata, _ = read_record(codec, headers, value)
    return event, metadata


def read_record(
    codec: CloudEventCodec, headers: Sequence[tuple[str, bytes]] | None, value: bytes
) -> Delivered:
    """What a consumer delivers: event, metadata, original CloudEvents id (or ``None``).

    Binary mode (``ce_`` headers) is the hot path: one look at the content type decides.
    """
    try:
        attributes = from_kafka_headers(headers)
    except DecodeError as exc:
        exc.raw = value
        raise
    content_type = attributes.get("datacontenttype")
    if content_type is None:
        if not attributes:  # no ce_ header, no content type: structured, as the SDKs read it
            return _headerless(codec, value)
    elif content_type != CONTENT_TYPE and is_structured(content_type):
        return codec.decode_structured(value, content_type)
    return codec.decode_text(attributes, value)


def _headerless(codec: CloudEventCodec, value: bytes) -> Delivered:
    try:
        return codec.decode_structured(value, STRUCTURED_CONTENT_TYPE)
    except DecodeError as exc:
        raise decode_error(
            f"the record has no ce_ headers and no content-type, so it was read as a "
            f"structured CloudEvent ({STRUCTURED_CONTENT_TYPE}), and that failed: {exc}",
            cast("DecodeReason", exc.reason),
            value,
            exc.headers,
        ) from exc


def wire_identity(
    headers: Sequence[tuple[str, bytes]] | None, value: bytes | None
) -> tuple[str | None, str | None]:
    """``(id, type)`` of a record in either content mode, ``None`` where it says nothing.

    For dead-letter listings and replay filters: a structured-mode record carries its id
    and type in the value, not in ``ce_`` headers. Never raises.
    """
    ce_id, ce_type = header(headers, _ID_HEADER), header(headers, TYPE_HEADER)
    if ce_id is not None or ce_type is not None:
        return _text(ce_id), _text(ce_type)
    content_type = next(
        (v for k, v in headers or () if k.lower() == KAFKA_CONTENT_TYPE_HEADER), None
    )
    text = _text(content_type)
    if text is None:
        structured = not any(k.startswith(KAFKA_PREFIX) for k, _ in headers or ())
    else:
        structured = is_structured(text)
    return structured_identity(value or b"") if structured else (None, None)


def _text(value: bytes | None) -> str | None:
    if not value:
        return None
    return value.decode(errors="replace")
