"""hexbus and foreign CloudEvents producers / consumers, over a real RabbitMQ and Kafka.

A foreign producer is the official CloudEvents Python SDK (2.x bindings) writing with the
raw client (aiokafka, aio-pika), as a service without hexbus would: binary and
structured content mode, the AMQP binding and the RabbitMQ (``ce-``) binding, and ids
that are not UUIDs. The hexbus consumer must deliver every one of them (the handler
sees the original id and a stable ``event_id``), a handler forwarding the event must
put the original id back on the wire, and what hexbus publishes must be readable by a
raw consumer with the SDK. The same paths without brokers: ``tests/unit/test_interop.py``.

Each test has its own exchange / topic prefix and service name; waits are deadlines.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from bus_makers import KafkaBusMaker, RabbitBusMaker
from cloudevents.core.bindings import amqp, kafka, rabbitmq
from cloudevents.core.v1.event import CloudEvent

from hexbus import DomainEvent, EventBus, current_context
from hexbus.domain.context import DeliveryContext
from hexbus.infrastructure.codec import derived_event_id
from hexbus.testing.waiting import eventually

pytestmark = pytest.mark.integration

SOURCE = "/shop/orders"
TIMEOUT = 30.0


class InteropBrokerOrder(DomainEvent, event_type="interop.brokers.order_placed"):
    order_id: str
    total_cents: int


def sdk_event(wire_id: str, **extensions: Any) -> CloudEvent:
    return CloudEvent(
        {
            "id": wire_id,
            "type": InteropBrokerOrder.event_type,
            "source": SOURCE,
            "time": datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC),
            "datacontenttype": "application/json",
            "tenant": "acme",
            **extensions,
        },
        {"order_id": wire_id, "total_cents": 1999},
    )


class Recorder:
    """A handler that remembers each delivery's event and context and forwards one event."""

    def __init__(self, forward_id: str | None = None) -> None:
        self.seen: list[tuple[InteropBrokerOrder, DeliveryContext]] = []
        self.forward_id = forward_id
        self.bus: EventBus | None = None

    async def __call__(self, event: InteropBrokerOrder) -> None:
        context = current_context()
        self.seen.append((event, context))
        if context.cloudevent_id == self.forward_id and self.bus is not None:
            self.forward_id = None  # once: the forwarded copy comes back to this handler
            await self.bus.publish(event, metadata=dict(context.metadata))

    def by_wire_id(self) -> dict[str, list[tuple[InteropBrokerOrder, DeliveryContext]]]:
        out: dict[str, list[tuple[InteropBrokerOrder, DeliveryContext]]] = {}
        for event, context in self.seen:
            assert context.wire_id is not None
            out.setdefault(context.wire_id, []).append((event, context))
        return out


def assert_delivered_as_foreign(
    recorder: Recorder, wire_id: str, copies: int = 1
) -> None:
    deliveries = recorder.by_wire_id()[wire_id]
    assert len(deliveries) == copies, deliveries
    for event, context in deliveries:
        assert event.event_id == derived_event_id(SOURCE, wire_id)
        assert event.order_id == wire_id
        assert event.total_cents == 1999
        assert event.source == SOURCE
        assert event.occurred_at == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
        assert context.cloudevent_id == wire_id
        assert context.dedup_key == (SOURCE, wire_id)
        assert context.metadata["tenant"] == "acme"


