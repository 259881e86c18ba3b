"""Tracing through the transactional outbox, over the real brokers.

A request publishes inside a database transaction: its span is ``create`` (the event
is stored, not sent); the relay's ``send`` later continues the trace stored with the row
(``traceparent`` in the CloudEvents attributes), and the consumer's ``process`` span is
a child of the stored creation context: request → create → send (relay) → process is
one trace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from bus_makers import KafkaBusMaker, RabbitBusMaker
from opentelemetry.trace import SpanKind

from hexbus import DomainEvent
from hexbus.infrastructure.outbox import Outbox, open_engine
from hexbus.testing import eventually
from hexbus.testing.telemetry import TelemetryCapture as Otel

pytestmark = pytest.mark.integration


class Packed(DomainEvent, event_type="telemetry.outbox.packed"):
    box: int





@pytest.fixture
def otel() -> Iterator[Otel]:
    otel = Otel()
    yield otel
    otel.tracer_provider.shutdown()
    otel.meter_provider.shutdown()


@pytest.fixture
async def outbox(sqlite_url: str) -> AsyncIterator[Outbox]:
    box = Outbox(open_engine(sqlite_url), poll_interval=0.2, owns_engine=True)
    await box.open()
    try:
        yield box
    finally:
        await box.close()


@pytest.fixture(params=["rabbitmq", "kafka"])
def maker(request: pytest.FixtureRequest) -> RabbitBusMaker | KafkaBusMaker:
    name = "rabbit_bus_maker" if request.param == "rabbitmq" else "kafka_bus_maker"
    made: RabbitBusMaker | KafkaBusMaker = request.getfixturevalue(name)
    return made


async def test_request_create_relay_send_and_process_are_one_trace(
    outbox: Outbox, maker: Any, otel: Otel
) -> None:
    consumer, publisher = maker(), maker()
    otel.instrument(consumer)
    otel.instrument(publisher)
    outbox.attach(publisher)
    handled: list[Packed] = []

    async def on_packed(event: Packed) -> None:
        handled.append(event)

    consumer.subscribe(Packed, on_packed, name="shipping")
    tracer = otel.tracer_provider.get_tracer("service")
    async with consumer, publisher:
        await consumer.wait_ready()
        relay = outbox.relay(publisher)
        await relay.start()
        try:
            with tracer.start_as_current_span("POST /boxes"):
                async with outbox.sessions() as session, session.begin():
                    await publisher.publish(Packed(box=1), session=session)
            await eventually(lambda: len(handled) == 1, timeout=60, message="handled")
            await eventually(lambda: len(otel.spans("process ")) == 1, timeout=10)
        finally:
            await relay.stop()

    (request,) = otel.spans("POST ")
    (create,) = otel.spans("create ")
    (send,) = otel.spans("send ")
    (process,) = otel.spans("process ")
    assert create.kind is SpanKind.PRODUCER and send.kind is SpanKind.PRODUCER
    assert request.context is not None and create.context is not None
    assert create.parent is not None and create.parent.span_id == request.context.span_id
    assert dict(create.attributes or {})["messaging.operation.type"] == "create"
    assert dict(send.attributes or {})["hexbus.outbox.relayed"] is True
    assert send.parent is not None and send.parent.span_id == create.context.span_id
    assert [link.context.span_id for link in send.links] == [create.context.span_id]
    assert process.parent is not None and process.parent.span_id == create.context.span_id
    assert [link.context.span_id for link in process.links] == [create.context.span_id]
    trace_ids = {s.context.trace_id for s in (request, create, send, process) if s.context}
    assert trace_ids == {request.context.trace_id}
