"""CloudEvents 1.0 core, shared by the RabbitMQ and Kafka adapters.

Why CloudEvents in binary mode: the envelope (id, type, source, time ...) travels as
message headers and the body is the event's own fields as plain JSON, so a non-Python
service reads and writes hexbus events with any CloudEvents SDK, and a consumer can route
or dead-letter a message by its headers without parsing the body.

Why the codec speaks in plain attribute names (``id``, ``type`` ...) and holds nothing
broker-specific: the brokers differ only in how attribute names are prefixed (``ce_`` for
Kafka, ``cloudEvents:`` for AMQP) and where ``datacontenttype`` goes. Those protocol
bindings live with their adapters (``kafka/marshal.py``, ``rabbitmq/marshal.py``); the
encoding rules themselves are written once, here.

Metadata (``ip_address``, ``user_agent`` ...) rides as CloudEvents extensions. Extension
names may only hold lower-case ASCII letters and digits, so each key travels under its
sanitized name and the extension ``hexbusmetakeys`` lists the original spelling of every
key whose name changed; a hexbus decoder restores the exact keys, a foreign consumer
still sees readable names, and a foreign producer's extensions come back as metadata
under their own names.

What a foreign producer may send, and how it comes back (``docs/architecture/interop.md``
has the full wire mapping):

- an ``id`` that is not a UUID (``order-42``): the typed event gets the stable
  ``event_id`` ``uuid5(EVENT_ID_NAMESPACE, f"{source}\\n{id}")`` and the original id
  travels next to it (``decode_delivery`` → ``DeliveryContext.cloudevent_id``);
  re-encoding the event being handled writes the original id again;
- structured content mode (``application/cloudevents+json``: the whole event as one JSON
  document, ``decode_structured``);
- typed attribute values (booleans, integers, binary, AMQP timestamps) and RFC 3339 times
  with nanoseconds, offsets or a leap second, turned into their canonical strings
  (``attribute_text``) or the nearest ``datetime``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Final, Literal, NamedTuple
from uuid import UUID, uuid5

import pydantic_core
from pydantic import ValidationError

from hexbus.domain.context import delivery_context
from hexbus.domain.errors import DecodeError, InvalidMetadataError, UnknownEventTypeError
from hexbus.domain.events import DomainEvent, EventRegistry, event_registry

__all__ = [
    "BATCH_CONTENT_TYPE",
    "CONTENT_TYPE",
    "CloudEventCodec",
    "DecodeReason",
    "Delivered",
    "ENVELOPE_FIELDS",
    "EVENT_ID_NAMESPACE",
    "EncodedEvent",
    "METAKEYS_EXTENSION",
    "RESERVED_ATTRIBUTES",
    "SPECVERSION",
    "STRUCTURED_CONTENT_TYPE",
    "attribute_text",
    "decode_error_reason",
    "decode_error",
    "derived_event_id",
    "extension_name",
    "format_time",
    "is_structured",
    "structured_attributes",
    "structured_identity",
]

SPECVERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/json"
METAKEYS_EXTENSION: Final = "hexbusmetakeys"
#: Structured content mode, JSON event format: the whole CloudEvent is the body.
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
#: Batched content mode (a JSON array of events in one message): not read by hexbus.
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
_STRUCTURED_PREFIX: Final = "application/cloudevents"
_STRUCTURED_PREFIX_LEN: Final = len(_STRUCTURED_PREFIX)

#: The namespace of ``event_id``s derived from a CloudEvents ``id`` that is not a UUID:
#: ``uuid5(NAMESPACE_URL, "urn:hexbus:cloudevents:id")``. Fixed forever: changing it
#: would give every such event a new identity.
EVENT_ID_NAMESPACE: Final = UUID("103d7606-9cec-546d-9852-1e0eabf03b2d")
#: Lengths of the UUID spellings pydantic reads (simple, hyphenated, braced, URN). An id
#: of any other length is certainly not a UUID: its ``event_id`` is derived up front.
_UUID_TEXT_LENGTHS: Final = frozenset({32, 36, 38, 45})

#: What a consumer delivers: the event, its metadata, and the CloudEvents ``id`` as it
#: arrived when that is not ``str(event.event_id)`` (else ``None``).
Delivered = tuple[DomainEvent, dict[str, str], str | None]

#: The ``DomainEvent`` base fields; they travel as CloudEvents attributes, never in data.
ENVELOPE_FIELDS: Final[frozenset[str]] = frozenset(DomainEvent.model_fields)
# pydantic's ``exclude`` wants a ``set``; built once, never mutated.
_BODY_EXCLUDE: Final[set[str]] = set(ENVELOPE_FIELDS)

#: Attribute names hexbus or the CloudEvents spec gives a meaning; metadata may not use them.
RESERVED_ATTRIBUTES: Final[frozenset[str]] = frozenset(
    {
        "specversion",
        "id",
        "type",
        "source",
        "time",
        "datacontenttype",
        "dataschema",
        "subject",
        "data",
        "correlationid",
        "causationid",
        "eventversion",
        METAKEYS_EXTENSION,
    }
)
_REQUIRED: Final = ("specversion", "id", "type", "source")
#: Attributes whose CloudEvents type is String (or a string form): a binary AMQP value
#: under one of these names is read as UTF-8 text, never as base64 like an extension.
_TEXT_ATTRIBUTES: Final = RESERVED_ATTRIBUTES | {"traceparent", "tracestate", "partitionkey"}
_NOT_EXTENSION_NAME = re.compile(r"[^a-z0-9]+")
_ESCAPED = re.compile(r"%(25|2[Cc])")
#: An RFC 3339 time in a leap second (``...T23:59:60...``), which ``datetime`` cannot hold.
_LEAP_SECOND = re.compile(r"(.*[Tt ]\d\d:\d\d:)60(?:\.\d+)?(.*)")

#: Why a message could not be decoded, on ``DecodeError.reason``:
#: ``malformed`` (not a CloudEvent hexbus can read: missing/invalid attributes, bad body),
#: ``unknown_type`` (no class registered for ``type``; maybe a newer producer, or a module
#: not imported), ``newer_version`` (``eventversion`` above the local class's version),
#: ``invalid_data`` (the body does not validate against the event class).
DecodeReason = Literal["malformed", "unknown_type", "newer_version", "invalid_data"]


def decode_error_reason(exc: DecodeError) -> str:
    """The ``reason`` the codec put on a ``DecodeError`` (``"malformed"`` if none)."""
    return exc.reason


def decode_error(
    message: str, reason: DecodeReason, body: bytes, attributes: Mapping[str, Any]
) -> DecodeError:
    exc = DecodeError(message, raw=body, headers=dict(attributes))
    # An instance attribute rather than a subclass so errors.py stays the single list of
    # exception classes; ``vars()`` keeps mypy --strict quiet either way.
    exc.reason = reason
    return exc


@functools.lru_cache(maxsize=4096)
def extension_name(key: str) -> str:
    """The CloudEvents extension name a metadata key travels under (may be ``""``).

    Cached: the same handful of keys (``ip_address``, ``user_agent`` ...) repeats on every
    message, and this sits on the per-message path.
    """
    return _NOT_EXTENSION_NAME.sub("", key.lower())


def _escape_key(key: str) -> str:
    # ``hexbusmetakeys`` is comma-separated; '%' and ',' are escaped so any key survives.
    return key.replace("%", "%25").replace(",", "%2C")


def _unescape_key(text: str) -> str:
    if "%" not in text:
        return text
    return _ESCAPED.sub(lambda m: "%" if m.group(1) == "25" else ",", text)


def _utf8_ok(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:  # lone surrogates cannot go into a header
        return False
    return True


def format_time(value: datetime) -> str:
    # RFC 3339 in UTC with 'Z'; occurred_at is already UTC, so astimezone is a no-op.
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def derived_event_id(source: str, cloudevent_id: str) -> UUID:
    """The stable ``event_id`` of a CloudEvent whose ``id`` is not a UUID.

    ``uuid5(EVENT_ID_NAMESPACE, f"{source}\\n{id}")``: the CloudEvents spec makes
    (source, id) unique, so every consumer, every redelivery and every replay of the
    event derives the same UUID, in any language (the recipe is in the interop docs).
    """
    return uuid5(EVENT_ID_NAMESPACE, f"{source}\n{cloudevent_id}")


def is_structured(content_type: str) -> bool:
    """Does ``content_type`` announce structured (or batched) content mode?

    Both bindings say so: a content type that begins with ``application/cloudevents``
    means the body is the whole event in an event format, not only its data.
    """
    return content_type.lstrip()[:_STRUCTURED_PREFIX_LEN].lower() == _STRUCTURED_PREFIX


def attribute_text(name: str, value: object) -> str | None:
    """The canonical CloudEvents string of a typed attribute value (``None``: absent).

    Protocol bindings and the JSON format may carry attribute values in native types;
    hexbus keeps attributes (and so metadata) as strings, in the spec's canonical string
    forms: Boolean → ``true``/``false``, Integer → decimal, Binary → base64 (but UTF-8
    text for attributes whose type is String), Timestamp (a ``datetime``, or for ``time``
    an integer count of milliseconds since the epoch, the AMQP timestamp) → RFC 3339 in
    UTC. Raises ``TypeError`` for a value no CloudEvents type has (a float, a table, a
    list); the caller turns it into a ``DecodeError`` naming the header.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if name == "time":
            try:
                return format_time(datetime.fromtimestamp(value / 1000, UTC))
            except (OverflowError, OSError, ValueError):
                raise TypeError(
                    f"{value} is not a timestamp in milliseconds since the epoch"
                ) from None
        return str(value)
    if isinstance(value, datetime):
        return format_time(value if value.utcoffset() is not None else value.replace(tzinfo=UTC))
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if name in _TEXT_ATTRIBUTES:
            try:
                return raw.decode()
            except UnicodeDecodeError:
                raise TypeError("it is binary, not UTF-8 text") from None
        return base64.b64encode(raw).decode("ascii")
    kind = type(value).__name__
    raise TypeError(
        f"it holds a {kind} ({value!r:.60}); CloudEvents attribute values are strings, "
        "booleans, integers, binary or timestamps"
    )


