"""hexbus and the official CloudEvents Python SDK (2.x bindings), both ways, without brokers.

Why the SDK and not hand-written headers: design.md §5 promises that a service in any
language reads and writes hexbus events with a CloudEvents SDK. The SDK's bindings are
the independent reading of the specs; what they produce is what a foreign producer
sends, and what they accept from hexbus is what a foreign consumer can read. The AMQP
messages go through pamqp (RabbitMQ's wire encoding in aio-pika) so the values arrive
with the types a real consumer gets. The same paths over real brokers:
``tests/integration/test_interop_brokers.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from cloudevents.core.bindings import amqp, kafka, rabbitmq
from cloudevents.core.v1.event import CloudEvent
from pamqp import decode as pamqp_decode
from pamqp import encode as pamqp_encode

from hexbus import InMemoryEventBus, current_context
from hexbus.application.consuming import ACK, ConsumePipeline, RetryPolicy
from hexbus.application.dispatch import DispatchStats
from hexbus.application.handlers import SubscriptionTable
from hexbus.domain.context import DeliveryContext
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.codec import CloudEventCodec, derived_event_id
from hexbus.infrastructure.kafka.marshal import encode_record, read_record
from hexbus.infrastructure.rabbitmq.marshal import encode_message, read_message

SERVICE = "interop-tests"
SOURCE = "/shop/orders"


class InteropOrderPlaced(DomainEvent, event_type="interop.order.placed"):
    order_id: str
    total_cents: int
    lines: list[str]


DATA = {"order_id": "42", "total_cents": 1999, "lines": ["book", "pen"]}


@pytest.fixture
def codec() -> CloudEventCodec:
    return CloudEventCodec(source=SERVICE)


def sdk_event(
    *, typed: bool = False, wire_id: str = "order-42", **extensions: Any
) -> CloudEvent:
    """A foreign producer's event. ``typed``: extensions of every CloudEvents type."""
    attributes: dict[str, Any] = {
        "id": wire_id,
        "type": InteropOrderPlaced.event_type,
        "source": SOURCE,
        "time": datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC),
        "datacontenttype": "application/json",
        "subject": "order/42",
        "tenant": "acme",
        "link": "https://shop.example/orders/42",
    }
    if typed:
        attributes |= {"urgent": True, "priority": 3, "signature": b"\x00\xfe\xff"}
    attributes |= extensions
    return CloudEvent(attributes, dict(DATA))


def over_rabbitmq(headers: dict[str, Any]) -> dict[str, Any]:
    """The headers as a consumer gets them after pamqp encoded and decoded them."""
    wire = {k: bytearray(v) if isinstance(v, bytes) else v for k, v in headers.items()}
    return pamqp_decode.field_table(pamqp_encode.field_table(wire))[1]


def assert_foreign_order(event: DomainEvent, original: str | None) -> None:
    assert isinstance(event, InteropOrderPlaced)
    assert event.model_dump(include=set(DATA)) == DATA
    assert event.event_id == derived_event_id(SOURCE, "order-42")
    assert original == "order-42"
    assert event.source == SOURCE
    assert event.correlation_id == "order-42"
    assert event.occurred_at == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


# -- SDK producer -> hexbus consumer ---------------------------------------------------------
def test_kafka_binary_mode_from_the_sdk(codec: CloudEventCodec) -> None:
    message = kafka.to_binary_event(sdk_event(partitionkey="order-42"))
    event, metadata, original = read_record(codec, list(message.headers.items()), message.value)
    assert_foreign_order(event, original)
    # subject is a CloudEvents attribute with no place on a hexbus event: not metadata.
    assert metadata == {
        "tenant": "acme",
        "link": "https://shop.example/orders/42",
        "partitionkey": "order-42",
    }


