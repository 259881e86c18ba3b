"""Tracing and metrics across real brokers: one bus publishes, another consumes.

Each side has its own SDK tracer provider (in-memory exporter), as two services would;
the consumer's ``process`` span must carry the producer's trace through the CloudEvents
``traceparent`` extension on the wire. One case publishes from a separate process (its
bus built from ``HEXBUS_*`` settings with ``HEXBUS_OTEL=auto`` and an SDK configured).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bus_makers import KafkaBusMaker, RabbitBusMaker
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from hexbus import DomainEvent, EventBus
from hexbus.application.observing import TRACEPARENT
from hexbus.domain.context import current_context
from hexbus.domain.ports import Readiness
from hexbus.testing import BusFactory, Capabilities, EventBusContract
from hexbus.testing.telemetry import TelemetryCapture as Otel
from hexbus.testing.waiting import eventually

pytestmark = pytest.mark.integration

EVENT_TYPE = "telemetry.shipment_booked"


class ShipmentBooked(DomainEvent, event_type=EVENT_TYPE):
    shipment: int





@pytest.fixture
def producer_otel() -> Iterator[Otel]:
    otel = Otel()
    yield otel
    otel.close()


@pytest.fixture
def consumer_otel() -> Iterator[Otel]:
    otel = Otel()
    yield otel
    otel.close()


@pytest.fixture(params=["rabbitmq", "kafka"])
def maker(request: pytest.FixtureRequest) -> RabbitBusMaker | KafkaBusMaker:
    name = "rabbit_bus_maker" if request.param == "rabbitmq" else "kafka_bus_maker"
    made: RabbitBusMaker | KafkaBusMaker = request.getfixturevalue(name)
    return made


async def _started(*buses: Any) -> None:
    for bus in buses:
        await bus.start()
    for bus in buses:
        if isinstance(bus, Readiness):
            await bus.wait_ready(60)


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_process_span_continues_the_producers_trace(
    maker: Any, producer_otel: Otel, consumer_otel: Otel
) -> None:
    producer, consumer = maker(), maker()
    producer_otel.instrument(producer)
    consumer_otel.instrument(consumer)
    handled: list[dict[str, str]] = []

    async def on_booked(event: ShipmentBooked) -> None:
        handled.append(dict(current_context().metadata))

    consumer.subscribe(ShipmentBooked, on_booked, name="warehouse")
    await _started(consumer, producer)
    event = ShipmentBooked(shipment=42)
    await producer.publish(event, key="shipment-42")
    await eventually(lambda: len(handled) == 1, timeout=60, message="event handled")

    (send,) = producer_otel.spans("send ")
    await eventually(lambda: len(consumer_otel.spans("process ")) == 1, timeout=10)
    (process,) = consumer_otel.spans("process ")
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert send.context is not None and process.context is not None
    # the consumer continues the producer's trace: linked to it, and its child
    assert [(link.context.trace_id, link.context.span_id) for link in process.links] == [
        (send.context.trace_id, send.context.span_id)
    ]
    assert process.context.trace_id == send.context.trace_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert handled[0][TRACEPARENT].split("-")[1] == format(send.context.trace_id, "032x")

    s, p = _attrs(send), _attrs(process)
    system = "rabbitmq" if isinstance(maker, RabbitBusMaker) else "kafka"
    assert s["messaging.system"] == p["messaging.system"] == system
    assert s["messaging.operation.type"] == "send"
    assert p["messaging.operation.type"] == "process"
    assert s["messaging.message.id"] == p["messaging.message.id"] == str(event.event_id)
    assert s["messaging.message.conversation_id"] == event.correlation_id
    assert p["messaging.message.conversation_id"] == event.correlation_id
    assert p["messaging.consumer.group.name"] == "warehouse"
    assert p["hexbus.delivery.attempt"] == 1
    if system == "kafka":
        topic = producer.topic_for(ShipmentBooked)
        assert send.name == f"send {topic}" and process.name == f"process {topic}"
        assert s["messaging.destination.name"] == p["messaging.destination.name"] == topic
        assert s["messaging.kafka.message.key"] == p["messaging.kafka.message.key"] == (
            "shipment-42"
        )
        assert p["messaging.destination.partition.id"].isdigit()
        assert isinstance(p["messaging.kafka.offset"], int) and p["messaging.kafka.offset"] >= 0
    else:
        exchange = maker.exchange
        assert send.name == f"send {exchange}" and process.name == f"process {exchange}"
        assert s["messaging.destination.name"] == p["messaging.destination.name"] == exchange
        assert s["messaging.rabbitmq.destination.routing_key"] == EVENT_TYPE
        assert p["messaging.rabbitmq.destination.routing_key"] == EVENT_TYPE
        assert p["messaging.destination.subscription.name"] == consumer.queue_name("warehouse")
    assert producer_otel.total("messaging.client.sent.messages") == 1
    assert producer_otel.total("messaging.client.operation.duration") == 1
    assert consumer_otel.total("messaging.client.consumed.messages") == 1
    assert consumer_otel.total("messaging.process.duration") == 1
    (point,) = consumer_otel.points("messaging.client.consumed.messages")
    assert point.attributes["messaging.consumer.group.name"] == "warehouse"
    assert point.attributes["messaging.destination.name"] == p["messaging.destination.name"]
    assert "messaging.kafka.offset" not in point.attributes  # one series per message: never


async def test_a_failing_handlers_spans_record_retries_and_the_dead_letter(
    maker: Any, producer_otel: Otel, consumer_otel: Otel
) -> None:
    producer, consumer = maker(), maker(max_attempts=3)
    producer_otel.instrument(producer)
    consumer_otel.instrument(consumer)

    async def broken(event: ShipmentBooked) -> None:
        raise RuntimeError(f"carrier refused shipment {event.shipment}")

    consumer.subscribe(ShipmentBooked, broken, name="carrier")
    await _started(consumer, producer)
    await producer.publish(ShipmentBooked(shipment=7))
    await eventually(
        lambda: consumer.stats.dead_lettered == 1, timeout=60, message="dead-lettered"
    )
    (send,) = producer_otel.spans("send ")
    spans = consumer_otel.spans("process ")
    assert [_attrs(s)["hexbus.delivery.attempt"] for s in spans] == [1, 2, 3]
    assert send.context is not None
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        assert _attrs(span)["error.type"] == "RuntimeError"
        assert [link.context.span_id for link in span.links] == [send.context.span_id]
    assert [_attrs(s)["hexbus.outcome"] for s in spans] == ["retry", "retry", "dead_letter"]
    assert _attrs(spans[-1])["hexbus.delivery.retry_count"] == 2
    (dead,) = [e for e in spans[-1].events if e.name == "hexbus.dead_letter"]
    assert dict(dead.attributes or {})["hexbus.failure.reason"] == "handler_failed"
    assert "carrier refused shipment 7" in str(dict(dead.attributes or {})["hexbus.failure.error"])
    assert [e.name for e in spans[0].events if e.name.startswith("hexbus.")] == ["hexbus.retry"]
    assert consumer_otel.total("hexbus.handler.failures") == 3
    assert consumer_otel.total("hexbus.retries") == 2
    assert consumer_otel.total("hexbus.dead_letters") == 1


async def test_a_malformed_traceparent_from_a_foreign_producer_never_fails_delivery(
    maker: Any, consumer_otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    producer, consumer = maker(), maker()  # the producer is not instrumented
    consumer_otel.instrument(consumer)
    handled: list[str] = []

    async def on_booked(event: ShipmentBooked) -> None:
        handled.append(current_context().metadata[TRACEPARENT])

    consumer.subscribe(ShipmentBooked, on_booked, name="lenient")
    caplog.set_level(logging.DEBUG, logger="hexbus.telemetry")
    startup = consumer_otel.tracer_provider.get_tracer("service")
    with startup.start_as_current_span("service start-up"):  # consumer tasks inherit it
        await _started(consumer, producer)
    await producer.publish(ShipmentBooked(shipment=1), metadata={TRACEPARENT: "01-not-a-trace"})
    await eventually(lambda: handled == ["01-not-a-trace"], timeout=60, message="handled")
    await eventually(lambda: len(consumer_otel.spans("process ")) == 1, timeout=10)
    (process,) = consumer_otel.spans("process ")
    assert process.status.status_code is StatusCode.UNSET
    # without a creation context the delivery starts its own trace (not start-up's)
    assert list(process.links) == [] and process.parent is None
    assert "ignoring malformed traceparent '01-not-a-trace'" in caplog.text
    assert consumer.stats.dead_lettered == 0 and consumer.stats.failed == 0


_PRODUCER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from hexbus import DomainEvent
    from hexbus.infrastructure.adapters import build_bus
    from hexbus.infrastructure.settings import load_settings

    class ShipmentBooked(DomainEvent, event_type=EVENT_TYPE):
        shipment: int

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # before the bus is built: HEXBUS_OTEL=auto sees it

    async def main():
        bus = build_bus(load_settings())
        async with bus:
            await bus.publish(ShipmentBooked(shipment=99))
        (span,) = exporter.get_finished_spans()
        print(json.dumps({"trace_id": span.context.trace_id, "span_id": span.context.span_id,
                          "name": span.name}))

    asyncio.run(main())
    """
).replace("EVENT_TYPE", repr(EVENT_TYPE))