def _leap_second(text: str) -> str | None:
    """``text`` with a leap second (``:60``) clamped to the last microsecond before it."""
    match = _LEAP_SECOND.fullmatch(text)
    return None if match is None else f"{match[1]}59.999999{match[2]}"


def _metadata_problems(metadata: Mapping[Any, Any]) -> list[str]:
    """Every reason ``metadata`` cannot travel, each naming the keys and the fix."""
    problems: list[str] = []
    seen: dict[str, list[str]] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            problems.append(f"key {key!r} is a {type(key).__name__}; use a str key")
            continue
        if not isinstance(value, str):
            problems.append(
                f"value of {key!r} is a {type(value).__name__}; convert it to str "
                "(metadata travels as message headers)"
            )
        elif not _utf8_ok(value):
            problems.append(f"value of {key!r} is not encodable as UTF-8")
        if not _utf8_ok(key):
            problems.append(f"key {key!r} is not encodable as UTF-8")
            continue
        name = extension_name(key)
        if not name:
            problems.append(
                f"key {key!r} has no ASCII letter or digit, so it has no CloudEvents "
                "extension name; rename it (e.g. 'ip_address')"
            )
        elif name in RESERVED_ATTRIBUTES:
            problems.append(
                f"key {key!r} maps to the CloudEvents/hexbus attribute {name!r}; "
                "rename it (these are set from the event itself)"
            )
        else:
            seen.setdefault(name, []).append(key)
    for name, keys in seen.items():
        if len(keys) > 1:
            problems.append(
                f"keys {', '.join(map(repr, keys))} all map to the extension name {name!r} "
                "(lower-case letters and digits only); rename all but one"
            )
    return problems