# -- Kafka ---------------------------------------------------------------------------------
async def _produce(bootstrap: str, topic: str, messages: list[kafka.KafkaMessage]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await asyncio.wait_for(producer.start(), 15)
    try:
        for message in messages:
            key = message.key.encode() if isinstance(message.key, str) else message.key
            await asyncio.wait_for(
                producer.send_and_wait(
                    topic, message.value, key=key, headers=list(message.headers.items())
                ),
                15,
            )
    finally:
        await producer.stop()


async def _read_topic(bootstrap: str, topic: str, count: int) -> list[Any]:
    """The first ``count`` records of partition 0 of ``topic`` (a raw, group-less reader)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    records: list[Any] = []
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)

        async def fetched() -> bool:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
            return len(records) >= count

        await eventually(fetched, timeout=TIMEOUT, interval=0.05, message=lambda: f"{records}")
    finally:
        await consumer.stop()
    return records


def _sdk_read_record(record: Any) -> CloudEvent:
    message = kafka.KafkaMessage(dict(record.headers), record.key, record.value)
    return kafka.from_kafka_event(message)


@pytest.mark.timeout(120)
async def test_kafka_foreign_binary_and_structured_events_and_forwarding(
    kafka_bus_maker: KafkaBusMaker, kafka_bootstrap_servers: str
) -> None:
    bus = kafka_bus_maker(partitions=1)
    recorder = Recorder(forward_id="kafka-binary-1")
    recorder.bus = bus
    bus.subscribe(InteropBrokerOrder, recorder, name="interop")
    topic = bus.topic_for(InteropBrokerOrder)
    async with bus:
        await bus.wait_ready(TIMEOUT)
        await _produce(
            kafka_bootstrap_servers,
            topic,
            [
                kafka.to_binary_event(sdk_event("kafka-binary-1", partitionkey="order-1")),
                kafka.to_structured_event(sdk_event("kafka-structured-1", urgent=True)),
            ],
        )

        def delivered() -> bool:
            found = recorder.by_wire_id()
            assert len(found.get("kafka-binary-1", [])) == 2  # the original, the forward
            assert len(found.get("kafka-structured-1", [])) == 1
            return True

        await eventually(delivered, timeout=TIMEOUT, message=lambda: f"{recorder.seen}")
        mine = InteropBrokerOrder(order_id="hexbus-1", total_cents=5)
        await bus.publish(mine, key="order-1", metadata={"ip_address": "10.0.0.1"})
        records = await _read_topic(kafka_bootstrap_servers, topic, 4)
    assert_delivered_as_foreign(recorder, "kafka-binary-1", copies=2)
    assert_delivered_as_foreign(recorder, "kafka-structured-1")
    structured = recorder.by_wire_id()["kafka-structured-1"][0][1]
    assert structured.metadata["urgent"] == "true"
    assert bus.stats.dead_lettered == 0

    # The raw topic: the foreign binary record first; the foreign structured record and
    # the handler's forward in either order (the forward races the producer's second
    # record); the hexbus publish last (it was sent after both were handled).
    read = [_sdk_read_record(r) for r in records]
    ids = [e.get_id() for e in read]
    assert ids[0] == "kafka-binary-1"
    assert sorted(ids[1:3]) == ["kafka-binary-1", "kafka-structured-1"]  # the forward
    assert ids[3] == str(mine.event_id)  # keeps the original id, not the derived UUID
    forwarded = read[1 + ids[1:3].index("kafka-binary-1")]
    assert forwarded.get_source() == SOURCE
    assert forwarded.get_extension("eventversion") == "1"  # written by hexbus
    assert forwarded.get_extension("tenant") == "acme"
    assert forwarded.get_data() == {"order_id": "kafka-binary-1", "total_cents": 1999}
    published = read[3]
    assert published.get_type() == InteropBrokerOrder.event_type
    assert published.get_source() == kafka_bus_maker.service
    assert published.get_time() == mine.occurred_at
    assert published.get_data() == {"order_id": "hexbus-1", "total_cents": 5}
    assert published.get_extension("partitionkey") == "order-1"  # the record key
    assert published.get_extension("ipaddress") == "10.0.0.1"


# -- RabbitMQ ------------------------------------------------------------------------------
def _amqp_message(message: amqp.AMQPMessage) -> aio_pika.Message:
    """The SDK's AMQP binding over AMQP 0-9-1: application properties become headers."""
    headers = {
        k: bytearray(v) if isinstance(v, bytes) else v
        for k, v in message.application_properties.items()
    }
    return aio_pika.Message(
        message.application_data,
        headers=headers,
        content_type=message.properties.get("content-type"),
    )


def _rabbitmq_message(message: rabbitmq.RabbitMQMessage) -> aio_pika.Message:
    return aio_pika.Message(
        message.body, headers=dict(message.headers), content_type=message.content_type
    )


@pytest.mark.timeout(120)
async def test_rabbitmq_foreign_bindings_and_modes_and_forwarding(
    rabbit_bus_maker: RabbitBusMaker,
) -> None:
    bus = rabbit_bus_maker()
    recorder = Recorder(forward_id="amqp-binary-1")
    recorder.bus = bus
    bus.subscribe(InteropBrokerOrder, recorder, name="interop")
    routing_key = InteropBrokerOrder.event_type
    foreign = {
        "amqp-binary-1": _amqp_message(
            amqp.to_binary_event(
                sdk_event("amqp-binary-1", urgent=True, priority=3, signature=b"\x00\xff")
            )
        ),
        "amqp-structured-1": _amqp_message(
            amqp.to_structured_event(sdk_event("amqp-structured-1"))
        ),
        "ce-binary-1": _rabbitmq_message(rabbitmq.to_binary_event(sdk_event("ce-binary-1"))),
        "ce-structured-1": _rabbitmq_message(
            rabbitmq.to_structured_event(sdk_event("ce-structured-1"))
        ),
    }
    connection = await aio_pika.connect(rabbit_bus_maker.url)
    async with connection, bus:
        await bus.wait_ready(TIMEOUT)
        channel = await connection.channel(publisher_confirms=True)
        # A foreign consumer's own queue on hexbus's exchange.
        tap = await channel.declare_queue(exclusive=True, auto_delete=True)
        await tap.bind(rabbit_bus_maker.exchange, routing_key=routing_key)
        exchange = await channel.get_exchange(rabbit_bus_maker.exchange)
        for message in foreign.values():
            await exchange.publish(message, routing_key=routing_key)

        def delivered() -> bool:
            found = recorder.by_wire_id()
            assert len(found.get("amqp-binary-1", [])) == 2  # the original, the forward
            for wire_id in ("amqp-structured-1", "ce-binary-1", "ce-structured-1"):
                assert len(found.get(wire_id, [])) == 1, wire_id
            return True

        await eventually(delivered, timeout=TIMEOUT, message=lambda: f"{recorder.seen}")
        mine = InteropBrokerOrder(order_id="hexbus-1", total_cents=5)
        await bus.publish(mine, metadata={"ip_address": "10.0.0.1"})

        tapped: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def received() -> bool:
            message = await tap.get(no_ack=True, fail=False)
            if message is not None:
                tapped.append(message)
            return len(tapped) >= 6

        await eventually(received, timeout=TIMEOUT, interval=0.05, message=lambda: f"{tapped}")
    assert_delivered_as_foreign(recorder, "amqp-binary-1", copies=2)
    for wire_id in ("amqp-structured-1", "ce-binary-1", "ce-structured-1"):
        assert_delivered_as_foreign(recorder, wire_id)
    typed = recorder.by_wire_id()["amqp-binary-1"][0][1].metadata
    assert (typed["urgent"], typed["priority"], typed["signature"]) == ("true", "3", "AP8=")
    assert bus.stats.dead_lettered == 0

    # What hexbus wrote (the forward and its own event), read with the SDK's AMQP binding.
    written = [m for m in tapped if m.app_id == rabbit_bus_maker.service]
    assert len(written) == 2
    read = [
        amqp.from_amqp_event(
            amqp.AMQPMessage({"content-type": m.content_type}, dict(m.headers or {}), m.body)
        )
        for m in written
    ]
    forwarded, published = read
    assert forwarded.get_id() == "amqp-binary-1"  # the original id, not the derived UUID
    assert forwarded.get_source() == SOURCE
    assert forwarded.get_data() == {"order_id": "amqp-binary-1", "total_cents": 1999}
    assert forwarded.get_extension("signature") == "AP8="
    assert published.get_id() == str(mine.event_id)
    assert published.get_type() == InteropBrokerOrder.event_type
    assert published.get_source() == rabbit_bus_maker.service
    assert published.get_time() == mine.occurred_at
    assert published.get_data() == {"order_id": "hexbus-1", "total_cents": 5}
    assert published.get_extension("ipaddress") == "10.0.0.1"
