"""The CloudEvents codec: wire shape, lossless round trips, and every way decoding fails.

Why property tests: the codec sits between two processes that may run different code,
so "whatever the fields and metadata, what comes out equals what went in" and "whatever
bytes arrive, the only failure is a DecodeError that keeps those bytes" are the claims
worth checking against many inputs, not a handful of examples.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import decode as pamqp_decode
from pamqp import encode as pamqp_encode
from pydantic import BaseModel, Field

from hexbus.domain.context import DeliveryContext, delivery_context
from hexbus.domain.errors import DecodeError, InvalidMetadataError, UnknownEventTypeError
from hexbus.domain.events import DomainEvent, EventRegistry
from hexbus.infrastructure.codec import (
    ENVELOPE_FIELDS,
    EVENT_ID_NAMESPACE,
    RESERVED_ATTRIBUTES,
    CloudEventCodec,
    attribute_text,
    decode_error_reason,
    derived_event_id,
    extension_name,
)
from hexbus.infrastructure.kafka.marshal import (
    PlainHeaders,
    decode_record,
    encode_record,
    from_kafka_headers,
    read_record,
    to_kafka_headers,
)
from hexbus.infrastructure.kafka.marshal import wire_identity as kafka_wire_identity
from hexbus.infrastructure.rabbitmq.marshal import (
    decode_message,
    encode_message,
    from_amqp_headers,
    read_message,
    to_amqp_headers,
)
from hexbus.infrastructure.rabbitmq.marshal import wire_identity as amqp_wire_identity

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
        ("id", "", "'id' is empty"),  # an id that is no UUID is derived: test_interop
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
    attrs, _ = codec.encode(CodecSimple(n=1, correlation_id="conv-1"), {"ip_address": "1"})
    headers = to_kafka_headers(attrs)
    names = [name for name, _ in headers]
    assert "content-type" in names
    assert "ce_datacontenttype" not in names
    assert all(n.startswith("ce_") for n in names if n != "content-type")
    assert dict(headers)["ce_id"] == attrs["id"].encode()
    assert from_kafka_headers(headers) == attrs


def test_bindings_leave_out_a_correlationid_equal_to_the_id(codec: CloudEventCodec) -> None:
    """The first event of a conversation: its correlationid would repeat its id, and an
    absent one decodes to the id, so neither binding sends it; the event is the same."""
    event = CodecSimple(n=1)
    attrs, body = codec.encode(event)
    assert attrs["correlationid"] == attrs["id"]
    kafka = to_kafka_headers(attrs)
    amqp = to_amqp_headers(attrs)
    assert "ce_correlationid" not in dict(kafka)
    assert "cloudEvents:correlationid" not in amqp
    assert decode_record(codec, kafka, body)[0] == event
    assert decode_message(codec, amqp, attrs["datacontenttype"], body)[0] == event


@given(
    event=_everything
    | st.builds(CodecSimple, n=st.integers(), source=st.sampled_from(["", SERVICE, "other"])),
    same_correlation=st.booleans(),
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_plain_headers_are_the_bindings_headers_of_the_attributes(
    codec: CloudEventCodec, event: DomainEvent, same_correlation: bool
) -> None:
    """The publisher's fast header builder (no metadata) gives exactly what
    ``to_kafka_headers(codec.attributes(...))`` gives: names, bytes and order."""
    if same_correlation:  # the first event of a conversation: correlationid is left out
        event = event.model_copy(update={"correlation_id": str(event.event_id)})
    build = PlainHeaders(codec.source)
    for event_id in (str(event.event_id), "forwarded-id"):
        expected = to_kafka_headers(codec.attributes(event, None, event_id))
        assert build(event, event_id) == expected
        assert build(event, event_id) == expected  # the per-class pairs, from the cache


def test_from_kafka_headers_ignores_foreign_headers() -> None:
    headers = [("ce_id", b"1"), ("traceparent", b"x"), ("Content-Type", b"application/json")]
    assert from_kafka_headers(headers) == {"id": "1", "datacontenttype": "application/json"}
    assert from_kafka_headers(None) == {}


def test_amqp_headers_follow_the_binding(codec: CloudEventCodec) -> None:
    attrs, _ = codec.encode(CodecSimple(n=1, correlation_id="conv-1"), {"ip_address": "1"})
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


# -- foreign ids (CloudEvents ids that are not hexbus's UUIDs) ----------------------------
def _foreign_wire(wire_id: str, source: str = "/shop/orders") -> dict[str, str]:
    return {
        "specversion": "1.0",
        "id": wire_id,
        "type": "codec.test.simple",
        "source": source,
        "time": "2024-05-01T10:00:00Z",
    }


@pytest.mark.parametrize("wire_id", ["order-42", "x", "0189abcd-0000-7000-8000-00000000000g", "7"])
def test_an_id_that_is_no_uuid_gets_a_stable_derived_event_id(
    codec: CloudEventCodec, wire_id: str
) -> None:
    event, metadata, original = codec.decode_delivery(_foreign_wire(wire_id), b'{"n": 1}')
    assert event.event_id == uuid5(EVENT_ID_NAMESPACE, f"/shop/orders\n{wire_id}")
    assert event.event_id == derived_event_id("/shop/orders", wire_id)
    assert event.event_id.version == 5
    assert original == wire_id
    assert event.correlation_id == wire_id  # a conversation starts at the id as sent
    assert metadata == {}
    # Stable: another consumer (another service name) derives the same id.
    other, _, _ = CloudEventCodec(source="elsewhere").decode_delivery(
        _foreign_wire(wire_id), b'{"n": 1}'
    )
    assert other.event_id == event.event_id
    # (source, id) is the identity: another source, another event.
    third, _, _ = codec.decode_delivery(_foreign_wire(wire_id, "/billing"), b'{"n": 1}')
    assert third.event_id != event.event_id
    assert codec.decode(_foreign_wire(wire_id), b'{"n": 1}') == (event, {})


def test_derived_event_id_namespace_is_fixed() -> None:
    # Changing it would give every foreign-id event a new identity: pinned here.
    assert UUID("103d7606-9cec-546d-9852-1e0eabf03b2d") == EVENT_ID_NAMESPACE
    assert uuid5(NAMESPACE_URL, "urn:hexbus:cloudevents:id") == EVENT_ID_NAMESPACE
    assert derived_event_id("/shop/orders", "order-42") == UUID(
        "ffcf4200-82a1-5488-b08e-6f0c597794e2"
    )


def test_hexbus_uuid_ids_are_kept_and_report_no_original(codec: CloudEventCodec) -> None:
    event = CodecSimple(n=1)
    back, _, original = codec.decode_delivery(*codec.encode(event))
    assert back == event
    assert original is None
    digits = UUID("12345678-1234-7234-8234-123456789012")  # no letter: the slow check
    back, _, original = codec.decode_delivery(
        *codec.encode(CodecSimple(n=1, event_id=digits))
    )
    assert back.event_id == digits
    assert original is None


@pytest.mark.parametrize(
    "spelling",
    [
        "0189ABCD-0000-7000-8000-0000000000FF",
        "0189abcd0000700080000000000000ff",
        "{0189abcd-0000-7000-8000-0000000000ff}",
        "urn:uuid:0189abcd-0000-7000-8000-0000000000ff",
    ],
)
def test_a_uuid_spelled_otherwise_keeps_its_value_and_its_spelling(
    codec: CloudEventCodec, spelling: str
) -> None:
    event, _, original = codec.decode_delivery(_foreign_wire(spelling), b'{"n": 1}')
    assert event.event_id == UUID("0189abcd-0000-7000-8000-0000000000ff")
    assert original == spelling  # re-encoding and the dedup key use the text as sent


@pytest.mark.parametrize(
    ("missing", "match"),
    [
        ("id", "'id' is empty"),
        ("source", "'source' is empty"),
        ("type", "'type' is empty"),
        ("specversion", "specversion ''"),
    ],
)
def test_required_attributes_must_not_be_empty(
    codec: CloudEventCodec, missing: str, match: str
) -> None:
    attrs = {**_foreign_wire("order-1"), missing: ""}
    with pytest.raises(DecodeError, match=match) as exc:
        codec.decode_delivery(attrs, b'{"n": 1}')
    assert _reason(exc) == "malformed"


def test_a_non_uuid_id_with_a_bad_body_reports_the_body(codec: CloudEventCodec) -> None:
    wire_id = "order-00000000000000000000000042"  # a UUID's length: tried as one first
    assert len(wire_id) == 32
    with pytest.raises(DecodeError, match="n: Input should be a valid integer") as exc:
        codec.decode_delivery(_foreign_wire(wire_id), b'{"n": "many"}')
    assert _reason(exc) == "invalid_data"
    assert "UUID" not in str(exc.value)


def _in_context(context: DeliveryContext, fn: Any) -> Any:
    token = delivery_context.set(context)
    try:
        return fn()
    finally:
        delivery_context.reset(token)


def test_forwarding_the_handled_event_writes_the_original_id_again(
    codec: CloudEventCodec,
) -> None:
    event, metadata, original = codec.decode_delivery(_foreign_wire("order-42"), b'{"n": 1}')
    context = DeliveryContext(event, metadata, 1, None, None, "sub", original)
    attrs, body = _in_context(context, lambda: codec.encode(event))
    assert attrs["id"] == "order-42"
    assert attrs["source"] == "/shop/orders"
    # A copy with the same identity (a middleware changed it) is still the same event.
    copy = event.model_copy(update={"correlation_id": "c"})
    assert _in_context(context, lambda: codec.encode(copy))[0]["id"] == "order-42"
    # A new event published by the handler keeps its own id.
    child = _in_context(context, lambda: CodecSimple(n=2))
    assert _in_context(context, lambda: codec.encode(child))[0]["id"] == str(child.event_id)
    # Outside the handler the event has no original id to write: its own.
    assert codec.encode(event)[0]["id"] == str(event.event_id)
    # The next consumer derives the same event_id again.
    again, _, again_original = CloudEventCodec(source="next").decode_delivery(attrs, body)
    assert again.event_id == event.event_id
    assert again_original == "order-42"


@given(wire_id=st.text(min_size=1, max_size=60).filter(lambda s: "\x00" not in s))
def test_any_id_decodes_and_survives_forwarding(wire_id: str) -> None:
    codec = CloudEventCodec(source=SERVICE)
    event, metadata, original = codec.decode_delivery(_foreign_wire(wire_id), b'{"n": 1}')
    assert (original is None) == (str(event.event_id) == wire_id)
    context = DeliveryContext(event, metadata, 1, None, None, "sub", original)
    assert context.wire_id == wire_id
    assert context.dedup_key == ("/shop/orders", wire_id)
    attrs, body = _in_context(context, lambda: codec.encode(event, metadata))
    assert attrs["id"] == wire_id
    assert codec.decode_delivery(attrs, body)[0].event_id == event.event_id


def test_delivery_context_identity_helpers() -> None:
    event = CodecSimple(n=1, source="billing")
    assert DeliveryContext().wire_id is None
    assert DeliveryContext().dedup_key is None
    plain = DeliveryContext(event)
    assert plain.cloudevent_id is None
    assert plain.wire_id == str(event.event_id)
    assert plain.dedup_key == ("billing", str(event.event_id))
    foreign = DeliveryContext(event, cloudevent_id="order-42")
    assert foreign.wire_id == "order-42"
    assert foreign.dedup_key == ("billing", "order-42")


# -- times -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00.123456789+02:00", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2024-05-01T12:00:00.1Z", datetime(2024, 5, 1, 12, 0, 0, 100000, tzinfo=UTC)),
        ("2024-05-01t12:00:00z", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        ("2024-05-01T07:30:00-04:30", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        ("2024-05-01T12:00:00.000000001+00:00", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2016-12-31T23:59:60.5+00:00", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_rfc3339_times_decode_to_utc(codec: CloudEventCodec, text: str, expected: datetime) -> None:
    attrs, body = _simple_wire(codec)
    attrs["time"] = text
    event, _ = codec.decode(attrs, body)
    assert event.occurred_at == expected
    assert event.occurred_at.tzinfo is UTC


def test_a_leap_second_with_a_foreign_id_fixes_both(codec: CloudEventCodec) -> None:
    attrs = {
        **_foreign_wire("0189abcd-0000-7000-8000-00000000000g"),
        "time": "2016-12-31T23:59:60Z",
    }
    event, _, original = codec.decode_delivery(attrs, b'{"n": 1}')
    assert original == attrs["id"]
    assert event.occurred_at == datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_amqp_timestamp_values_become_rfc3339(codec: CloudEventCodec) -> None:
    headers, content_type, body = encode_message(codec, CodecSimple(n=1))
    # An AMQP 0-9-1 timestamp (pamqp: an aware datetime; naive means UTC) ...
    headers_dt: dict[str, Any] = {**headers, "cloudEvents:time": datetime(2024, 5, 1, 12, 0)}
    event, _ = decode_message(codec, headers_dt, content_type, body)
    assert event.occurred_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    # ... and the AMQP 1.0 binding's integer milliseconds since the epoch.
    millis = int(datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC).timestamp() * 1000)
    headers_ms: dict[str, Any] = {**headers, "cloudEvents_time": millis}
    del headers_ms["cloudEvents:time"]
    event, _ = decode_message(codec, headers_ms, content_type, body)
    assert event.occurred_at == datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)


# -- typed attribute values ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("flag", True, "true"),
        ("flag", False, "false"),
        ("count", 42, "42"),
        ("count", -(2**31), "-2147483648"),
        ("blob", b"\x00\xff", "AP8="),
        ("blob", bytearray(b"\x00\xff"), "AP8="),
        ("link", "https://example.com/a?b=c", "https://example.com/a?b=c"),
        (
            "when",
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1))),
            "2024-01-02T02:04:05Z",
        ),
        ("id", bytearray(b"order-1"), "order-1"),  # a String attribute: text, not base64
        ("traceparent", b"00-ab", "00-ab"),
        ("time", 0, "1970-01-01T00:00:00Z"),
        ("x", None, None),
    ],
)
def test_attribute_text_gives_the_canonical_string(name: str, value: Any, text: str | None) -> None:
    assert attribute_text(name, value) == text


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("ratio", 1.5, "float"),
        ("table", {"a": 1}, "dict"),
        ("items", [1], "list"),
        ("id", b"\xff", "UTF-8"),
        ("time", 10**20, "milliseconds"),
    ],
)
def test_attribute_text_refuses_what_no_cloudevents_type_is(
    name: str, value: Any, match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        attribute_text(name, value)


def test_amqp_extensions_of_every_type_become_metadata(codec: CloudEventCodec) -> None:
    headers, content_type, body = encode_message(codec, CodecSimple(n=1))
    typed: dict[str, Any] = {
        **headers,
        "cloudEvents:flag": True,
        "cloudEvents:count": 7,
        "cloudEvents:big": 2**40,
        "cloudEvents_blob": bytearray(b"\x00\x01\xfe"),
        "cloudEvents:link": "https://example.com/x",
        "cloudEvents:seen": datetime(2024, 1, 1, tzinfo=UTC),
    }
    # Through pamqp as RabbitMQ carries them: the types a consumer really gets.
    _, wire = pamqp_decode.field_table(pamqp_encode.field_table(typed))
    event, metadata = decode_message(codec, wire, content_type, body)
    assert event.n == 1  # type: ignore[attr-defined]
    assert metadata == {
        "flag": "true",
        "count": "7",
        "big": "1099511627776",
        "blob": "AAH+",
        "link": "https://example.com/x",
        "seen": "2024-01-01T00:00:00Z",
    }


@pytest.mark.parametrize(("value", "match"), [(1.5, "float"), ({"a": 1}, "dict"), ([1], "list")])
def test_amqp_header_of_no_cloudevents_type_is_a_decode_error(
    codec: CloudEventCodec, value: Any, match: str
) -> None:
    headers, content_type, body = encode_message(codec, CodecSimple(n=1))
    with pytest.raises(DecodeError, match=rf"'cloudEvents:odd'.*{match}") as exc:
        decode_message(codec, {**headers, "cloudEvents:odd": value}, content_type, body)
    assert exc.value.raw == body
    assert _reason(exc) == "malformed"


# -- RabbitMQ binding: ce- headers ------------------------------------------------------------
def test_rabbitmq_binding_ce_headers_are_read(codec: CloudEventCodec) -> None:
    headers = {
        "ce-specversion": "1.0",
        "CE-ID": "order-42",
        "Ce-Type": "codec.test.simple",
        "ce-source": "/shop",
        "ce-time": "2024-05-01T12:00:00.123456789+02:00",
        "ce-tenant": "acme",
        "x-other": "ignored",
    }
    event, metadata, original = read_message(codec, headers, "application/json", b'{"n": 3}')
    assert isinstance(event, CodecSimple)
    assert event.n == 3
    assert event.source == "/shop"
    assert original == "order-42"
    assert event.event_id == derived_event_id("/shop", "order-42")
    assert event.occurred_at == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert metadata == {"tenant": "acme"}


def test_the_amqp_binding_wins_over_ce_headers() -> None:
    headers = {"ce-id": "knative", "cloudEvents:id": "amqp", "ce-tenant": "t"}
    assert from_amqp_headers(headers, None) == {"id": "amqp", "tenant": "t"}
    headers = {"cloudEvents_id": "amqp", "ce-id": "knative"}
    assert from_amqp_headers(headers, None) == {"id": "amqp"}


def test_a_content_type_header_stands_in_for_the_property() -> None:
    headers = {"ce-id": "1", "content-type": "application/json; charset=utf-8"}
    assert from_amqp_headers(headers, None)["datacontenttype"] == (
        "application/json; charset=utf-8"
    )
    # The property wins.
    assert from_amqp_headers(headers, "application/vnd.x+json")["datacontenttype"] == (
        "application/vnd.x+json"
    )


# -- structured content mode --------------------------------------------------------------
def _structured(**members: Any) -> bytes:
    document = {
        "specversion": "1.0",
        "id": "order-42",
        "type": "codec.test.simple",
        "source": "/shop",
        "time": "2024-05-01T12:00:00.123456789+02:00",
        **members,
    }
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+json",
        "application/cloudevents+json; charset=utf-8",
        "Application/CloudEvents+JSON",
    ],
)
def test_structured_mode_reads_the_json_event_format(
    codec: CloudEventCodec, content_type: str
) -> None:
    body = _structured(data={"n": 5}, flag=True, count=3, tenant="acme", dataschema=None)
    event, metadata, original = codec.decode_structured(body, content_type)
    assert isinstance(event, CodecSimple)
    assert event.n == 5
    assert original == "order-42"
    assert event.source == "/shop"
    assert event.occurred_at == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert metadata == {"flag": "true", "count": "3", "tenant": "acme"}


def test_structured_mode_data_base64_and_no_data(codec: CloudEventCodec) -> None:
    encoded = base64.b64encode(b'{"n": 9}').decode()
    event, _, _ = codec.decode_structured(
        _structured(data_base64=encoded), "application/cloudevents+json"
    )
    assert event.n == 9  # type: ignore[attr-defined]

    class CodecNoFields(DomainEvent, event_type="codec.test.no_fields"):
        pass

    empty, _, _ = codec.decode_structured(
        _structured(type="codec.test.no_fields"), "application/cloudevents+json"
    )
    assert isinstance(empty, CodecNoFields)


def test_structured_mode_hexbus_envelope_round_trips(codec: CloudEventCodec) -> None:
    event = CodecSimple(n=4, causation_id="c1", correlation_id="conv")
    attrs, body = CloudEventCodec(source="billing").encode(event, {"ip_address": "1.2.3.4"})
    document = {**attrs, "data": json.loads(body)}
    back, metadata, original = codec.decode_structured(
        json.dumps(document).encode(), "application/cloudevents+json"
    )
    assert back == event.model_copy(update={"source": "billing"})
    assert metadata == {"ip_address": "1.2.3.4"}
    assert original is None


@pytest.mark.parametrize(
    ("content_type", "body", "match"),
    [
        ("application/cloudevents-batch+json", b"[]", "batched content mode"),
        ("application/cloudevents+avro", b"\x00", "application/cloudevents\\+avro"),
        ("application/cloudevents+json", b"{not json", "not valid JSON"),
        ("application/cloudevents+json", b"[1]", "must be a JSON object, got a JSON array"),
        ("application/cloudevents+json", None, "specversion"),
        ("application/cloudevents+json", "data", "not a JSON object"),
        ("application/cloudevents+json", "both", "both 'data' and 'data_base64'"),
        ("application/cloudevents+json", "b64", "'data_base64' is not valid base64"),
        ("application/cloudevents+json", "b64num", "'data_base64' is a JSON number"),
        ("application/cloudevents+json", "listattr", "'subject' is invalid.*list"),
        ("application/cloudevents+json", "xml", "datacontenttype"),
    ],
)
def test_structured_mode_failures_are_precise(
    codec: CloudEventCodec, content_type: str, body: Any, match: str
) -> None:
    bodies = {
        None: _structured(specversion=..., data={"n": 1}),
        "data": _structured(data="n=1"),
        "both": _structured(data={"n": 1}, data_base64="e30="),
        "b64": _structured(data_base64="not base64!"),
        "b64num": _structured(data_base64=5),
        "listattr": _structured(data={"n": 1}, subject=["a"]),
        "xml": _structured(data="<n/>", datacontenttype="application/xml"),
    }
    raw = body if isinstance(body, bytes) else bodies[body]
    with pytest.raises(DecodeError, match=match) as exc:
        codec.decode_structured(raw, content_type)
    assert exc.value.raw == raw  # the whole message, for the dead letter
    assert _reason(exc) == "malformed"


def test_kafka_structured_records_are_read(codec: CloudEventCodec) -> None:
    body = _structured(data={"n": 2})
    headers = [("content-type", b"application/cloudevents+json; charset=utf-8")]
    event, _, original = read_record(codec, headers, body)
    assert event.n == 2  # type: ignore[attr-defined]
    assert original == "order-42"
    assert decode_record(codec, headers, body)[0] == event
    # No ce_ header and no content type at all: structured, as the SDKs read it.
    assert read_record(codec, [("trace", b"x")], body)[0] == event
    with pytest.raises(DecodeError, match="no ce_ headers and no content-type") as exc:
        read_record(codec, None, b"plain text")
    assert exc.value.raw == b"plain text"
    assert _reason(exc) == "malformed"


def test_amqp_structured_messages_are_read(codec: CloudEventCodec) -> None:
    body = _structured(data={"n": 2})
    event, _, original = read_message(codec, {}, "application/cloudevents+json", body)
    assert event.n == 2  # type: ignore[attr-defined]
    assert original == "order-42"
    # Structured mode ignores attribute headers (the body is the event).
    ignored = {"cloudEvents:id": "other", "cloudEvents:odd": 1.5}
    assert read_message(codec, ignored, "application/cloudevents+json", body)[0] == event
    # A content-type header instead of the property; and neither at all.
    header_ct = {"content-type": "application/cloudevents+json"}
    assert read_message(codec, header_ct, None, body)[0] == event
    assert read_message(codec, None, None, body)[0] == event
    with pytest.raises(DecodeError, match="no CloudEvents headers"):
        read_message(codec, {"x-other": "1"}, None, b"")
    with pytest.raises(DecodeError, match="batched") as exc:
        decode_message(codec, {}, "application/cloudevents-batch+json", b"[]")
    assert exc.value.raw == b"[]"


# -- identity of stored messages (dead-letter listings) ------------------------------------
def test_kafka_wire_identity_in_every_mode(codec: CloudEventCodec) -> None:
    event = CodecSimple(n=1)
    headers, value = encode_record(codec, event)
    assert kafka_wire_identity(headers, value) == (str(event.event_id), "codec.test.simple")
    structured = _structured(data={"n": 1})
    ct = [("content-type", b"application/cloudevents+json")]
    assert kafka_wire_identity(ct, structured) == ("order-42", "codec.test.simple")
    assert kafka_wire_identity(None, structured) == ("order-42", "codec.test.simple")
    assert kafka_wire_identity(ct, b"{broken") == (None, None)
    assert kafka_wire_identity([("content-type", b"application/json")], structured) == (
        None,
        None,
    )
    assert kafka_wire_identity(None, None) == (None, None)


def test_amqp_wire_identity_in_every_binding_and_mode(codec: CloudEventCodec) -> None:
    event = CodecSimple(n=1)
    headers, content_type, body = encode_message(codec, event)
    expected = (str(event.event_id), "codec.test.simple")
    assert amqp_wire_identity(headers, content_type, body) == expected
    knative = {"ce-id": "order-42", "ce-type": "codec.test.simple"}
    assert amqp_wire_identity(knative, "application/json", b"{}") == (
        "order-42",
        "codec.test.simple",
    )
    structured = _structured(data={"n": 1})
    assert amqp_wire_identity({}, "application/cloudevents+json", structured) == (
        "order-42",
        "codec.test.simple",
    )
    assert amqp_wire_identity(None, None, structured) == ("order-42", "codec.test.simple")
    assert amqp_wire_identity({"cloudEvents:odd": 1.5}, None, b"") == (None, None)
    assert amqp_wire_identity({}, "application/cloudevents+json", b"[1]") == (None, None)
