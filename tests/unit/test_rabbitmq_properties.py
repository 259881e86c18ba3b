"""The fast encoder of an event's AMQP properties writes exactly pamqp's bytes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from aiormq import spec
from hypothesis import given
from hypothesis import strategies as st

from hexbus.application.publishing import Admitted
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.rabbitmq.bus import RabbitMQEventBus
from hexbus.infrastructure.rabbitmq.config import RabbitMQConfig
from hexbus.infrastructure.rabbitmq.marshal import EventProperties

_text = st.text(max_size=40)
_short = st.text(min_size=0, max_size=60)
_times = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5, minutes=-30))]),
    ),
)
_values = st.one_of(_text, st.integers(0, 10), st.booleans(), st.none())


def _pair(**fields: Any) -> tuple[bytes, bytes]:
    return EventProperties(**fields).marshal(), spec.Basic.Properties(**fields).marshal()


@given(
    content_type=st.one_of(st.none(), _short),
    headers=st.one_of(st.none(), st.dictionaries(_short, _values, max_size=8)),
    delivery_mode=st.sampled_from([None, 1, 2]),
    priority=st.one_of(st.none(), st.integers(0, 9)),
    message_id=st.one_of(st.none(), _short),
    timestamp=_times,
    message_type=st.one_of(st.none(), _short),
    app_id=st.one_of(st.none(), _short),
    correlation_id=st.one_of(st.none(), _short),
)
def test_the_bytes_are_pamqps(**fields: Any) -> None:
    """Any mix of properties and header values (strings on the fast path, others and
    unusual properties through pamqp's own encoder) gives pamqp's bytes."""
    fast, reference = _pair(**fields)
    assert fast == reference


def test_an_events_properties_are_pamqps_and_decode_back() -> None:
    """The publisher's properties of a real event: pamqp's bytes, and pamqp reads them
    back to the same values."""

    class Placed(DomainEvent, event_type="test.properties.placed"):
        order: str

    publisher = RabbitMQEventBus(RabbitMQConfig(service_name="svc")).publisher
    event = Placed(order="ä-1" * 30)
    wire = publisher.wire(Admitted(event, {"tenant": "t-1"}, "order-1"))
    props = wire.properties
    fields = {name: getattr(props, name) for name in spec.Basic.Properties.__slots__}
    assert props.marshal() == spec.Basic.Properties(**fields).marshal()
    back = spec.Basic.Properties()
    data = props.marshal()
    back.unmarshal(int.from_bytes(data[:2], "big"), data[2:])
    assert back.headers == props.headers
    assert back.message_id == str(event.event_id)
    assert back.delivery_mode == 2


def test_too_long_values_fail_as_with_pamqp() -> None:
    """A short string over 255 bytes is pamqp's error, not a silently cut header."""
    long = "x" * 300
    for fast, reference in (
        (EventProperties(message_id=long), spec.Basic.Properties(message_id=long)),
        (
            EventProperties(headers={"k" * 200: "v"}),
            spec.Basic.Properties(headers={"k" * 200: "v"}),
        ),
    ):
        try:
            expected: bytes | type[BaseException] = reference.marshal()
        except Exception as exc:  # the error type is what is compared
            expected = type(exc)
        try:
            got: bytes | type[BaseException] = fast.marshal()
        except Exception as exc:
            got = type(exc)
        assert got == expected
