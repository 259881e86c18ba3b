"""The CloudEvents codec: wire shape, lossless round trips, and every way decoding fails.

Why property tests: the codec sits between two processes that may run different code,
so "whatever the fields and metadata, what comes out equals what went in" and "whatever
bytes arrive, the only failure is a DecodeError that keeps those bytes" are the claims
worth checking against many inputs, not a handful of examples.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from hexbus.domain.context import DeliveryContext, delivery_context
from hexbus.domain.errors import DecodeError, InvalidMetadataError, UnknownEventTypeError
from hexbus.domain.events import DomainEvent, EventRegistry
from hexbus.infrastructure.codec import (
    ENVELOPE_FIELDS,
    RESERVED_ATTRIBUTES,
    CloudEventCodec,
    decode_error_reason,
    extension_name,
)
from hexbus.infrastructure.kafka.marshal import (
    decode_record,
    encode_record,
    from_kafka_headers,
    to_kafka_headers,
)
from hexbus.infrastructure.rabbitmq.marshal import (
    decode_message,
    encode_message,
    from_amqp_headers,
    to_amqp_headers,
)

SERVICE = "codec-tests"


class Address(BaseModel):
    street: str
    zip_code: str | None = None


class CodecEverything(DomainEvent, event_type="codec.test.everything", version=2):
    text: str
    count: int
    ratio: float
    flag: bool
    ref: UUID
    when: datetime
    tags: list[str]
    maybe: int | None
    address: Address
    history: list[Address]


class CodecSimple(DomainEvent, event_type="codec.test.simple"):
    n: int


class CodecAliased(DomainEvent, event_type="codec.test.aliased"):
    user_name: str = Field(alias="userName")


@pytest.fixture
def codec() -> CloudEventCodec:
    return CloudEventCodec(source=SERVICE)


def _simple_wire(codec: CloudEventCodec) -> tuple[dict[str, str], bytes]:
    return codec.encode(CodecSimple(n=1))


def _decode_failure(
    codec: CloudEventCodec, attrs: dict[str, str], body: bytes
) -> DecodeError | None:
    """The DecodeError, or None if it decoded; any other exception propagates (a bug)."""
    try:
        codec.decode(attrs, body)
    except DecodeError as exc:
        return exc
    return None


def _reason(exc: pytest.ExceptionInfo[DecodeError]) -> str:
    return decode_error_reason(exc.value)


# -- strategies -----------------------------------------------------------------------
_texts = st.text(max_size=30)
_aware = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
    ),
)
_addresses = st.builds(Address, street=_texts, zip_code=st.none() | _texts)

_everything = st.builds(
    CodecEverything,
    event_id=st.uuids(),
    occurred_at=_aware,
    correlation_id=_texts,
    causation_id=st.none() | _texts,
    source=_texts.filter(lambda s: s != SERVICE),
    text=st.text(),
    count=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    ratio=st.floats(allow_nan=False, allow_infinity=False),
    flag=st.booleans(),
    ref=st.uuids(),
    when=_aware | st.datetimes(),
    tags=st.lists(_texts, max_size=5),
    maybe=st.none() | st.integers(),
    address=_addresses,
    history=st.lists(_addresses, max_size=3),
)

_KEY_ALPHABET = "abcXYZ019_-.,% "


def _valid_metadata(metadata: dict[str, str]) -> bool:
    names = [extension_name(k) for k in metadata]
    return (
        all(names)
        and not any(n in RESERVED_ATTRIBUTES for n in names)
        and len(set(names)) == len(names)
    )


_metadata = st.dictionaries(
    st.text(alphabet=_KEY_ALPHABET, min_size=1, max_size=12), st.text(max_size=40), max_size=6
).filter(_valid_metadata)


# -- encode ---------------------------------------------------------------------------
def test_encode_sets_the_cloudevents_attributes(codec: CloudEventCodec) -> None:
    parent = uuid4()
    event = CodecSimple(n=3, causation_id=str(parent), correlation_id="corr-1")
    attrs, body = codec.encode(event, {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})

    assert attrs == {
        "specversion": "1.0",
        "id": str(event.event_id),
        "type": "codec.test.simple",
        "source": SERVICE,
        "time": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "correlationid": "corr-1",
        "causationid": str(parent),
        "eventversion": "1",
        "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    }
    assert attrs["time"].endswith("Z")
    assert body == b'{"n":3}'


def test_encode_body_holds_only_the_events_own_fields(codec: CloudEventCodec) -> None:
    event = CodecEverything(
        text="t",
        count=1,
        ratio=0.5,
        flag=True,
        ref=uuid4(),
        when=datetime(2024, 1, 2, tzinfo=UTC),
        tags=["a"],
        maybe=None,
        address=Address(street="s"),
        history=[],
    )
    attrs, body = codec.encode(event)
    data = json.loads(body)
    assert set(data) == set(CodecEverything.model_fields) - ENVELOPE_FIELDS
    assert b" " not in body  # compact JSON
    assert attrs["eventversion"] == "2"
    assert "causationid" not in attrs  # omitted when None


def test_encode_keeps_an_explicit_source(codec: CloudEventCodec) -> None:
    attrs, _ = codec.encode(CodecSimple(n=1, source="billing"))
    assert attrs["source"] == "billing"


def test_encode_converts_time_to_utc_z(codec: CloudEventCodec) -> None:
    event = CodecSimple(
        n=1, occurred_at=datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    )
    attrs, _ = codec.encode(event)
    assert attrs["time"] == "2024-05-01T10:00:00Z"


def test_metadata_travels_under_sanitized_names(codec: CloudEventCodec) -> None:
    metadata = {"ip_address": "10.0.0.1", "User-Agent": "curl/8", "traceid": "t1"}
    attrs, _ = codec.encode(CodecSimple(n=1), metadata)
    assert attrs["ipaddress"] == "10.0.0.1"
    assert attrs["useragent"] == "curl/8"
    assert attrs["traceid"] == "t1"
    assert attrs["hexbusmetakeys"] == "ip_address,User-Agent"  # only the renamed ones
    assert all(name.isalnum() and name == name.lower() for name in attrs)


def test_metadata_without_renames_adds_no_metakeys(codec: CloudEventCodec) -> None:
    attrs, _ = codec.encode(CodecSimple(n=1), {"tenant": "t"})
    assert "hexbusmetakeys" not in attrs


def test_metadata_keys_with_commas_and_percents_round_trip(codec: CloudEventCodec) -> None:
    metadata = {"a,b": "1", "c%2Cd": "2", "%25,": "3"}
    _, back = codec.decode(*codec.encode(CodecSimple(n=1), metadata))
    assert back == metadata


@pytest.mark.parametrize(
    ("metadata", "mentions"),
    [
        ({1: "x"}, "1"),
        ({"ip": 1}, "'ip'"),
        ({"ip": None}, "'ip'"),
        ({"__": "x"}, "'__'"),
        ({"": "x"}, "''"),
        ({"ip_address": "a", "ip-address": "b"}, "'ip_address', 'ip-address'"),
        ({"ip_address": "a", "ipaddress": "b"}, "'ipaddress'"),
        ({"Type": "x"}, "'type'"),
        ({"event-version": "x"}, "'eventversion'"),
        ({"correlation_id": "x"}, "'correlationid'"),
        ({"hexbus_meta_keys": "x"}, "'hexbusmetakeys'"),
        ({"id": "x"}, "'id'"),
        ({"ok": "\ud800"}, "UTF-8"),
    ],
)
def test_encode_refuses_bad_metadata(
    codec: CloudEventCodec, metadata: dict[Any, Any], mentions: str
) -> None:
    with pytest.raises(InvalidMetadataError) as exc:
        codec.encode(CodecSimple(n=1), metadata)
    assert mentions in str(exc.value)


def test_bad_metadata_error_lists_every_problem(codec: CloudEventCodec) -> None:
    with pytest.raises(InvalidMetadataError) as exc:
        codec.encode(CodecSimple(n=1), {"good": "x", "source": "s", "!!": "y"})
    assert "'source'" in str(exc.value)
    assert "'!!'" in str(exc.value)


def test_codec_source_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="source"):
        CloudEventCodec(source="")


# -- decode ---------------------------------------------------------------------------
def test_decode_restores_the_event_and_metadata(codec: CloudEventCodec) -> None:
    event = CodecSimple(n=7, causation_id="c")
    metadata = {"ip_address": "1.2.3.4", "user_agent": "ua", "traceparent": "00-x"}
    back, back_meta = codec.decode(*codec.encode(event, metadata))
    assert back == event
    assert type(back) is CodecSimple
    assert back_meta == metadata


def test_decode_own_source_comes_back_as_this_service(codec: CloudEventCodec) -> None:
    other = CloudEventCodec(source="billing")
    event, _ = codec.decode(*other.encode(CodecSimple(n=1)))
    assert event.source == "billing"
    event, _ = codec.decode(*codec.encode(CodecSimple(n=1)))
    assert event.source == ""


def test_decode_accepts_bytes_attribute_values(codec: CloudEventCodec) -> None:
    attrs, body = _simple_wire(codec)
    event, _ = codec.decode({k: v.encode() for k, v in attrs.items()}, body)
    assert event == codec.decode(attrs, body)[0]


def test_decode_a_foreign_producers_minimal_event(codec: CloudEventCodec) -> None:
    event_id = uuid4()
    attrs = {
        "specversion": "1.0",
        "id": str(event_id),
        "type": "codec.test.simple",
        "source": "/go/orders",
        "partitionkey": "order-1",
        "tracestate": "k=v",
    }
    before = datetime.now(UTC)
    event, metadata = codec.decode(attrs, b' { "n" : 5 } ')
    assert isinstance(event, CodecSimple)
    assert event.n == 5
    assert event.event_id == event_id
    assert event.source == "/go/orders"
    assert event.correlation_id == str(event_id)
    assert event.causation_id is None
    assert event.occurred_at >= before  # CloudEvents 'time' is optional
    assert metadata == {"partitionkey": "order-1", "tracestate": "k=v"}


def test_decode_time_with_offset_and_nanoseconds(codec: CloudEventCodec) -> None:
    attrs, body = _simple_wire(codec)
    attrs["time"] = "2024-05-01T12:00:00.123456789+02:00"
    event, _ = codec.decode(attrs, body)
    assert event.occurred_at == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert event.occurred_at.tzinfo is UTC


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "application/json; charset=utf-8", "application/vnd.x+json"],
)
def test_decode_accepts_json_content_types(
    codec: CloudEventCodec, content_type: str | None
) -> None:
    attrs, body = _simple_wire(codec)
    del attrs["datacontenttype"]
    if content_type is not None:
        attrs["datacontenttype"] = content_type
    assert codec.decode(attrs, body)[0].n == 1  # type: ignore[attr-defined]


def test_decode_body_keys_do_not_override_attributes(codec: CloudEventCodec) -> None:
    attrs, _ = _simple_wire(codec)
    body = json.dumps({"n": 1, "event_id": str(uuid4()), "source": "liar"}).encode()
    event, _ = codec.decode(attrs, body)
    assert str(event.event_id) == attrs["id"]
    assert event.source == ""


def test_decode_older_or_missing_eventversion_validates_normally(codec: CloudEventCodec) -> None:
    event = CodecEverything(
        text="t",
        count=1,
        ratio=0.5,
        flag=True,
        ref=uuid4(),
        when=datetime(2024, 1, 2),
        tags=[],
        maybe=1,
        address=Address(street="s"),
        history=[],
    )
    attrs, body = codec.encode(event)
    for version in ("1", "2"):
        assert codec.decode({**attrs, "eventversion": version}, body)[0] == event
    del attrs["eventversion"]
    assert codec.decode(attrs, body)[0] == event


def test_decode_does_not_take_envelope_from_the_handler_context(codec: CloudEventCodec) -> None:
    attrs, body = codec.encode(CodecSimple(n=1))  # no causationid on the wire
    parent = CodecSimple(n=0, correlation_id="parent-conversation")
    token = delivery_context.set(DeliveryContext(event=parent))
    try:
        event, _ = codec.decode(attrs, body)
    finally:
        delivery_context.reset(token)
    assert event.causation_id is None
    assert event.correlation_id == attrs["correlationid"]


def test_decode_by_field_alias(codec: CloudEventCodec) -> None:
    event = CodecAliased(userName="ada")
    attrs, body = codec.encode(event)
    assert json.loads(body) == {"userName": "ada"}
    assert codec.decode(attrs, body)[0] == event


# -- decode errors ----------------------------------------------------------------------
@pytest.mark.parametrize("missing", ["specversion", "id", "type", "source"])
def test_missing_required_attribute(codec: CloudEventCodec, missing: str) -> None:
    attrs, body = _simple_wire(codec)
    del attrs[missing]
    with pytest.raises(DecodeError, match=missing) as exc:
        codec.decode(attrs, body)
    assert exc.value.raw == body
    assert _reason(exc) == "malformed"
    assert exc.value.headers == attrs


@pytest.mark.parametrize(
    ("attribute", "value", "match"),
    [
        ("specversion", "0.3", "specversion"),
        ("datacontenttype", "application/xml", "datacontenttype"),
        ("id", "not-a-uuid", "'id'"),
        ("time", "yesterday", "'time'"),
        ("time", "2024-01-01T00:00:00", "'time'"),  # no offset
        ("eventversion", "two", "eventversion"),
        ("eventversion", "0", "eventversion"),
    ],
)
def test_malformed_attribute(
    codec: CloudEventCodec, attribute: str, value: str, match: str
) -> None:
    attrs, body = _simple_wire(codec)
    attrs[attribute] = value
    with pytest.raises(DecodeError, match=match) as exc:
        codec.decode(attrs, body)
    assert exc.value.raw == body
    assert _reason(exc) == "malformed"


def test_attribute_that_is_not_utf8(codec: CloudEventCodec) -> None:
    attrs, body = _simple_wire(codec)
    raw_attrs: dict[str, str | bytes] = {**attrs, "ipaddress": b"\xff\xfe"}
    with pytest.raises(DecodeError, match="ipaddress") as exc:
        codec.decode(raw_attrs, body)
    assert exc.value.raw == body
    assert _reason(exc) == "malformed"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b'{"n": 1', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"n"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"42", "not a JSON object"),
    ],
)
def test_malformed_body(codec: CloudEventCodec, body: bytes, match: str) -> None:
    attrs, _ = _simple_wire(codec)
    with pytest.raises(DecodeError, match=match) as exc:
        codec.decode(attrs, body)
    assert exc.value.raw == body
    assert _reason(exc) == "malformed"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"n": "many"}', "n"),
        (b"{}", "n"),
        (b'{"n": 1, "extra": true}', "extra"),
    ],
)
def test_invalid_field_data(codec: CloudEventCodec, body: bytes, field: str) -> None:
    attrs, _ = _simple_wire(codec)
    with pytest.raises(DecodeError, match=field) as exc:
        codec.decode(attrs, body)
    assert exc.value.raw == body
    assert _reason(exc) == "invalid_data"
    assert "codec.test.simple" in str(exc.value)


def test_unknown_type(codec: CloudEventCodec) -> None:
    attrs, body = _simple_wire(codec)
    attrs["type"] = "codec.test.never_defined"
    with pytest.raises(DecodeError, match=r"codec\.test\.never_defined") as exc:
        codec.decode(attrs, body)
    assert exc.value.raw == body
    assert _reason(exc) == "unknown_type"
    assert isinstance(exc.value.__cause__, UnknownEventTypeError)


def test_unknown_type_with_a_private_registry() -> None:
    attrs, body = _simple_wire(CloudEventCodec(source=SERVICE))
    private = CloudEventCodec(source=SERVICE, registry=EventRegistry())
    with pytest.raises(DecodeError) as exc:
        private.decode(attrs, body)
    assert _reason(exc) == "unknown_type"


def test_newer_eventversion(codec: CloudEventCodec) -> None:
    attrs, body = _simple_wire(codec)
    attrs["eventversion"] = "2"
    with pytest.raises(DecodeError, match="newer schema") as exc:
        codec.decode(attrs, body)
    assert exc.value.raw == body
    assert _reason(exc) == "newer_version"


def test_decode_kafka_bad_header_keeps_the_value(codec: CloudEventCodec) -> None:
    headers, value = encode_record(codec, CodecSimple(n=1))
    headers.append(("ce_ipaddress", b"\xff"))
    with pytest.raises(DecodeError, match="ce_ipaddress") as exc:
        decode_record(codec, headers, value)
    assert exc.value.raw == value
    assert _reason(exc) == "malformed"


def test_decode_amqp_bad_header_keeps_the_body(codec: CloudEventCodec) -> None:
    headers, content_type, body = encode_message(codec, CodecSimple(n=1))
    bad: dict[str, Any] = {**headers, "cloudEvents:ipaddress": b"\xff"}
    with pytest.raises(DecodeError) as exc:
        decode_message(codec, bad, content_type, body)
    assert exc.value.raw == body


# -- bindings ---------------------------------------------------------------------------
def test_kafka_headers_follow_the_binding(codec: CloudEventCodec) -> None:
    attrs, _ = codec.encode(CodecSimple(n=1), {"ip_address": "1"})
    headers = to_kafka_headers(attrs)
    names = [name for name, _ in headers]
    assert "content-type" in names
    assert "ce_datacontenttype" not in names
    assert all(n.startswith("ce_") for n in names if n != "content-type")
    assert dict(headers)["ce_id"] == attrs["id"].encode()
    assert from_kafka_headers(headers) == attrs


def test_from_kafka_headers_ignores_foreign_headers() -> None:
    headers = [("ce_id", b"1"), ("traceparent", b"x"), ("Content-Type", b"application/json")]
    assert from_kafka_headers(headers) == {"id": "1", "datacontenttype": "application/json"}
    assert from_kafka_headers(None) == {}


def test_amqp_headers_follow_the_binding(codec: CloudEventCodec) -> None:
    attrs, _ = codec.encode(CodecSimple(n=1), {"ip_address": "1"})
    headers = to_amqp_headers(attrs)
    assert "cloudEvents:datacontenttype" not in headers
    assert all(name.startswith("cloudEvents:") for name in headers)
    assert from_amqp_headers(headers, attrs["datacontenttype"]) == attrs


def test_from_amqp_headers_accepts_jms_prefix_and_amqp_types() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    headers = {
        "cloudEvents_id": b"abc",
        "cloudEvents:eventversion": 2,
        "cloudEvents:time": when,
        "cloudEvents:flag": True,
        "cloudEvents:none": None,
        "x-death": [{"count": 1}],
    }
    assert from_amqp_headers(headers, None) == {
        "id": "abc",
        "eventversion": "2",
        "time": "2024-01-02T03:04:05Z",
        "flag": "true",
    }


def test_encode_amqp_returns_content_type(codec: CloudEventCodec) -> None:
    headers, content_type, body = encode_message(codec, CodecSimple(n=4))
    assert content_type == "application/json"
    event, _ = decode_message(codec, headers, content_type, body)
    assert event.n == 4  # type: ignore[attr-defined]


# -- properties ---------------------------------------------------------------------------
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(event=_everything, metadata=_metadata)
def test_round_trip(event: CodecEverything, metadata: dict[str, str]) -> None:
    codec = CloudEventCodec(source=SERVICE)
    attrs, body = codec.encode(event, metadata)
    back, back_meta = codec.decode(attrs, body)
    assert back == event
    assert back_meta == metadata


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(event=_everything, metadata=_metadata)
def test_round_trip_through_kafka_and_amqp(
    event: CodecEverything, metadata: dict[str, str]
) -> None:
    codec = CloudEventCodec(source=SERVICE)
    attrs, _ = codec.encode(event, metadata)
    assert from_kafka_headers(to_kafka_headers(attrs)) == attrs
    assert from_amqp_headers(to_amqp_headers(attrs), attrs["datacontenttype"]) == attrs
    assert decode_record(codec, *encode_record(codec, event, metadata)) == (event, metadata)
    assert decode_message(codec, *encode_message(codec, event, metadata)) == (event, metadata)


@given(metadata=_metadata)
def test_metadata_extension_names_are_valid(metadata: dict[str, str]) -> None:
    attrs, _ = CloudEventCodec(source=SERVICE).encode(CodecSimple(n=1), metadata)
    for name in attrs:
        assert re.fullmatch(r"[a-z0-9]+", name), name


@given(metadata=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5))
def test_any_metadata_either_round_trips_or_is_refused(metadata: dict[str, str]) -> None:
    codec = CloudEventCodec(source=SERVICE)
    try:
        wire = codec.encode(CodecSimple(n=1), metadata)
    except InvalidMetadataError:
        assert not _valid_metadata(metadata)
        return
    assert codec.decode(*wire)[1] == metadata


@given(body=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_any_body_decodes_or_raises_decode_error_with_raw(body: bytes) -> None:
    codec = CloudEventCodec(source=SERVICE)
    attrs, _ = codec.encode(CodecSimple(n=1))
    error = _decode_failure(codec, attrs, body)
    if error is not None:
        assert error.raw == body
        assert decode_error_reason(error) in {"malformed", "invalid_data"}


@given(
    attrs=st.dictionaries(
        st.sampled_from(
            ["specversion", "id", "type", "source", "time", "eventversion", "datacontenttype", "x"]
        ),
        st.text(max_size=20) | st.sampled_from(["1.0", "codec.test.simple", str(uuid4())]),
    ),
    body=st.binary(max_size=16) | st.just(b'{"n":1}'),
)
def test_any_attributes_decode_or_raise_decode_error_with_raw(
    attrs: dict[str, str], body: bytes
) -> None:
    codec = CloudEventCodec(source=SERVICE)
    error = _decode_failure(codec, attrs, body)
    if error is not None:
        assert error.raw == body
        assert decode_error_reason(error) in {
            "malformed",
            "unknown_type",
            "newer_version",
            "invalid_data",
        }
