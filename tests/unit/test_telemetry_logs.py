"""Logs that join up: the extra fields on hexbus's records, the JSON format, tail's trace id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from hexbus import DomainEvent
from hexbus.application.consuming import ConsumePipeline, RetryPolicy
from hexbus.application.dispatch import DispatchStats
from hexbus.application.handlers import SubscriptionTable
from hexbus.application.observing import TRACEPARENT
from hexbus.cli.tail import event_line, event_record
from hexbus.infrastructure.adapters import build_bus
from hexbus.infrastructure.logging import JsonFormatter, configure_logging
from hexbus.infrastructure.memory import InMemoryEventBus
from hexbus.infrastructure.settings import load_settings
from hexbus.infrastructure.telemetry import instrument, trace_log_filter

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE}-b7ad6b7169203331-01"


class ParcelLost(DomainEvent, event_type="telemetry.parcel_lost"):
    parcel: int


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """hexbus's records as JSON lines in a buffer (the handler removed afterwards)."""
    stream = io.StringIO()
    logger = logging.getLogger("hexbus")
    before = (logger.level, logger.propagate)
    handler = configure_logging("json", stream=stream, level=logging.DEBUG)
    assert handler is not None
    assert configure_logging("json", stream=stream) is handler  # idempotent
    assert configure_logging("text") is None
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(before[0])
    logger.propagate = before[1]


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


async def test_a_handler_failure_log_carries_event_subscription_attempt_and_trace(
    json_lines: io.StringIO,
) -> None:
    subscriptions = SubscriptionTable()

    async def broken(event: ParcelLost) -> None:
        raise LookupError("no such parcel")

    subscriptions.add(ParcelLost, broken, "claims")
    pipeline = ConsumePipeline(
        subscriptions,
        policy=RetryPolicy(max_attempts=3),
        handler_timeout=None,
        stats=DispatchStats(),
        adapter="test",
    )
    event = ParcelLost(parcel=3)
    await pipeline.deliver("claims", (event, {TRACEPARENT: PARENT}), attempt=2)
    (record,) = [r for r in _records(json_lines) if r["logger"] == "hexbus.consume"]
    assert record["level"] == "WARNING"
    assert record["event_id"] == str(event.event_id)
    assert record["event_type"] == "telemetry.parcel_lost"
    assert record["subscription"] == "claims"
    assert record["attempt"] == 2
    assert record["trace_id"] == TRACE
    assert record["error"] == "LookupError"
    assert "handler claims failed" in str(record["message"])


async def test_the_memory_fast_path_failure_log_joins_up_too(json_lines: io.StringIO) -> None:
    bus = InMemoryEventBus()

    async def broken(event: ParcelLost) -> None:
        raise LookupError("no such parcel")

    bus.subscribe(ParcelLost, broken, name="claims")
    async with bus:
        event = ParcelLost(parcel=4)
        await bus.publish(event, metadata={TRACEPARENT: PARENT})
    (record,) = [r for r in _records(json_lines) if r["logger"] == "hexbus.dispatch"]
    assert (record["event_id"], record["subscription"], record["attempt"]) == (
        str(event.event_id),
        "claims",
        1,
    )
    assert record["trace_id"] == TRACE
    assert "LookupError: no such parcel" in str(record["exception"])


def test_the_json_formatter_writes_the_join_fields_on_every_line() -> None:
    record = logging.LogRecord("hexbus.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.custom = {"a": 1}
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello you" and line["level"] == "INFO"
    assert line["custom"] == {"a": 1}
    for name in ("event_id", "event_type", "subscription", "attempt", "trace_id"):
        assert name in line and line[name] is None


async def test_records_logged_inside_a_span_get_its_trace_id() -> None:
    provider = TracerProvider()
    bus = InMemoryEventBus()
    instrument(bus, tracer_provider=provider)
    log_filter = trace_log_filter()
    assert log_filter is not None
    seen: list[logging.LogRecord] = []

    async def handler(event: ParcelLost) -> None:
        record = logging.LogRecord("app", logging.INFO, __file__, 1, "handling", None, None)
        log_filter.filter(record)
        seen.append(record)

    bus.subscribe(ParcelLost, handler)
    async with bus:
        await bus.publish(ParcelLost(parcel=1))
    (record,) = seen
    assert len(vars(record)["trace_id"]) == 32 and len(vars(record)["span_id"]) == 16
    provider.shutdown()


def test_tail_shows_the_trace_id() -> None:
    event = ParcelLost(parcel=5)
    record = event_record(event, {TRACEPARENT: PARENT, "ip_address": "10.0.0.1"})
    assert record["trace_id"] == TRACE
    line = event_line(record).plain
    assert f"trace={TRACE}" in line
    assert "ip_address=10.0.0.1" in line and "traceparent=" not in line
    untraced = event_record(event, {"ip_address": "10.0.0.1"})
    assert untraced["trace_id"] is None and "trace=" not in event_line(untraced).plain


def test_hexbus_log_format_json_is_applied_when_the_registry_builds_a_bus() -> None:
    logger = logging.getLogger("hexbus")
    before = (logger.level, logger.propagate, list(logger.handlers))
    try:
        build_bus(load_settings(log_format="text"))
        assert logger.handlers == before[2]
        build_bus(load_settings(log_format="json"))
        added = [h for h in logger.handlers if h not in before[2]]
        assert len(added) == 1 and isinstance(added[0].formatter, JsonFormatter)
        assert logger.propagate is False
    finally:
        for handler in [h for h in logger.handlers if h not in before[2]]:
            logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]