def test_kafka_structured_mode_from_the_sdk(codec: CloudEventCodec) -> None:
    message = kafka.to_structured_event(sdk_event(urgent=True, priority=3))
    assert message.headers == {"content-type": b"application/cloudevents+json"}
    event, metadata, original = read_record(codec, list(message.headers.items()), message.value)
    assert_foreign_order(event, original)
    assert metadata == {
        "tenant": "acme",
        "link": "https://shop.example/orders/42",
        "urgent": "true",
        "priority": "3",
    }


def test_amqp_binary_mode_from_the_sdk_with_typed_values(codec: CloudEventCodec) -> None:
    message = amqp.to_binary_event(sdk_event(typed=True))
    # The SDK writes the JMS prefix, native types and time as epoch milliseconds.
    assert message.application_properties["cloudEvents_urgent"] is True
    assert isinstance(message.application_properties["cloudEvents_time"], int)
    headers = over_rabbitmq(message.application_properties)
    event, metadata, original = read_message(
        codec, headers, message.properties["content-type"], message.application_data
    )
    assert_foreign_order(event, original)
    assert metadata == {
        "tenant": "acme",
        "link": "https://shop.example/orders/42",
        "urgent": "true",
        "priority": "3",
        "signature": "AP7/",  # binary → base64, the canonical string
    }


def test_amqp_structured_mode_from_the_sdk(codec: CloudEventCodec) -> None:
    message = amqp.to_structured_event(sdk_event(urgent=False, priority=-1))
    event, metadata, original = read_message(
        codec, {}, message.properties["content-type"], message.application_data
    )
    assert_foreign_order(event, original)
    assert metadata["urgent"] == "false"
    assert metadata["priority"] == "-1"


def test_rabbitmq_binding_ce_headers_from_the_sdk(codec: CloudEventCodec) -> None:
    message = rabbitmq.to_binary_event(sdk_event())
    assert all(name.startswith("ce-") for name in message.headers)
    headers = over_rabbitmq(dict(message.headers))
    event, metadata, original = read_message(codec, headers, message.content_type, message.body)
    assert_foreign_order(event, original)
    assert metadata == {"tenant": "acme", "link": "https://shop.example/orders/42"}


def test_rabbitmq_binding_structured_from_the_sdk(codec: CloudEventCodec) -> None:
    message = rabbitmq.to_structured_event(sdk_event())
    event, _, original = read_message(codec, {}, message.content_type, message.body)
    assert_foreign_order(event, original)


def test_an_sdk_event_with_a_uuid_id_keeps_it(codec: CloudEventCodec) -> None:
    wire_id = "5f0c1d9e-3b7a-4c1e-9a8b-2f6d4e0c7b11"
    message = kafka.to_binary_event(sdk_event(wire_id=wire_id))
    event, _, original = read_record(codec, list(message.headers.items()), message.value)
    assert event.event_id == UUID(wire_id)
    assert original is None  # nothing to remember: the id is the event's own


# -- hexbus producer -> SDK consumer ---------------------------------------------------------
def _hexbus_event() -> InteropOrderPlaced:
    return InteropOrderPlaced(**DATA, correlation_id="conv-1", causation_id="cause-1")


def _assert_sdk_reads(read: CloudEvent, event: InteropOrderPlaced) -> None:
    assert read.get_id() == str(event.event_id)
    assert read.get_type() == "interop.order.placed"
    assert read.get_source() == SERVICE
    assert read.get_time() == event.occurred_at
    assert read.get_datacontenttype() == "application/json"
    assert read.get_data() == DATA
    assert read.get_extension("correlationid") == "conv-1"
    assert read.get_extension("causationid") == "cause-1"
    assert read.get_extension("eventversion") == "1"
    assert read.get_extension("ipaddress") == "10.0.0.1"


def test_the_sdk_reads_hexbus_kafka_records(codec: CloudEventCodec) -> None:
    event = _hexbus_event()
    headers, value = encode_record(codec, event, {"ip_address": "10.0.0.1"})
    read = kafka.from_kafka_event(kafka.KafkaMessage(dict(headers), b"key-1", value))
    _assert_sdk_reads(read, event)
    assert read.get_extension("partitionkey") == "key-1"  # the SDK maps the record key
    assert read.get_extension("hexbusmetakeys") == "ip_address"


