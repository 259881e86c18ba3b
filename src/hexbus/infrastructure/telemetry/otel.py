"""``Telemetry``: the pipelines' ``Instrumentation`` implemented with the OpenTelemetry API.

Follows the OpenTelemetry messaging semantic conventions (spans ``send {destination}``
PRODUCER and ``process {destination}`` CONSUMER; metrics ``messaging.client.*`` and
``messaging.process.duration``), plus hexbus's own attributes (``hexbus.*``) for what the
conventions have no name for (the delivery attempt, the outcome of a failure).

The creation context travels in the CloudEvents distributed-tracing extension
(``traceparent`` / ``tracestate``, W3C Trace Context): always the W3C format, whatever
global propagator the application configured, because the CloudEvents extension is
defined as W3C.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from time import perf_counter
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from hexbus.application.consuming import Action, Outcome, error_text
from hexbus.application.observing import TRACEPARENT, TRACESTATE, forwarded_trace
from hexbus.domain.events import DomainEvent, EventRegistry

__all__ = ["Telemetry", "TraceLogFilter", "register_gauge", "sdk_configured"]

logger = logging.getLogger("hexbus.telemetry")

_SCOPE = "hexbus"
_VERSION = "0.1.0"
#: The semantic conventions' advice for messaging durations, seconds.
_DURATION_BUCKETS = (
    0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0,
)
#: ``messaging.system`` per adapter; unknown adapters report their own name.
_SYSTEMS = {"memory": "hexbus.memory", "rabbitmq": "rabbitmq", "kafka": "kafka"}
_BROKERS = frozenset({"rabbitmq", "kafka"})
#: Kafka's ``where`` (``ConsumePipeline.deliver``): ``topic[partition]@offset``.
_KAFKA_WHERE = re.compile(r"(?P<topic>.+)\[(?P<partition>\d+)\]@(?P<offset>\d+)")
#: RabbitMQ's ``where``: ``queue 'name'``.
_QUEUE_WHERE = re.compile(r"queue '(?P<queue>.+)'")

_PROPAGATOR = TraceContextTextMapPropagator()


class _SendScope:
    """The open ``send`` of a publish: what ``deferred`` changes into ``create``."""

    __slots__ = ("destination", "metric_attributes", "sent", "span")

    def __init__(self, span: Span, destination: str, metric_attributes: dict[str, Any]):
        self.span = span
        self.destination = destination
        self.metric_attributes = metric_attributes
        self.sent = True


_send_scope: ContextVar[_SendScope | None] = ContextVar("hexbus_send_scope", default=None)


def sdk_configured() -> bool:
    """Is a real tracer or meter provider installed (not the API's proxy / no-op)?

    The API's own providers live in ``opentelemetry.trace`` / ``opentelemetry.metrics``;
    anything else (the SDK's, a vendor's) is a configured one.
    """
    tracer = type(trace.get_tracer_provider()).__module__
    meter = type(metrics.get_meter_provider()).__module__
    return not tracer.startswith("opentelemetry.trace") or not meter.startswith(
        "opentelemetry.metrics"
    )


class _ProcessScope:
    """The open ``process`` span of one delivery attempt (``ProcessScope``)."""

    __slots__ = ("attempt", "error_type", "span", "subscription", "telemetry")

    def __init__(self, telemetry: Telemetry, span: Span, subscription: str, attempt: int):
        self.telemetry = telemetry
        self.span = span
        self.subscription = subscription
        self.attempt = attempt
        self.error_type: str | None = None

    def failed(self, exc: BaseException, outcome: Outcome | None = None) -> None:
        if self.error_type is not None:
            return
        span = self.span
        self.error_type = error_type = type(exc).__qualname__
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, error_text(exc)))
        span.set_attribute("error.type", error_type)
        self.telemetry.failures.add(
            1,
            {
                "messaging.system": self.telemetry.system,
                "messaging.consumer.group.name": self.subscription,
                "error.type": error_type,
            },
        )
        if outcome is None:
            return
        span.set_attribute("hexbus.outcome", outcome.action.value)
        if outcome.action is Action.RETRY:
            span.add_event(
                "hexbus.retry",
                {
                    "hexbus.retry.delay": outcome.delay,
                    "hexbus.retry.next_attempt": outcome.attempt + 1,
                    "hexbus.failure.reason": outcome.reason or "",
                },
            )
        elif outcome.action is Action.DEAD_LETTER:
            span.add_event(
                "hexbus.dead_letter",
                {
                    "hexbus.failure.reason": outcome.reason or "",
                    "hexbus.failure.error": outcome.error or "",
                    "hexbus.delivery.attempt": outcome.attempt,
                },
            )


class Telemetry:
    """Spans and metrics of one bus (``hexbus.application.observing.Instrumentation``)."""

    def __init__(self, bus: Any, *, tracer_provider: Any = None, meter_provider: Any = None):
        adapter = str(getattr(bus, "adapter_name", "hexbus"))
        self.adapter = adapter
        self.system = _SYSTEMS.get(adapter, adapter)
        #: Handlers run inside the publish (memory, the recording bus): a delivery without
        #: a creation context is still a child of the current (publishing) span.
        self.in_process = adapter not in _BROKERS
        self.tracer = trace.get_tracer(_SCOPE, _VERSION, tracer_provider)
        meter = metrics.get_meter(_SCOPE, _VERSION, meter_provider)
        # Where events go, in the adapter's own terms (semantic conventions per system).
        config = getattr(bus, "config", None)
        self.exchange: str | None = (
            getattr(config, "exchange", None) if adapter == "rabbitmq" else None
        )
        self._topic_for: Callable[[type[DomainEvent]], str] | None = (
            getattr(bus, "topic_for", None) if adapter == "kafka" else None
        )
        self._registry: EventRegistry | None = getattr(bus, "registry", None)
        self.operation_duration = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of a publish (send), from the call to the broker's confirm",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.sent = meter.create_counter(
            "messaging.client.sent.messages",
            unit="{message}",
            description="Messages a producer attempted to send",
        )
        self.consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Messages delivered to the handlers of a subscription (per attempt)",
        )
        self.process_duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of one run of a subscription's handlers for one message",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.failures = meter.create_counter(
            "hexbus.handler.failures",
            unit="{failure}",
            description="Handler runs that raised (including timeouts)",
        )
        self.retries = meter.create_counter(
            "hexbus.retries", unit="{retry}", description="Retries scheduled after a failure"
        )
        self.dead_letters = meter.create_counter(
            "hexbus.dead_letters",
            unit="{message}",
            description="Messages moved to a dead-letter queue / topic / store",
        )

    # -- where ---------------------------------------------------------------------------
    def destination(self, event: DomainEvent) -> str:
        """``messaging.destination.name`` of a publish: topic, exchange, or the event type."""
        if self._topic_for is not None:
            try:
                return self._topic_for(type(event))
            except Exception:  # noqa: BLE001 - a span name must never fail a publish
                return event.event_type
        if self.exchange is not None:
            return self.exchange
        return event.event_type

    # -- publish ---------------------------------------------------------------------------
    @contextmanager
    def send(self, events: Sequence[DomainEvent], key: str | None = None) -> Iterator[Span]:
        items = [event for event in events if isinstance(event, DomainEvent)]
        first = items[0] if items else None
        destination = self.destination(first) if first is not None else "(none)"
        metric_attributes: dict[str, Any] = {
            "messaging.system": self.system,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": destination,
        }
        attributes = dict(metric_attributes)
        if len(items) == 1 and first is not None:
            attributes["messaging.message.id"] = str(first.event_id)
            attributes["messaging.message.conversation_id"] = first.correlation_id
            attributes["hexbus.event.type"] = first.event_type
            if self.adapter == "kafka":
                attributes["messaging.kafka.message.key"] = (
                    key if key is not None else str(first.event_id)
                )
            elif self.adapter == "rabbitmq":
                attributes["messaging.rabbitmq.destination.routing_key"] = first.event_type
        else:
            attributes["messaging.batch.message_count"] = len(items)
        start = perf_counter()
        span = self.tracer.start_span(
            f"send {destination}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        scope = _SendScope(span, destination, metric_attributes)
        scope_token = _send_scope.set(scope)
        token = attach(trace.set_span_in_context(span))
        try:
            yield span
        except BaseException as exc:
            self._failed(span, exc, metric_attributes)
            raise
        finally:
            detach(token)
            _send_scope.reset(scope_token)
            span.end()
            self.operation_duration.record(perf_counter() - start, metric_attributes)
            if scope.sent:
                self.sent.add(len(items), metric_attributes)

    @staticmethod
    def _failed(span: Span, exc: BaseException, metric_attributes: dict[str, Any]) -> None:
        error_type = type(exc).__qualname__
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, error_text(exc)))
        span.set_attribute("error.type", error_type)
        metric_attributes["error.type"] = error_type

    def deferred(self) -> None:
        """The open ``send`` only stored its events (the outbox): report it as ``create``.

        Its span is renamed ``create {destination}`` with ``messaging.operation.type`` /
        ``.name`` ``create``; its duration is recorded as a ``create`` operation and
        ``messaging.client.sent.messages`` is left to the relay's real send.
        """
        scope = _send_scope.get()
        if scope is None:
            return
        scope.sent = False
        scope.span.update_name(f"create {scope.destination}")
        scope.span.set_attribute("messaging.operation.type", "create")
        scope.span.set_attribute("messaging.operation.name", "create")
        scope.metric_attributes["messaging.operation.type"] = "create"
        scope.metric_attributes["messaging.operation.name"] = "create"

    @contextmanager
    def relay(
        self, encoded: Sequence[Mapping[str, str]], keys: Sequence[str | None] = ()
    ) -> Iterator[Span]:
        """The ``send`` of encoded events (an outbox relay batch), continuing stored traces.

        ``encoded`` holds each event's CloudEvents attributes (``EncodedEvent.attributes``)
        and ``keys`` their publish keys (optional). The span links to every stored
        ``traceparent`` (the ``create`` spans of the publishes that stored them); for one
        event it is also that context's child, so request, ``create``, the relay's
        ``send`` and the consumers' ``process`` spans are one trace.
        """
        items = list(encoded)
        first = items[0] if items else {}
        event_type = first.get("type", "")
        destination = self._wire_destination(event_type)
        if any(self._wire_destination(i.get("type", "")) != destination for i in items[1:]):
            destination = "(several)"
        metric_attributes: dict[str, Any] = {
            "messaging.system": self.system,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": destination,
        }
        span_attributes: dict[str, Any] = {**metric_attributes, "hexbus.outbox.relayed": True}
        if len(items) == 1:
            span_attributes["messaging.message.id"] = first.get("id", "")
            span_attributes["messaging.message.conversation_id"] = first.get("correlationid", "")
            span_attributes["hexbus.event.type"] = event_type
            key = keys[0] if keys else None
            if self.adapter == "kafka":
                span_attributes["messaging.kafka.message.key"] = (
                    key if key is not None else first.get("id", "")
                )
            elif self.adapter == "rabbitmq":
                span_attributes["messaging.rabbitmq.destination.routing_key"] = event_type
        else:
            span_attributes["messaging.batch.message_count"] = len(items)
        stored = [self._extract(item, None) for item in items]
        links = [
            Link(trace.get_current_span(context).get_span_context())
            for context in stored
            if context is not None
        ]
        parent = stored[0] if len(items) == 1 else None
        start = perf_counter()
        span = self.tracer.start_span(
            f"send {destination}",
            context=parent if parent is not None else Context(),
            kind=SpanKind.PRODUCER,
            attributes=span_attributes,
            links=links or None,
        )
        token = attach(trace.set_span_in_context(span))
        try:
            yield span
        except BaseException as exc:
            self._failed(span, exc, metric_attributes)
            raise
        finally:
            detach(token)
            span.end()
            self.operation_duration.record(perf_counter() - start, metric_attributes)
            self.sent.add(len(items), metric_attributes)

    def _wire_destination(self, event_type: str) -> str:
        """``destination`` for an event known only by its wire type (the relay)."""
        if self._topic_for is not None and self._registry is not None and (
            event_type in self._registry
        ):
            return self._topic_for(self._registry.get(event_type))
        if self.exchange is not None:
            return self.exchange
        return event_type

    def creation_metadata(
        self, event: DomainEvent, metadata: Mapping[str, str] | None
    ) -> Mapping[str, str] | None:
        """``metadata`` with the creation context: kept if there, else the current span's.

        The current span is the ``send`` span of this publish, so a consumer's ``process``
        span links to (and is a child of) the publish that created the event.
        """
        if metadata and TRACEPARENT in metadata:
            self._link_current(metadata)
            return metadata
        forwarded = forwarded_trace(event)
        if forwarded is not None:
            self._link_current(forwarded)
            return {**metadata, **forwarded} if metadata else forwarded
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        if not carrier:  # no recording span (API without SDK): nothing to carry
            return metadata
        return {**metadata, **carrier} if metadata else carrier

    def _link_current(self, carrier: Mapping[str, str]) -> None:
        """The ``send`` of an event that already has a creation context links to it."""
        context = self._extract(carrier, None)
        if context is not None:
            trace.get_current_span().add_link(trace.get_current_span(context).get_span_context())

    # -- consume ---------------------------------------------------------------------------
    def _extract(self, metadata: Mapping[str, str], event: DomainEvent | None) -> Context | None:
        """The creation context in ``metadata``; ``None`` (and a debug log) if malformed."""
        traceparent = metadata.get(TRACEPARENT)
        if traceparent is None:
            return None
        carrier = {TRACEPARENT: traceparent}
        tracestate = metadata.get(TRACESTATE)
        if tracestate is not None:
            carrier[TRACESTATE] = tracestate
        context = _PROPAGATOR.extract(carrier)
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
        logger.debug(
            "ignoring malformed traceparent %r%s (not W3C Trace Context); the process span "
            "starts without a link",
            traceparent[:100],
            "" if event is None else f" of {event.event_type} event {event.event_id}",
            extra={}
            if event is None
            else {"event_id": str(event.event_id), "event_type": event.event_type},
        )
        return None

    def _consume_attributes(
        self, subscription: str, where: str, event: DomainEvent | None
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """``process`` span name's destination, metric attributes, span-only attributes.

        Span-only: what would give a metric one series per message (the Kafka offset) or
        per queue name already implied by the subscription.
        """
        attributes: dict[str, Any] = {
            "messaging.system": self.system,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": subscription,
        }
        extra: dict[str, Any] = {}
        destination = ""
        if self.adapter == "kafka":
            found = _KAFKA_WHERE.fullmatch(where)
            if found is not None:
                destination = found["topic"]
                attributes["messaging.destination.partition.id"] = found["partition"]
                extra["messaging.kafka.offset"] = int(found["offset"])
            elif event is not None and self._topic_for is not None:
                destination = self._topic_for(type(event))
        elif self.exchange is not None:
            destination = self.exchange
            found = _QUEUE_WHERE.fullmatch(where)
            if found is not None:
                extra["messaging.destination.subscription.name"] = found["queue"]
        elif event is not None:
            destination = event.event_type
        attributes["messaging.destination.name"] = destination
        return destination or subscription, attributes, extra

    @contextmanager
    def process(
        self,
        subscription: str,
        event: DomainEvent,
        metadata: Mapping[str, str],
        *,
        attempt: int = 1,
        key: str | None = None,
        where: str = "",
    ) -> Iterator[_ProcessScope]:
        destination, metric_attributes, extra = self._consume_attributes(
            subscription, where, event
        )
        attributes = {**metric_attributes, **extra}
        attributes["messaging.message.id"] = str(event.event_id)
        attributes["messaging.message.conversation_id"] = event.correlation_id
        attributes["hexbus.event.type"] = event.event_type
        attributes["hexbus.delivery.attempt"] = attempt
        attributes["hexbus.delivery.retry_count"] = attempt - 1
        if self.adapter == "kafka" and key is not None:
            attributes["messaging.kafka.message.key"] = key
        elif self.adapter == "rabbitmq":
            attributes["messaging.rabbitmq.destination.routing_key"] = event.event_type
        created = self._extract(metadata, event) if metadata else None
        links = None
        if created is not None:
            links = [Link(trace.get_current_span(created).get_span_context())]
        if created is None and not self.in_process:
            # A broker delivery without (a valid) creation context starts a trace of its
            # own, never a child of whatever span was current when the consumer started.
            created = Context()
        start = perf_counter()
        span = self.tracer.start_span(
            f"process {destination}",
            context=created,  # the creation context is the parent (one message: its child)
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        token = attach(trace.set_span_in_context(span))
        # A handler is not inside the publish that delivered it (memory runs it there):
        # ``deferred`` in a handler must not turn that publish's send into a create.
        send_token = _send_scope.set(None)
        scope = _ProcessScope(self, span, subscription, attempt)
        try:
            yield scope
        except BaseException as exc:
            scope.failed(exc)
            raise
        finally:
            _send_scope.reset(send_token)
            detach(token)
            span.end()
            if scope.error_type is not None:
                metric_attributes["error.type"] = scope.error_type
            self.process_duration.record(perf_counter() - start, metric_attributes)
            self.consumed.add(1, metric_attributes)

    def undeliverable(self, subscription: str, outcome: Outcome, where: str = "") -> None:
        """A ``process`` span (error) for a message no handler ran for; it is counted."""
        destination, metric_attributes, extra = self._consume_attributes(
            subscription, where, None
        )
        reason = outcome.reason or "undeliverable"
        metric_attributes["error.type"] = reason
        span = self.tracer.start_span(
            f"process {destination}",
            kind=SpanKind.CONSUMER,
            attributes={**metric_attributes, **extra},
        )
        span.set_attribute("hexbus.delivery.attempt", outcome.attempt)
        span.set_attribute("hexbus.outcome", outcome.action.value)
        span.set_status(Status(StatusCode.ERROR, outcome.error or reason))
        span.add_event(
            "hexbus.dead_letter",
            {"hexbus.failure.reason": reason, "hexbus.failure.error": outcome.error or ""},
        )
        span.end()
        self.consumed.add(1, metric_attributes)

    def settled(self, outcome: Outcome) -> None:
        attributes = {
            "messaging.system": self.system,
            "messaging.consumer.group.name": outcome.subscription or "",
            "hexbus.failure.reason": outcome.reason or "",
        }
        if outcome.action is Action.RETRY:
            self.retries.add(1, attributes)
        elif outcome.action is Action.DEAD_LETTER:
            self.dead_letters.add(1, attributes)


def register_gauge(
    name: str,
    callback: Callable[[], float | int | Iterable[tuple[float | int, dict[str, Any]]]],
    *,
    unit: str = "",
    description: str = "",
    meter_provider: Any = None,
) -> Any:
    """An observable gauge whose value ``callback`` returns at each collection."""

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        value = callback()
        if isinstance(value, int | float):
            return [Observation(value)]
        return [Observation(v, attributes) for v, attributes in value]

    meter = metrics.get_meter(_SCOPE, _VERSION, meter_provider)
    return meter.create_observable_gauge(
        name, callbacks=[observe], unit=unit, description=description
    )


class TraceLogFilter(logging.Filter):
    """Adds the current span's ids to a record that has no ``trace_id`` (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                record.trace_id = format(context.trace_id, "032x")
                record.span_id = format(context.span_id, "016x")
        return True
