"""``send_encoded`` (what the outbox relay sends with) on the real brokers.

An event encoded earlier (``CloudEventCodec.encode`` → ``EncodedEvent``) must reach a
normal subscriber exactly as if it had been published: the same event (id, envelope,
fields), metadata and key; and on the wire the same record / message ``publish_many``
writes for that event (headers, body, key, properties), so nothing downstream can tell
the two apart.
"""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
from bus_makers import KafkaBusMaker, RabbitBusMaker, read_topic

from hexbus import DomainEvent
from hexbus.domain.context import DeliveryContext, current_context
from hexbus.domain.errors import NotStartedError
from hexbus.infrastructure.codec import EncodedEvent
from hexbus.testing.waiting import eventually

pytestmark = pytest.mark.integration


class OutboxShipped(DomainEvent, event_type="sendencoded.shipped"):
    order: str
    items: int


def _events() -> tuple[list[OutboxShipped], list[dict[str, str]], list[str | None]]:
    first = OutboxShipped(order="o-1", items=2)
    reply = OutboxShipped(
        order="o-1",
        items=3,
        causation_id=str(first.event_id),
        correlation_id=first.correlation_id,
    )
    plain = OutboxShipped(order="o-2", items=1)
    return (
        [first, reply, plain],
        [{"trace_id": "t-1", "User Agent": "x/1"}, {}, {}],
        ["order-1", "order-1", None],
    )


def _encode(
    bus: Any, events: list[OutboxShipped], metas: list[dict[str, str]], keys: list[str | None]
) -> list[EncodedEvent]:
    out = []
    for event, meta, key in zip(events, metas, keys, strict=True):
        attributes, data = bus.codec.encode(event, meta)
        out.append(EncodedEvent(attributes, data, key))
    return out


def _collect(seen: list[tuple[DomainEvent, DeliveryContext]]) -> Any:
    async def handler(event: OutboxShipped) -> None:
        seen.append((event, current_context()))

    return handler


def _check_deliveries(
    seen: list[tuple[DomainEvent, DeliveryContext]],
    events: list[OutboxShipped],
    metas: list[dict[str, str]],
    keys: list[str | None],
) -> None:
    by_id = {event.event_id: (event, ctx) for event, ctx in seen}
    assert len(seen) == len(events), seen
    for event, meta, key in zip(events, metas, keys, strict=True):
        got, ctx = by_id[event.event_id]
        assert got == event
        assert dict(ctx.metadata) == meta
        assert ctx.explicit_key == key
        assert ctx.key == (key if key is not None else str(event.event_id))
        assert ctx.wire_id == str(event.event_id)


# -- RabbitMQ --------------------------------------------------------------------------
async def test_rabbitmq_send_encoded_is_received_like_a_publish(
    rabbit_bus_maker: RabbitBusMaker,
) -> None:
    seen: list[tuple[DomainEvent, DeliveryContext]] = []
    consumer = rabbit_bus_maker()
    consumer.subscribe(OutboxShipped, _collect(seen), name="shipments")
    sender = rabbit_bus_maker()
    events, metas, keys = _events()
    with pytest.raises(NotStartedError):
        await sender.send_encoded(_encode(sender, events, metas, keys))
    async with consumer, sender:
        await consumer.wait_ready()
        await sender.send_encoded(_encode(sender, events, metas, keys))
        await eventually(lambda: len(seen) >= len(events), timeout=20)
        assert sender.stats.published == len(events)
    _check_deliveries(seen, events, metas, keys)


async def test_rabbitmq_send_encoded_writes_what_publish_many_writes(
    rabbit_bus_maker: RabbitBusMaker,
) -> None:
    """Same headers, body and message properties for the same event, either way."""
    bus = rabbit_bus_maker()
    events, metas, keys = _events()
    connection = await aio_pika.connect(rabbit_bus_maker.url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            rabbit_bus_maker.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key=OutboxShipped.event_type)
        async with bus:
            await bus.send_encoded(_encode(bus, events, metas, keys))
            for event, meta, key in zip(events, metas, keys, strict=True):
                await bus.publish(event, metadata=meta or None, key=key)
        received: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def take() -> bool:
            message = await queue.get(fail=False, no_ack=True)
            if message is not None:
                received.append(message)
            return len(received) >= 2 * len(events)

        await eventually(take, timeout=20)
    finally:
        await connection.close()
    encoded, published = received[: len(events)], received[len(events) :]

    def wire(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
        return {
            "body": message.body,
            "headers": dict(message.headers or {}),
            "content_type": message.content_type,
            "message_id": message.message_id,
            "timestamp": message.timestamp,
            "type": message.type,
            "app_id": message.app_id,
            "delivery_mode": message.delivery_mode,
            "routing_key": message.routing_key,
        }

    for a, b in zip(encoded, published, strict=True):
        assert wire(a) == wire(b)
    assert "x-hexbus-key" not in (encoded[2].headers or {})  # no key: no key header
    assert (encoded[0].headers or {})["x-hexbus-key"] == "order-1"


# -- Kafka -----------------------------------------------------------------------------
async def test_kafka_send_encoded_is_received_like_a_publish(
    kafka_bus_maker: KafkaBusMaker,
) -> None:
    seen: list[tuple[DomainEvent, DeliveryContext]] = []
    consumer = kafka_bus_maker()
    consumer.subscribe(OutboxShipped, _collect(seen), name="shipments")
    sender = kafka_bus_maker()
    events, metas, keys = _events()
    async with consumer, sender:
        await consumer.wait_ready(60)
        await sender.send_encoded(_encode(sender, events, metas, keys))
        await eventually(lambda: len(seen) >= len(events), timeout=30)
        assert sender.stats.published == len(events)
    _check_deliveries(seen, events, metas, keys)
    # Per-key order: the two "order-1" events arrive in the order sent.
    order_1 = [e.event_id for e, ctx in seen if ctx.explicit_key == "order-1"]
    assert order_1 == [events[0].event_id, events[1].event_id]


async def test_kafka_send_encoded_writes_what_publish_many_writes(
    kafka_bus_maker: KafkaBusMaker,
) -> None:
    """Same topic, key, value and headers for the same event, either way."""
    bus = kafka_bus_maker()
    events, metas, keys = _events()
    async with bus:
        await bus.send_encoded(_encode(bus, events, metas, keys))
        for event, meta, key in zip(events, metas, keys, strict=True):
            await bus.publish(event, metadata=meta or None, key=key)
        topic = bus.topic_for(OutboxShipped)
    records = await read_topic(
        kafka_bus_maker.bootstrap_servers, topic, bus.config.partitions, 2 * len(events)
    )
    by_id: dict[bytes, list[Any]] = {}
    for record in records:
        by_id.setdefault(dict(record.headers)["ce_id"], []).append(record)
    assert len(by_id) == len(events)
    for event, key in zip(events, keys, strict=True):
        encoded, published = by_id[str(event.event_id).encode()]
        assert encoded.key == published.key == (None if key is None else key.encode())
        assert encoded.value == published.value
        assert list(encoded.headers) == list(published.headers)
    # The two "order-1" events share a partition (per-key order).
    assert len({r.partition for r in records if r.key == b"order-1"}) == 1