def test_the_sdk_reads_hexbus_amqp_messages(codec: CloudEventCodec) -> None:
    event = _hexbus_event()
    headers, content_type, body = encode_message(codec, event, {"ip_address": "10.0.0.1"})
    message = amqp.AMQPMessage({"content-type": content_type}, over_rabbitmq(headers), body)
    _assert_sdk_reads(amqp.from_amqp_event(message), event)


# -- forwarding: SDK -> hexbus handler re-publishes -> SDK ------------------------------------
@pytest.mark.parametrize("binding", ["kafka", "amqp"])
async def test_a_forwarded_foreign_event_keeps_its_id_for_the_sdk(
    codec: CloudEventCodec, binding: str
) -> None:
    table = SubscriptionTable()
    forwarded: list[Any] = []
    contexts: list[DeliveryContext] = []

    async def forward(event: InteropOrderPlaced) -> None:
        contexts.append(current_context())
        if binding == "kafka":
            headers, value = encode_record(codec, event, dict(current_context().metadata))
            forwarded.append(kafka.from_kafka_event(kafka.KafkaMessage(dict(headers), None, value)))
        else:
            headers, content_type, body = encode_message(codec, event)
            message = amqp.AMQPMessage({"content-type": content_type}, headers, body)
            forwarded.append(amqp.from_amqp_event(message))

    table.add(InteropOrderPlaced, forward, "relay")
    pipeline = ConsumePipeline(
        table, policy=RetryPolicy(1, ()), handler_timeout=5.0, stats=DispatchStats(),
        adapter="test",
    )
    if binding == "kafka":
        record = kafka.to_binary_event(sdk_event())
        decoded = read_record(codec, list(record.headers.items()), record.value)
    else:
        message = amqp.to_binary_event(sdk_event())
        decoded = read_message(
            codec,
            over_rabbitmq(message.application_properties),
            message.properties["content-type"],
            message.application_data,
        )
    assert await pipeline.deliver("relay", decoded) is ACK
    (ctx,) = contexts
    assert ctx.cloudevent_id == "order-42"
    assert ctx.wire_id == "order-42"
    assert ctx.dedup_key == (SOURCE, "order-42")
    assert ctx.event is not None
    assert ctx.event.event_id == derived_event_id(SOURCE, "order-42")
    (read,) = forwarded
    assert read.get_id() == "order-42"  # the original id, not the derived UUID
    assert read.get_source() == SOURCE
    assert read.get_data() == DATA


async def test_deliver_without_an_original_id_leaves_the_context_plain() -> None:
    table = SubscriptionTable()
    contexts: list[DeliveryContext] = []

    async def handle(event: InteropOrderPlaced) -> None:
        contexts.append(current_context())

    table.add(InteropOrderPlaced, handle, "sub")
    pipeline = ConsumePipeline(
        table, policy=RetryPolicy(1, ()), handler_timeout=5.0, stats=DispatchStats(),
        adapter="test",
    )
    event = _hexbus_event()
    await pipeline.deliver("sub", (event, {}))
    await pipeline.deliver("sub", (event, {}, None))
    assert [c.cloudevent_id for c in contexts] == [None, None]
    assert [c.wire_id for c in contexts] == [str(event.event_id)] * 2


async def test_memory_adapter_contexts_have_the_identity_helpers() -> None:
    seen: list[DeliveryContext] = []

    async def handle(event: InteropOrderPlaced) -> None:
        seen.append(current_context())

    async with InMemoryEventBus() as bus:
        bus.subscribe(InteropOrderPlaced, handle)
        event = InteropOrderPlaced(**DATA, source="billing")
        await bus.publish(event)
    (ctx,) = seen
    assert ctx.cloudevent_id is None
    assert ctx.wire_id == str(event.event_id)
    assert ctx.dedup_key == ("billing", str(event.event_id))
