"""The domain event model: envelope defaults, immutability, the registry.

Why these checks: the envelope (id, time, correlation) is what every transport, the
audit log and the outbox rely on, and the registry is what turns a wire name back into
a class; a silent change in either corrupts data far from where it happened.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from hexbus.domain._uuid7 import uuid7
from hexbus.domain.context import DeliveryContext, current_context, delivery_context
from hexbus.domain.errors import (
    DuplicateEventTypeError,
    EventSchemaError,
    HexbusError,
    UnknownEventTypeError,
)
from hexbus.domain.events import DomainEvent, event_from_dict, event_registry


class Line(BaseModel):
    sku: str
    qty: int


class EventsTestOrderPlaced(DomainEvent, event_type="events.test.order_placed", version=3):
    order_id: UUID
    customer: str
    total: float
    paid: bool
    placed_at: datetime
    lines: list[Line]
    note: str | None = None


class EventsTestPing(DomainEvent, event_type="events.test.ping"):
    n: int = 0


class EventsTestHTTPRequestReceived(DomainEvent):
    """No event_type keyword: the wire name is derived from the class name."""


class EventsTestAbstractBase(DomainEvent, abstract=True):
    tenant: str


class EventsTestConcrete(EventsTestAbstractBase, event_type="events.test.concrete"):
    pass


_aware = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=9)), timezone(timedelta(hours=-3))]),
)
_orders = st.builds(
    EventsTestOrderPlaced,
    event_id=st.uuids(),
    occurred_at=_aware,
    correlation_id=st.text(max_size=20),
    causation_id=st.none() | st.text(max_size=20),
    source=st.text(max_size=20),
    order_id=st.uuids(),
    customer=st.text(),
    total=st.floats(allow_nan=False, allow_infinity=False),
    paid=st.booleans(),
    placed_at=_aware | st.datetimes(),
    lines=st.lists(st.builds(Line, sku=st.text(max_size=10), qty=st.integers()), max_size=4),
    note=st.none() | st.text(),
)


# -- immutability and strictness ----------------------------------------------------------
def test_events_are_frozen() -> None:
    event = EventsTestPing(n=1)
    with pytest.raises(ValidationError):
        event.n = 2
    with pytest.raises(ValidationError):
        event.event_id = uuid7()


def test_extra_fields_are_forbidden() -> None:
    with pytest.raises(ValidationError, match="extra"):
        EventsTestPing(n=1, unexpected=True)  # type: ignore[call-arg]


def test_class_attributes_hold_wire_name_and_version() -> None:
    assert EventsTestOrderPlaced.event_type == "events.test.order_placed"
    assert EventsTestOrderPlaced.event_version == 3
    assert EventsTestPing.event_version == 1
    assert "event_type" not in EventsTestPing.model_fields
    assert "event_version" not in EventsTestPing.model_fields


# -- event_id -------------------------------------------------------------------------------
def test_event_id_is_uuid7() -> None:
    event = EventsTestPing()
    assert isinstance(event.event_id, UUID)
    assert event.event_id.version == 7
    assert event.event_id.variant == "specified in RFC 4122"


def test_event_id_embeds_the_creation_time() -> None:
    before = datetime.now(UTC)
    event = EventsTestPing()
    ms = event.event_id.int >> 80
    embedded = datetime.fromtimestamp(ms / 1000, UTC)
    assert (
        before - timedelta(milliseconds=2)
        <= embedded
        <= datetime.now(UTC) + timedelta(milliseconds=2)
    )


def test_event_ids_strictly_increase() -> None:
    ids = [EventsTestPing().event_id for _ in range(5_000)]
    raw = [uuid7() for _ in range(20_000)]  # more than one millisecond's counter range
    for seq in (ids, raw):
        assert all(a < b for a, b in pairwise(seq))
        assert all(u.version == 7 for u in seq)
    assert len(set(raw)) == len(raw)


def test_event_id_can_be_overridden() -> None:
    fixed = UUID("01890000-0000-7000-8000-000000000000")
    assert EventsTestPing(event_id=fixed).event_id == fixed


# -- occurred_at ------------------------------------------------------------------------------
def test_occurred_at_is_aware_utc_now() -> None:
    before = datetime.now(UTC)
    event = EventsTestPing()
    assert event.occurred_at.tzinfo is UTC
    assert before <= event.occurred_at <= datetime.now(UTC)


@given(when=_aware)
def test_non_utc_occurred_at_is_converted_to_utc(when: datetime) -> None:
    event = EventsTestPing(occurred_at=when)
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.tzinfo is UTC
    assert event.occurred_at == when  # the same instant


def test_naive_occurred_at_is_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        EventsTestPing(occurred_at=datetime(2024, 1, 1))


# -- to_dict / event_from_dict -----------------------------------------------------------------
def test_to_dict_is_json_ready_with_iso_times() -> None:
    event = EventsTestOrderPlaced(
        order_id=uuid7(),
        customer="ada",
        total=9.5,
        paid=True,
        placed_at=datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC),
        lines=[Line(sku="a", qty=2)],
    )
    data = event.to_dict()
    assert data["event_id"] == str(event.event_id)
    assert data["order_id"] == str(event.order_id)
    assert datetime.fromisoformat(data["occurred_at"]) == event.occurred_at
    assert data["placed_at"] in ("2024-02-03T04:05:06Z", "2024-02-03T04:05:06+00:00")
    assert data["lines"] == [{"sku": "a", "qty": 2}]
    assert data["causation_id"] is None
    assert data["source"] == ""


@settings(max_examples=200)
@given(event=_orders)
def test_event_from_dict_inverts_to_dict(event: EventsTestOrderPlaced) -> None:
    data = event.to_dict()
    assert isinstance(data["occurred_at"], str)
    back = event_from_dict("events.test.order_placed", data)
    assert type(back) is EventsTestOrderPlaced
    assert back == event


def test_event_from_dict_fills_the_envelope() -> None:
    event = event_from_dict("events.test.ping", {"n": 4})
    assert isinstance(event, EventsTestPing)
    assert event.n == 4
    assert event.event_id.version == 7
    assert event.correlation_id == str(event.event_id)


def test_unknown_event_type() -> None:
    with pytest.raises(UnknownEventTypeError, match=r"events\.test\.nope"):
        event_from_dict("events.test.nope", {})
    with pytest.raises(UnknownEventTypeError):
        event_registry.get("events.test.nope")
    assert "events.test.nope" not in event_registry


@pytest.mark.parametrize(
    "data", [{"n": "many"}, {"n": 1, "extra": 2}, {"n": 1, "occurred_at": "2024-01-01T00:00:00"}]
)
def test_invalid_data_raises_event_schema_error(data: dict[str, Any]) -> None:
    with pytest.raises(EventSchemaError) as exc:
        event_from_dict("events.test.ping", data)
    assert exc.value.errors
    assert isinstance(exc.value, ValueError)
    assert isinstance(exc.value, HexbusError)
    assert "events.test.ping" in str(exc.value)


# -- the registry ---------------------------------------------------------------------------------
def test_registry_maps_names_to_classes() -> None:
    assert event_registry.get("events.test.order_placed") is EventsTestOrderPlaced
    assert "events.test.ping" in event_registry
    assert "events.test.ping" in event_registry.names()
    assert EventsTestPing in list(event_registry)


def test_duplicate_event_type_fails_at_class_creation() -> None:
    with pytest.raises(DuplicateEventTypeError, match=r"events\.test\.ping"):

        class EventsTestPingAgain(DomainEvent, event_type="events.test.ping"):
            pass

    assert event_registry.get("events.test.ping") is EventsTestPing


def test_derived_event_type_is_snake_case() -> None:
    assert EventsTestHTTPRequestReceived.event_type == "events_test_http_request_received"
    assert event_registry.get("events_test_http_request_received") is EventsTestHTTPRequestReceived


def test_abstract_base_is_not_registered() -> None:
    assert "events_test_abstract_base" not in event_registry
    assert event_registry.get("events.test.concrete") is EventsTestConcrete
    assert EventsTestConcrete(tenant="t").tenant == "t"


@pytest.mark.parametrize("name", ["", "has space", "trailing.", ".leading", "a..b", "ü.x", "a/b"])
def test_invalid_event_type_keyword(name: str) -> None:
    with pytest.raises(EventSchemaError, match="event_type"):

        class EventsTestBadName(DomainEvent, event_type=name):
            pass

    assert name not in event_registry


def test_event_type_with_trailing_newline_is_rejected() -> None:
    try:
        with pytest.raises(EventSchemaError):

            class EventsTestNewline(DomainEvent, event_type="events.test.newline\n"):
                pass

    finally:
        event_registry.unregister("events.test.newline\n")


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.0])
def test_invalid_version_keyword(version: Any) -> None:
    with pytest.raises(EventSchemaError, match="version"):

        class EventsTestBadVersion(
            DomainEvent, event_type="events.test.bad_version", version=version
        ):
            pass

    assert "events.test.bad_version" not in event_registry


# -- correlation and causation ---------------------------------------------------------------------
def test_correlation_defaults_to_own_id_outside_a_handler() -> None:
    assert current_context().event is None
    event = EventsTestPing()
    assert event.correlation_id == str(event.event_id)
    assert event.causation_id is None


def test_correlation_follows_an_explicit_event_id() -> None:
    fixed = uuid7()
    assert EventsTestPing(event_id=fixed).correlation_id == str(fixed)


def test_new_event_inside_a_handler_continues_the_conversation() -> None:
    parent = EventsTestPing(correlation_id="conversation-1")
    token = delivery_context.set(DeliveryContext(event=parent))
    try:
        child = EventsTestPing(n=2)
        explicit = EventsTestPing(correlation_id="mine", causation_id="cause")
    finally:
        delivery_context.reset(token)
    assert child.causation_id == str(parent.event_id)
    assert child.correlation_id == "conversation-1"
    assert (explicit.correlation_id, explicit.causation_id) == ("mine", "cause")
    after = EventsTestPing()
    assert after.causation_id is None
    assert after.correlation_id == str(after.event_id)


@given(correlation=st.text(max_size=20))
def test_causation_chain_keeps_the_root_correlation(correlation: str) -> None:
    root = EventsTestPing(correlation_id=correlation)
    current: DomainEvent = root
    for _ in range(3):
        token = delivery_context.set(DeliveryContext(event=current))
        try:
            nxt = EventsTestPing()
        finally:
            delivery_context.reset(token)
        assert nxt.correlation_id == correlation
        assert nxt.causation_id == str(current.event_id)
        current = nxt


class EventsTestAliased(DomainEvent, event_type="events.test.aliased"):
    user_name: str = Field(alias="userName")


def test_event_from_dict_inverts_to_dict_with_aliases() -> None:
    event = EventsTestAliased(userName="ada")
    assert event_from_dict("events.test.aliased", event.to_dict()) == event
