"""Tracing and metrics on the memory adapter, with the SDK's in-memory exporters.

The broker cases (a producer bus and a consumer bus over RabbitMQ / Kafka, a separate
producer process) are in tests/integration/test_telemetry_brokers.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from hexbus import DomainEvent, EventBus
from hexbus.application.observing import TRACEPARENT, TRACESTATE, trace_id_of
from hexbus.domain.context import current_context
from hexbus.infrastructure.codec import STRUCTURED_CONTENT_TYPE, CloudEventCodec
from hexbus.infrastructure.container import Container
from hexbus.infrastructure.kafka.marshal import encode_record, read_record
from hexbus.infrastructure.memory import InMemoryEventBus, MemoryConfig
from hexbus.infrastructure.rabbitmq.marshal import encode_message, read_message
from hexbus.infrastructure.settings import load_settings
from hexbus.infrastructure.telemetry import configure, register_gauge
from hexbus.testing import BusFactory, Capabilities, EventBusContract
from hexbus.testing.telemetry import TelemetryCapture as Otel


class OrderPlaced(DomainEvent, event_type="telemetry.order_placed"):
    order: int


class InvoiceSent(DomainEvent, event_type="telemetry.invoice_sent"):
    order: int





@pytest.fixture
def otel() -> Iterator[Otel]:
    otel = Otel()
    yield otel
    otel.close()


async def test_nested_publish_makes_the_span_chain_follow_the_causation_chain(otel: Otel) -> None:
    bus = InMemoryEventBus()
    otel.instrument(bus)
    seen: dict[str, Any] = {}

    async def on_order(event: OrderPlaced) -> None:
        seen["order_metadata"] = dict(current_context().metadata)
        await bus.publish(InvoiceSent(order=event.order))

    async def on_invoice(event: InvoiceSent) -> None:
        seen["invoice"] = event

    bus.subscribe(OrderPlaced, on_order, name="billing")
    bus.subscribe(InvoiceSent, on_invoice, name="mailer")
    async with bus:
        order = OrderPlaced(order=7)
        await bus.publish(order)

    send_order, send_invoice = sorted(otel.spans("send "), key=lambda s: s.start_time or 0)
    process_order, process_invoice = sorted(
        otel.spans("process "), key=lambda s: s.start_time or 0
    )
    assert send_order.name == "send telemetry.order_placed"
    assert send_order.kind is SpanKind.PRODUCER and process_order.kind is SpanKind.CONSUMER
    # send(order) -> process(order) -> send(invoice) -> process(invoice), one trace
    assert send_order.parent is None
    assert process_order.parent is not None and send_order.context is not None
    assert process_order.parent.span_id == send_order.context.span_id
    assert send_invoice.parent is not None and process_order.context is not None
    assert send_invoice.parent.span_id == process_order.context.span_id
    assert process_invoice.parent is not None and send_invoice.context is not None
    assert process_invoice.parent.span_id == send_invoice.context.span_id
    trace_ids = {s.context.trace_id for s in otel.spans() if s.context is not None}
    assert len(trace_ids) == 1
    # ... and each process span links to its event's creation context (the send span)
    assert [link.context.span_id for link in process_invoice.links] == [
        send_invoice.context.span_id
    ]
    # the causation chain the events carry is the same chain
    invoice = seen["invoice"]
    assert invoice.causation_id == str(order.event_id)
    assert invoice.correlation_id == order.correlation_id
    assert process_invoice.attributes is not None
    assert process_invoice.attributes["messaging.message.conversation_id"] == order.correlation_id
    # the creation context is what handlers see as the CloudEvents extension
    assert trace_id_of(seen["order_metadata"]) == format(send_order.context.trace_id, "032x")
    attrs = dict(process_order.attributes or {})
    assert attrs["messaging.system"] == "hexbus.memory"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.consumer.group.name"] == "billing"
    assert attrs["messaging.message.id"] == str(order.event_id)
    assert attrs["hexbus.delivery.attempt"] == 1
    send_attrs = dict(send_order.attributes or {})
    assert send_attrs["messaging.destination.name"] == "telemetry.order_placed"
    assert send_attrs["messaging.operation.type"] == "send"
    assert send_attrs["messaging.message.id"] == str(order.event_id)


async def test_counters_and_histograms_move_by_the_number_of_events(otel: Otel) -> None:
    bus = InMemoryEventBus()
    otel.instrument(bus)
    handled: list[int] = []

    async def on_order(event: OrderPlaced) -> None:
        handled.append(event.order)

    bus.subscribe(OrderPlaced, on_order, name="counter")
    n = 7
    async with bus:
        for i in range(n):
            await bus.publish(OrderPlaced(order=i))
        await bus.publish_many([OrderPlaced(order=i) for i in range(3)])

    assert len(handled) == n + 3
    where = {"messaging.destination.name": "telemetry.order_placed"}
    assert otel.total("messaging.client.sent.messages", **where) == n + 3
    assert otel.total("messaging.client.operation.duration", **where) == n + 3
    group = {"messaging.consumer.group.name": "counter"}
    assert otel.total("messaging.client.consumed.messages", **group) == n + 3
    assert otel.total("messaging.process.duration", **group) == n + 3
    assert otel.total("hexbus.handler.failures") == 0
    # memory's publish_many publishes each event: one send span each
    assert len(otel.spans("send ")) == n + 3


async def test_a_failing_handler_span_has_error_status_and_retry_and_dead_letter(
    otel: Otel,
) -> None:
    bus = InMemoryEventBus(
        MemoryConfig(max_attempts=3, retry_delays=(0.0,), dead_letter_limit=10)
    )
    otel.instrument(bus)

    async def broken(event: OrderPlaced) -> None:
        raise ValueError(f"no stock for order {event.order}")

    bus.subscribe(OrderPlaced, broken, name="stock")
    async with bus:
        await bus.publish(OrderPlaced(order=1))
    assert len(await bus.dead_letters("stock")) == 1

    spans = sorted(otel.spans("process "), key=lambda s: s.start_time or 0)
    assert [dict(s.attributes or {})["hexbus.delivery.attempt"] for s in spans] == [1, 2, 3]
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        assert dict(span.attributes or {})["error.type"] == "ValueError"
        assert any(e.name == "exception" for e in span.events)
    last = dict(spans[-1].attributes or {})
    assert last["hexbus.delivery.retry_count"] == 2
    assert last["hexbus.outcome"] == "dead_letter"
    dead = [e for e in spans[-1].events if e.name == "hexbus.dead_letter"]
    assert len(dead) == 1 and dict(dead[0].attributes or {})["hexbus.failure.reason"] == (
        "handler_failed"
    )
    retry = [e for e in spans[1].events if e.name == "hexbus.retry"]
    assert dict(retry[0].attributes or {})["hexbus.retry.next_attempt"] == 3
    assert otel.total("hexbus.handler.failures", **{"error.type": "ValueError"}) == 3
    assert otel.total("hexbus.retries") == 2
    assert otel.total("hexbus.dead_letters") == 1
    assert otel.total("messaging.process.duration", **{"error.type": "ValueError"}) == 3


async def test_a_malformed_traceparent_is_ignored_with_a_debug_log(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    bus = InMemoryEventBus()
    otel.instrument(bus)
    handled: list[dict[str, str]] = []

    async def on_order(event: OrderPlaced) -> None:
        handled.append(dict(current_context().metadata))

    bus.subscribe(OrderPlaced, on_order, name="foreign")
    caplog.set_level(logging.DEBUG, logger="hexbus.telemetry")
    async with bus:
        # a foreign producer's garbage: never overwritten, never fatal
        await bus.publish(OrderPlaced(order=1), metadata={TRACEPARENT: "00-zz-nonsense-01"})
    assert handled == [{TRACEPARENT: "00-zz-nonsense-01"}]
    assert "ignoring malformed traceparent '00-zz-nonsense-01'" in caplog.text
    (process,) = otel.spans("process ")
    assert process.status.status_code is StatusCode.UNSET
    assert list(process.links) == []


async def test_a_forwarded_event_keeps_its_creation_context(otel: Otel) -> None:
    bus = InMemoryEventBus()
    otel.instrument(bus)
    seen: list[dict[str, str]] = []

    async def forward(event: OrderPlaced) -> None:
        if event.order == 1:
            await bus.publish(event.model_copy(update={"order": 2}))

    async def record(event: OrderPlaced) -> None:
        seen.append(dict(current_context().metadata))

    bus.subscribe(OrderPlaced, forward, name="forwarder")
    bus.subscribe(OrderPlaced, record, name="recorder")
    async with bus:
        await bus.publish(OrderPlaced(order=1))
    first, forwarded = seen
    assert forwarded[TRACEPARENT] == first[TRACEPARENT]
    sends = sorted(otel.spans("send "), key=lambda s: s.start_time or 0)
    # the forwarder's send span links to the context the event was created with
    assert sends[0].context is not None
    assert [link.context.span_id for link in sends[1].links] == [sends[0].context.span_id]


async def test_an_explicit_traceparent_is_never_overwritten(otel: Otel) -> None:
    bus = InMemoryEventBus()
    otel.instrument(bus)
    seen: list[str] = []
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    async def record(event: OrderPlaced) -> None:
        seen.append(current_context().metadata[TRACEPARENT])

    bus.subscribe(OrderPlaced, record, name="recorder")
    async with bus:
        await bus.publish(OrderPlaced(order=1), metadata={TRACEPARENT: given, "ip": "1.2.3.4"})
    assert seen == [given]
    (process,) = otel.spans("process ")
    assert process.context is not None and process.parent is not None
    assert format(process.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(process.parent.span_id, "016x") == "b7ad6b7169203331"


async def test_instrumentation_off_leaves_the_bus_as_it_was(otel: Otel) -> None:
    bus = InMemoryEventBus()
    assert "publish" not in vars(bus)
    otel.instrument(bus)
    assert "publish" in vars(bus) and bus.dispatcher.instrumentation is not None
    bus.instrument(None)
    assert "publish" not in vars(bus)
    assert bus.pipeline.instrumentation is None and bus.dispatcher.instrumentation is None
    handled: list[dict[str, str]] = []

    async def record(event: OrderPlaced) -> None:
        handled.append(dict(current_context().metadata))

    bus.subscribe(OrderPlaced, record)
    async with bus:
        await bus.publish(OrderPlaced(order=1))
    assert handled == [{}]
    assert otel.spans() == []


def test_hexbus_otel_setting_decides() -> None:
    # No SDK provider is installed globally in the test process: auto means off.
    bus = InMemoryEventBus()
    assert configure(bus, load_settings(otel="auto")) is None
    assert configure(bus, load_settings(otel="off")) is None
    assert bus.instrumentation is None
    assert configure(bus, load_settings(otel="on")) is not None
    assert bus.instrumentation is not None
    bus.instrument(None)


def test_trace_id_of_reads_only_well_formed_traceparents() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert trace_id_of({TRACEPARENT: good}) == "0af7651916cd43dd8448eb211c80319c"
    assert trace_id_of(None) is None
    assert trace_id_of({}) is None
    assert trace_id_of({TRACEPARENT: "garbage"}) is None
    assert trace_id_of({TRACEPARENT: "00-" + "0" * 32 + "-b7ad6b7169203331-01"}) is None
    assert trace_id_of({TRACEPARENT: "00-" + "Z" * 32 + "-b7ad6b7169203331-01"}) is None


def test_register_gauge_reports_what_the_callback_returns(otel: Otel) -> None:
    pending = [3]
    register_gauge(
        "hexbus.outbox.pending",
        lambda: pending[0],
        unit="{row}",
        meter_provider=otel.meter_provider,
    )
    register_gauge(
        "hexbus.outbox.lag",
        lambda: [(1.5, {"hexbus.outbox.table": "a"}), (0.5, {"hexbus.outbox.table": "b"})],
        unit="s",
        meter_provider=otel.meter_provider,
    )
    pending[0] = 5
    points = otel.metrics()
    assert [p.value for p in points["hexbus.outbox.pending"]] == [5]
    assert sorted(p.value for p in points["hexbus.outbox.lag"]) == [0.5, 1.5]


class TestMemoryTracedContract(EventBusContract):
    """The adapter contract holds with tracing and metrics on (an SDK recording spans)."""

    capabilities = Capabilities(
        durable=False,
        redelivery=True,
        dead_letter=True,
        ordering="publisher",
        consumer_groups=False,
        delivers_in_publish=True,
        max_attempts=3,
    )
    adapter_name = "memory (traced, retries)"
    timeout = 5.0
    retry_timeout = 5.0

    @pytest.fixture
    def bus_factory(self, otel: Otel) -> BusFactory:
        async def make() -> EventBus:
            bus = InMemoryEventBus(
                MemoryConfig(max_attempts=3, retry_delays=(0.01,), dead_letter_limit=100)
            )
            otel.instrument(bus)
            return bus

        return make


async def test_outbox_hooks_create_then_relay_continue_the_stored_trace(otel: Otel) -> None:
    """What the outbox does: a publish that stores reports ``create``; the relay's send,
    later and elsewhere, continues the trace stored with the row's CloudEvents attributes."""
    bus = InMemoryEventBus()
    telemetry = otel.instrument(bus)
    stored: list[dict[str, str]] = []

    async def store_instead_of_send(event: OrderPlaced) -> None:
        telemetry.deferred()  # the outbox's admission hook: the event goes to a table
        stored.append(dict(current_context().metadata))

    bus.subscribe(OrderPlaced, store_instead_of_send, name="outbox-stand-in")
    async with bus:
        event = OrderPlaced(order=9)
        await bus.publish(event, metadata={"ip": "1.2.3.4"})
    (publish,) = otel.spans("send ") + otel.spans("create ")
    assert publish.name == "send telemetry.order_placed"  # deferred() outside its send: no-op

    otel.exporter.clear()
    codec = CloudEventCodec(source="orders")
    with telemetry.send((event,)):
        telemetry.deferred()
        attributes, _body = codec.encode(event, telemetry.creation_metadata(event, None))
    (create,) = otel.spans("create ")
    assert create.name == "create telemetry.order_placed"
    assert dict(create.attributes or {})["messaging.operation.type"] == "create"
    assert otel.total("messaging.client.sent.messages") == 1  # the first publish only

    with telemetry.relay([attributes]):
        pass
    (relayed,) = otel.spans("send ")
    assert create.context is not None and relayed.context is not None
    assert relayed.context.trace_id == create.context.trace_id
    assert relayed.parent is not None and relayed.parent.span_id == create.context.span_id
    assert [link.context.span_id for link in relayed.links] == [create.context.span_id]
    attrs = dict(relayed.attributes or {})
    assert attrs["messaging.message.id"] == str(event.event_id)
    assert attrs["hexbus.outbox.relayed"] is True
    assert otel.total("messaging.client.sent.messages") == 2
    assert otel.total(
        "messaging.client.operation.duration", **{"messaging.operation.type": "create"}
    ) == 1

    # a relay batch: one send span linking every stored context, a trace of its own
    otel.exporter.clear()
    other = OrderPlaced(order=10)
    with telemetry.send((other,)):
        other_attributes, _ = codec.encode(other, telemetry.creation_metadata(other, None))
    (other_send,) = otel.spans("send ")
    otel.exporter.clear()
    with telemetry.relay([attributes, other_attributes]):
        pass
    (batch,) = otel.spans("send ")
    assert batch.parent is None
    assert other_send.context is not None
    assert [link.context.span_id for link in batch.links] == [
        create.context.span_id,
        other_send.context.span_id,
    ]
    assert dict(batch.attributes or {})["messaging.batch.message_count"] == 2
    assert otel.total("messaging.client.sent.messages") == 5