def _metadata_attributes(metadata: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    renamed: list[str] = []
    for key, value in metadata.items():
        if not (isinstance(key, str) and isinstance(value, str)):
            break
        name = extension_name(key)
        if not name or name in RESERVED_ATTRIBUTES or name in out or not _utf8_ok(value):
            break
        out[name] = value
        if name != key:
            if not _utf8_ok(key):
                break
            renamed.append(_escape_key(key))
    else:
        if renamed:
            out[METAKEYS_EXTENSION] = ",".join(renamed)
        return out
    # Slow path, only when something is wrong: explain everything at once.
    raise InvalidMetadataError(
        "metadata cannot travel as CloudEvents extensions: "
        + "; ".join(_metadata_problems(metadata))
    )


class EncodedEvent(NamedTuple):
    """A CloudEvent already encoded: what the outbox stores and its relay sends as is.

    ``attributes`` are the CloudEvents attributes with their plain names and text values
    (``CloudEventCodec.encode``'s first item: ``id``, ``type``, ``source``, extensions,
    metadata), ``data`` the JSON body, ``key`` the publish key (``None``: none given).
    Every adapter's ``send_encoded`` puts these on its wire exactly like ``publish``
    would have (same binding, same confirms/acks), without decoding the event again:
    the relay must not change an event (its id, its trace context) on the way out.
    """

    attributes: Mapping[str, str]
    data: bytes
    key: str | None = None


class CloudEventCodec:
    """Event ⇄ (CloudEvents attributes, JSON body).

    ``source`` is this service's name (``HEXBUS_SERVICE_NAME``): it is stamped on events
    whose ``source`` is ``""`` (= "this service"), and a decoded event whose source equals
    it comes back with ``source=""`` again, so ``decode(encode(e)) == e``.
    """

    __slots__ = ("_registry", "_source")

    def __init__(self, *, source: str = "hexbus", registry: EventRegistry = event_registry):
        if not source:
            raise ValueError("CloudEventCodec source must be a non-empty string")
        self._source = source
        self._registry = registry

    @property
    def source(self) -> str:
        return self._source

    # -- encode ---------------------------------------------------------------------
    def encode(
        self, event: DomainEvent, metadata: Mapping[str, str] | None = None
    ) -> tuple[dict[str, str], bytes]:
        """The CloudEvents attributes (plain names, str values) and the JSON body.

        Raises ``InvalidMetadataError`` when a metadata key cannot be an extension name
        (nothing is sent half-encoded).
        """
        return self.attributes(event, metadata, self.wire_id(event)), self.body(event)

    # ``encode`` in parts, for a transport that sends in chunks (Kafka's publish_many):
    # what a size check needs (the id, the body) first for every event, the attributes
    # of each chunk just before it goes out. ``encode`` is exactly the three together.
    def wire_id(self, event: DomainEvent) -> str:
        """The ``id`` the event travels under: its ``event_id``, or, re-published while
        handling an event that arrived with a foreign id, the id derived from that one."""
        event_id = str(event.event_id)
        if _current_context().cloudevent_id is not None:  # handling a foreign-id event
            event_id = _forwarded_id(event, event_id)
        return event_id

    def body(self, event: DomainEvent) -> bytes:
        """The JSON body: the event's own fields, without the envelope's."""
        # Straight to bytes: model_dump_json() would decode to str only for us to encode.
        return event.__class__.__pydantic_serializer__.to_json(
            event, exclude=_BODY_EXCLUDE, by_alias=True, round_trip=True
        )

    def attributes(
        self, event: DomainEvent, metadata: Mapping[str, str] | None, event_id: str
    ) -> dict[str, str]:
        """The CloudEvents attributes of ``event`` sent under ``event_id`` (``wire_id``);
        ``InvalidMetadataError`` when a metadata key cannot be an extension name."""
        cls = event.__class__
        attributes = {
            "specversion": SPECVERSION,
            "id": event_id,
            "type": cls.event_type,
            "source": event.source or self._source,
            "time": format_time(event.occurred_at),
            "datacontenttype": CONTENT_TYPE,
            "correlationid": event.correlation_id,
            "eventversion": str(cls.event_version),
        }
        if event.causation_id is not None:
            attributes["causationid"] = event.causation_id
        if metadata:
            attributes.update(_metadata_attributes(metadata))
        return attributes

    def decode(
        self, attributes: Mapping[str, str | bytes], body: bytes
    ) -> tuple[DomainEvent, dict[str, str]]:
        """The event and its metadata, or ``DecodeError`` (``raw=body``, a ``reason``).

        Binary content mode: ``attributes`` from the headers, ``body`` the data. See
        ``decode_delivery`` for the rules; this drops the original id, which only a
        consumer (for the handler's ``DeliveryContext``) needs.
        """
        event, metadata, _ = self.decode_text(_as_text(attributes, body), body, attributes)
        return event, metadata

    def decode_delivery(self, attributes: Mapping[str, str | bytes], body: bytes) -> Delivered:
        """The event, its metadata and its original CloudEvents id (``None`` if ordinary).

        Attributes win over body keys of the same name. ``time`` is optional in
        CloudEvents; without it ``occurred_at`` is the decode time. Missing
        ``correlationid`` (a foreign producer) starts a conversation at the event's id.
        An ``id`` that is not a UUID gives the stable ``derived_event_id(source, id)``;
        the third item is then the id as it arrived. Every failure is a ``DecodeError``
        (``raw=body``, a ``reason``).
        """
        return self.decode_text(_as_text(attributes, body), body, attributes)

    def decode_text(
        self,
        attrs: Mapping[str, str],
        body: bytes,
        attributes: Mapping[str, Any] | None = None,
    ) -> Delivered:
        """``decode_delivery`` for attributes that are already ``str`` (no conversion pass).

        What the protocol bindings (``from_kafka_headers``, ``from_amqp_headers``,
        ``structured_attributes``) produce: the consumer's hot path skips a copy of
        every attribute. ``attributes`` is what a ``DecodeError`` shows as its headers
        (``attrs`` if not given).
        """
        if attributes is None:
            attributes = attrs
        for name in _REQUIRED:
            if name not in attrs:
                raise decode_error(
                    f"not a CloudEvent: required attribute {name!r} is missing "
                    f"(got {', '.join(sorted(attrs)) or 'no attributes'})",
                    "malformed",
                    body,
                    attributes,
                )
        source = attrs["source"]
        if not source:
            raise _empty("source", body, attributes)
        if attrs["specversion"] != SPECVERSION:
            raise decode_error(
                f"unsupported CloudEvents specversion {attrs['specversion']!r}; "
                f"hexbus reads {SPECVERSION!r}",
                "malformed",
                body,
                attributes,
            )
        content_type = attrs.get("datacontenttype")
        if content_type is not None and not _is_json(content_type):
            raise decode_error(
                f"unsupported datacontenttype {content_type!r}; hexbus reads JSON "
                "(application/json or */*+json)",
                "malformed",
                body,
                attributes,
            )
        event_type = attrs["type"]
        try:
            cls = self._registry.get(event_type)
        except UnknownEventTypeError as exc:
            if not event_type:
                raise _empty("type", body, attributes) from None
            raise decode_error(str(exc), "unknown_type", body, attributes) from exc
        wire_version = attrs.get("eventversion")
        if wire_version is not None:
            try:
                version = int(wire_version)
            except ValueError:
                version = 0
            if version < 1:
                raise decode_error(
                    f"eventversion {wire_version!r} is not a positive integer",
                    "malformed",
                    body,
                    attributes,
                )
            if version > cls.event_version:
                raise decode_error(
                    f"{event_type!r} version {version} was produced by a newer schema than "
                    f"this service knows ({cls.__qualname__} is version {cls.event_version}); "
                    "deploy the newer event class here, then replay the message",
                    "newer_version",
                    body,
                    attributes,
                )
        # One JSON-mode validation of the body with the envelope spliced in as its last
        # members: the event's own fields get exactly the rules they were serialized by,
        # the envelope comes from the attributes (a duplicate key in the body loses: the
        # last one wins), and no default factory (a fresh UUIDv7, the clock) runs only to
        # be overwritten. This is the consumer's hot path: an id that may be a UUID is
        # tried as one, and only when pydantic refuses it is an id derived (``_repair``).
        wire_id = attrs["id"]
        size = len(wire_id)
        derived = None
        if size != 36 and size not in _UUID_TEXT_LENGTHS:  # "order-42": certainly no UUID
            if not size:
                raise _empty("id", body, attributes)
            derived = str(derived_event_id(source, wire_id))
        data = _splice(
            body, self._envelope_json(attrs, derived or wire_id, source, attrs.get("time"))
        )
        if data is None:  # validating the body alone says precisely what is wrong with it
            try:
                cls.model_validate_json(body)
            except ValidationError as exc:
                raise _body_error(exc, event_type, cls, body, attributes, attrs=attrs) from exc
            raise decode_error(
                f"body of {event_type!r} is not a JSON object (CloudEvents data must be the "
                "event's fields as an object)",
                "malformed",
                body,
                attributes,
            )
        try:
            event = cls.model_validate_json(data)
        except ValidationError as exc:
            event, derived = self._repair(
                exc, cls, body, attributes=attributes, attrs=attrs, derived=derived
            )
        # 36 characters that pydantic read as a UUID are hyphenated hex; in lower case
        # that is the canonical text, hexbus's own (``lower()`` is the fast ASCII path).
        if derived is None and size == 36 and wire_id.lower() == wire_id:
            return event, _metadata_from(attrs), None
        if derived is not None:
            return event, _metadata_from(attrs), wire_id
        # A UUID spelled otherwise (upper case, no hyphens, braces, URN): its value is
        # the event_id, the spelling is kept for re-encoding and for the (source, id) key.
        return event, _metadata_from(attrs), None if str(event.event_id) == wire_id else wire_id

    def decode_structured(self, body: bytes, content_type: str) -> Delivered:
        """Structured content mode: ``body`` is the whole event in the JSON event format.

        ``content_type`` is the message's (``application/cloudevents+json``, parameters
        allowed). The attributes and ``data`` (or ``data_base64``) are taken from the
        document, then decoded as in binary mode; a ``DecodeError`` keeps the whole body.
        """
        attrs, data = structured_attributes(body, content_type)
        try:
            return self.decode_text(attrs, data)
        except DecodeError as exc:
            exc.raw = body
            raise

    def _repair(
        self,
        exc: ValidationError,
        cls: type[DomainEvent],
        body: bytes,
        *,
        attributes: Mapping[str, Any],
        attrs: Mapping[str, str],
        derived: str | None,
    ) -> tuple[DomainEvent, str | None]:
        """Validate again after fixing what a foreign producer may legitimately send.

        An ``id`` pydantic refused as a UUID (``order-42-...`` of a UUID's length) gets
        its derived ``event_id``; a ``time`` in a leap second (``23:59:60``, valid RFC
        3339 that ``datetime`` cannot hold) is clamped to the microsecond before. Any
        other error, or one that remains, is the ``DecodeError`` it always was.
        """
        bad = {err["loc"][0] for err in exc.errors(include_url=False) if err["loc"]}
        time = attrs.get("time")
        fixed = False
        if "event_id" in bad and derived is None:
            derived = str(derived_event_id(attrs["source"], attrs["id"]))
            fixed = True
        if "occurred_at" in bad and time is not None and (leap := _leap_second(time)):
            time = leap
            fixed = True
        event_type = attrs["type"]
        if fixed:
            data = _splice(
                body, self._envelope_json(attrs, derived or attrs["id"], attrs["source"], time)
            )
            try:
                return cls.model_validate_json(data or b""), derived
            except ValidationError as again:
                exc = again
        raise _body_error(exc, event_type, cls, body, attributes, attrs=attrs) from exc

    def _envelope_json(
        self, attrs: Mapping[str, str], event_id: str, source: str, time: str | None
    ) -> str:
        """The envelope fields as JSON object members, taken from the attributes."""
        wire_id = attrs["id"]
        correlation_id = attrs.get("correlationid")
        causation_id = attrs.get("causationid")
        members = (
            f'"event_id":{_quote(event_id)}'
            f',"correlation_id":{_quote(wire_id if correlation_id is None else correlation_id)}'
            f',"causation_id":{"null" if causation_id is None else _quote(causation_id)}'
            f',"source":{_quote("" if source == self._source else source)}'
        )
        if time is not None:  # optional in CloudEvents: without it, the decode time
            members += f',"occurred_at":{_quote(time)}'
        return members


def _empty(name: str, body: bytes, attributes: Mapping[str, Any]) -> DecodeError:
    return decode_error(
        f"not a CloudEvent: required attribute {name!r} is empty (CloudEvents requires a "
        "non-empty string)",
        "malformed",
        body,
        attributes,
    )


def _splice(body: bytes, members: str) -> bytes | None:
    """``body`` (a JSON object) with ``members`` appended; ``None`` if it is no object."""
    stripped = body.strip()
    if stripped[:1] != b"{" or stripped[-1:] != b"}":
        return None
    inner = stripped[1:-1].strip()
    tail = members.encode()
    return b"{" + inner + b"," + tail + b"}" if inner else b"{" + tail + b"}"


def _as_text(attributes: Mapping[str, str | bytes], body: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in attributes.items():
        if isinstance(value, bytes):
            try:
                out[name] = value.decode()
            except UnicodeDecodeError:
                raise decode_error(
                    f"attribute {name!r} is not valid UTF-8", "malformed", body, attributes
                ) from None
        else:
            out[name] = value
    return out


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == CONTENT_TYPE or media.endswith("+json") or media == "text/json"


def _body_error(
    exc: ValidationError,
    event_type: str,
    cls: type[DomainEvent],
    body: bytes,
    attributes: Mapping[str, Any],
    *,
    attrs: Mapping[str, str],
) -> DecodeError:
    errors = exc.errors(include_url=False)
    envelope = [err for err in errors if err["loc"] and err["loc"][0] in _ENVELOPE_ATTRIBUTE]
    if envelope:
        err = envelope[0]
        name = _ENVELOPE_ATTRIBUTE[str(err["loc"][0])]
        return decode_error(
            f"attribute {name!r} {attrs.get(name)!r} is invalid: {err['msg']} "
            f"({_ATTRIBUTE_RULES.get(name, 'it must be a string')})",
            "malformed",
            body,
            attributes,
        )
    root = errors[0] if len(errors) == 1 and not errors[0]["loc"] else None
    if root is not None and root["type"] == "json_invalid":
        return decode_error(
            f"body of {event_type!r} is not valid JSON: {root['msg']}",
            "malformed",
            body,
            attributes,
        )
    if root is not None and root["type"] == "model_type":
        return decode_error(
            f"body of {event_type!r} is not a JSON object (CloudEvents data must be the "
            "event's fields as an object)",
            "malformed",
            body,
            attributes,
        )
    details = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in errors
    )
    decode_exc = decode_error(
        f"body does not fit {event_type!r} ({cls.__qualname__}): {details}",
        "invalid_data",
        body,
        attributes,
    )
    vars(decode_exc)["errors"] = errors
    return decode_exc


#: Envelope field → the CloudEvents attribute it is decoded from (for error messages).
_ENVELOPE_ATTRIBUTE = {
    "event_id": "id",
    "occurred_at": "time",
    "correlation_id": "correlationid",
    "causation_id": "causationid",
    "source": "source",
}


_ATTRIBUTE_RULES = {
    "time": "it must be an RFC 3339 timestamp with an offset",
}


def _metadata_from(attrs: Mapping[str, str]) -> dict[str, str]:
    extensions = {k: v for k, v in attrs.items() if k not in RESERVED_ATTRIBUTES}
    listed = attrs.get(METAKEYS_EXTENSION)
    if not listed:
        return extensions
    metadata: dict[str, str] = {}
    for escaped in listed.split(","):
        key = _unescape_key(escaped)
        name = extension_name(key)
        if name in extensions:
            metadata[key] = extensions.pop(name)
    metadata.update(extensions)
    return metadata


# -- structured content mode -------------------------------------------------------------
def structured_attributes(body: bytes, content_type: str) -> tuple[dict[str, str], bytes]:
    """A JSON-format CloudEvent as (attributes as canonical strings, data as JSON bytes).

    ``data`` (any JSON value) is written back as compact JSON, so the event's fields then
    meet exactly the binary-mode rules; ``data_base64`` is base64-decoded; an event
    without data has the data ``{}`` (an event class without fields of its own). A
    ``null`` attribute is absent, as the JSON format says. Everything else that is wrong
    is a ``DecodeError`` (``malformed``) keeping the whole body.
    """
    context = {"datacontenttype": content_type}
    media = content_type.split(";", 1)[0].strip().lower()
    if media == BATCH_CONTENT_TYPE:
        raise decode_error(
            f"batched content mode ({BATCH_CONTENT_TYPE}: several events in one message) "
            "is not supported; hexbus delivers one event per message, so publish each "
            f"event as its own message (binary mode, or structured {STRUCTURED_CONTENT_TYPE})",
            "malformed",
            body,
            context,
        )
    if media != STRUCTURED_CONTENT_TYPE:
        raise decode_error(
            f"structured content mode in the event format {media!r} is not supported; "
            f"hexbus reads the JSON format ({STRUCTURED_CONTENT_TYPE}) or binary mode",
            "malformed",
            body,
            context,
        )
    try:
        document = pydantic_core.from_json(body)
    except ValueError as exc:
        raise decode_error(
            f"structured CloudEvent ({STRUCTURED_CONTENT_TYPE}) is not valid JSON: {exc}",
            "malformed",
            body,
            context,
        ) from None
    if not isinstance(document, dict):
        raise decode_error(
            f"structured CloudEvent ({STRUCTURED_CONTENT_TYPE}) must be a JSON object, "
            f"got a JSON {_json_kind(document)}",
            "malformed",
            body,
            context,
        )
    attrs: dict[str, str] = {}
    for name, value in document.items():
        if name in ("data", "data_base64"):
            continue
        try:
            text = attribute_text(name, value)
        except TypeError as exc:
            raise decode_error(
                f"structured CloudEvent attribute {name!r} is invalid: {exc}",
                "malformed",
                body,
                context,
            ) from None
        if text is not None:
            attrs[name] = text
    data = document.get("data")
    encoded = document.get("data_base64")
    if data is not None and encoded is not None:
        raise decode_error(
            "structured CloudEvent has both 'data' and 'data_base64'; the JSON event "
            "format allows one of them",
            "malformed",
            body,
            attrs,
        )
    if encoded is not None:
        if not isinstance(encoded, str):
            raise decode_error(
                f"structured CloudEvent 'data_base64' is a JSON {_json_kind(encoded)}, "
                "not a base64 string",
                "malformed",
                body,
                attrs,
            )
        try:
            return attrs, base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise decode_error(
                "structured CloudEvent 'data_base64' is not valid base64",
                "malformed",
                body,
                attrs,
            ) from None
    if data is None:
        return attrs, b"{}"
    return attrs, pydantic_core.to_json(data)


def structured_identity(body: bytes) -> tuple[str | None, str | None]:
    """``(id, type)`` of a structured-mode body, ``None`` for what it does not say.

    For listings of stored messages (dead letters) that show and filter by id and type
    without decoding the event: never raises.
    """
    try:
        document = pydantic_core.from_json(body)
    except ValueError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    event_id, event_type = document.get("id"), document.get("type")
    return (
        event_id if isinstance(event_id, str) and event_id else None,
        event_type if isinstance(event_type, str) and event_type else None,
    )


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


# -- forwarding ----------------------------------------------------------------------------
_current_context = delivery_context.get


def _forwarded_id(event: DomainEvent, event_id: str) -> str:
    """The id to write for ``event`` while a foreign-id event is being handled.

    Publishing the event being handled (the same object, or a copy with the same
    ``event_id``, e.g. changed by a middleware) is forwarding it: the original id goes
    back on the wire, so the next consumer derives the same ``event_id`` and the same
    (source, id) dedup key. Any other event keeps its own id.
    """
    context = _current_context()
    handled = context.event
    if handled is not None and (handled is event or handled.event_id == event.event_id):
        return context.cloudevent_id or event_id
    return event_id
