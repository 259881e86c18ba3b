"""CloudEvents 1.0 core (binary content mode), shared by the RabbitMQ and Kafka adapters.

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
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Final, Literal

from pydantic import ValidationError

from hexbus.domain.errors import DecodeError, InvalidMetadataError, UnknownEventTypeError
from hexbus.domain.events import DomainEvent, EventRegistry, event_registry

__all__ = [
    "CONTENT_TYPE",
    "CloudEventCodec",
    "DecodeReason",
    "ENVELOPE_FIELDS",
    "METAKEYS_EXTENSION",
    "RESERVED_ATTRIBUTES",
    "SPECVERSION",
    "decode_error_reason",
    "decode_error",
    "extension_name",
    "format_time",
]

SPECVERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/json"
METAKEYS_EXTENSION: Final = "hexbusmetakeys"

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
_NOT_EXTENSION_NAME = re.compile(r"[^a-z0-9]+")
_ESCAPED = re.compile(r"%(25|2[Cc])")

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
        cls = type(event)
        attributes = {
            "specversion": SPECVERSION,
            "id": str(event.event_id),
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
        # Straight to bytes: model_dump_json() would decode to str only for us to encode.
        body = cls.__pydantic_serializer__.to_json(
            event, exclude=_BODY_EXCLUDE, by_alias=True, round_trip=True
        )
        return attributes, body

    def decode(
        self, attributes: Mapping[str, str | bytes], body: bytes
    ) -> tuple[DomainEvent, dict[str, str]]:
        """The event and its metadata, or ``DecodeError`` (``raw=body``, a ``reason``).

        Attributes win over body keys of the same name. ``time`` is optional in
        CloudEvents; without it ``occurred_at`` is the decode time. Missing
        ``correlationid`` (a foreign producer) starts a conversation at the event's id.
        """
        attrs = _as_text(attributes, body)
        for name in _REQUIRED:
            if name not in attrs:
                raise decode_error(
                    f"not a CloudEvent: required attribute {name!r} is missing "
                    f"(got {', '.join(sorted(attrs)) or 'no attributes'})",
                    "malformed",
                    body,
                    attributes,
                )
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
        # be overwritten. This is the consumer's hot path.
        data = _splice(body, self._envelope_json(attrs))
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
            raise _body_error(exc, event_type, cls, body, attributes, attrs=attrs) from exc
        return event, _metadata_from(attrs)

    def _envelope_json(self, attrs: Mapping[str, str]) -> str:
        """The envelope fields as JSON object members, taken from the attributes."""
        event_id = attrs["id"]
        correlation_id = attrs.get("correlationid")
        causation_id = attrs.get("causationid")
        source = attrs["source"]
        time = attrs.get("time")
        members = (
            f'"event_id":{_quote(event_id)}'
            f',"correlation_id":{_quote(event_id if correlation_id is None else correlation_id)}'
            f',"causation_id":{"null" if causation_id is None else _quote(causation_id)}'
            f',"source":{_quote("" if source == self._source else source)}'
        )
        if time is not None:  # optional in CloudEvents: without it, the decode time
            members += f',"occurred_at":{_quote(time)}'
        return members


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
    "id": "it must be a UUID",
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