def test_the_creation_context_is_a_cloudevents_extension_on_both_wires() -> None:
    """``traceparent`` / ``tracestate`` travel as CloudEvents extension attributes: Kafka
    ``ce_`` headers, AMQP ``cloudEvents:`` headers, members of a structured document."""
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    carried = {TRACEPARENT: parent, TRACESTATE: "vendor=opaque"}
    codec = CloudEventCodec(source="orders")
    event = OrderPlaced(order=1)

    headers, value = encode_record(codec, event, carried)
    assert ("ce_traceparent", parent.encode()) in headers
    assert ("ce_tracestate", b"vendor=opaque") in headers
    assert read_record(codec, headers, value)[1] == carried

    amqp, content_type, body = encode_message(codec, event, carried)
    assert amqp["cloudEvents:traceparent"] == parent
    assert read_message(codec, amqp, content_type, body)[1] == carried

    foreign = {
        "specversion": "1.0",
        "id": "order-42",
        "type": OrderPlaced.event_type,
        "source": "shop",
        "traceparent": parent,
        "data": {"order": 3},
    }
    _, metadata, _ = codec.decode_structured(
        json.dumps(foreign).encode(), STRUCTURED_CONTENT_TYPE
    )
    assert metadata == {TRACEPARENT: parent}


async def test_the_container_and_registry_apply_hexbus_otel() -> None:
    container = Container()
    container.config.from_dict({"adapter": "memory", "otel": "on"})
    bus = container.event_bus()
    assert bus.instrumentation is not None  # type: ignore[attr-defined]
    off = Container()
    off.config.from_dict({"adapter": "memory", "otel": "off"})
    assert off.event_bus().instrumentation is None  # type: ignore[attr-defined]