async def test_the_trace_crosses_into_a_separate_producer_process(
    rabbit_bus_maker: RabbitBusMaker, consumer_otel: Otel, tmp_path: Path
) -> None:
    consumer = rabbit_bus_maker()
    consumer_otel.instrument(consumer)
    handled: list[ShipmentBooked] = []

    async def on_booked(event: ShipmentBooked) -> None:
        handled.append(event)

    consumer.subscribe(ShipmentBooked, on_booked, name="remote")
    await _started(consumer)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXBUS_")}
    env.update(
        HEXBUS_ADAPTER="rabbitmq",
        HEXBUS_RABBITMQ_URL=rabbit_bus_maker.url,
        HEXBUS_RABBITMQ_EXCHANGE=rabbit_bus_maker.exchange,
        HEXBUS_SERVICE_NAME=f"{rabbit_bus_maker.service}-producer",
        HEXBUS_OTEL="auto",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PRODUCER_SCRIPT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(child.communicate(), 90)
    assert child.returncode == 0, err.decode()
    sent = json.loads(out.decode().strip().splitlines()[-1])
    assert sent["name"] == f"send {rabbit_bus_maker.exchange}"
    await eventually(lambda: len(handled) == 1, timeout=60, message="event handled")
    await eventually(lambda: len(consumer_otel.spans("process ")) == 1, timeout=10)
    (process,) = consumer_otel.spans("process ")
    assert [(link.context.trace_id, link.context.span_id) for link in process.links] == [
        (sent["trace_id"], sent["span_id"])
    ]
    assert process.context is not None and process.context.trace_id == sent["trace_id"]


class TestRabbitMQTracedContract(EventBusContract):
    """The contract holds on RabbitMQ with tracing and metrics on (SDK recording)."""

    capabilities = Capabilities(
        durable=True,
        redelivery=True,
        dead_letter=True,
        ordering="per_queue",
        consumer_groups=True,
        delivers_in_publish=False,
        max_attempts=3,
    )
    adapter_name = "rabbitmq (traced)"
    timeout = 15.0
    retry_timeout = 30.0

    @pytest.fixture
    def bus_factory(self, rabbit_bus_maker: RabbitBusMaker, consumer_otel: Otel) -> BusFactory:
        async def make() -> EventBus:
            bus = rabbit_bus_maker(max_attempts=self.capabilities.max_attempts)
            consumer_otel.instrument(bus)
            return bus

        return make


class TestKafkaTracedContract(EventBusContract):
    """The contract holds on Kafka with tracing and metrics on (SDK recording)."""

    capabilities = Capabilities(
        durable=True,
        redelivery=True,
        dead_letter=True,
        ordering="per_key",
        consumer_groups=True,
        delivers_in_publish=False,
        max_attempts=3,
    )
    adapter_name = "kafka (traced)"
    timeout = 20.0
    retry_timeout = 30.0

    @pytest.fixture
    def bus_factory(self, kafka_bus_maker: KafkaBusMaker, consumer_otel: Otel) -> BusFactory:
        async def make() -> EventBus:
            bus = kafka_bus_maker(max_attempts=self.capabilities.max_attempts)
            consumer_otel.instrument(bus)
            return bus

        return make


async def test_publish_many_is_one_send_span_every_event_links_to(
    maker: Any, producer_otel: Otel, consumer_otel: Otel
) -> None:
    producer, consumer = maker(), maker()
    producer_otel.instrument(producer)
    consumer_otel.instrument(consumer)
    handled: list[int] = []

    async def on_booked(event: ShipmentBooked) -> None:
        handled.append(event.shipment)

    consumer.subscribe(ShipmentBooked, on_booked, name="batch")
    await _started(consumer, producer)
    await producer.publish_many([ShipmentBooked(shipment=i) for i in range(3)])
    await eventually(lambda: sorted(handled) == [0, 1, 2], timeout=60, message="3 handled")
    await eventually(lambda: len(consumer_otel.spans("process ")) == 3, timeout=10)
    (send,) = producer_otel.spans("send ")
    assert _attrs(send)["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in _attrs(send)
    assert send.context is not None
    for process in consumer_otel.spans("process "):
        assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert producer_otel.total("messaging.client.sent.messages") == 3
    assert producer_otel.total("messaging.client.operation.duration") == 1
