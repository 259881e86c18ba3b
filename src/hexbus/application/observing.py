"""Observation hooks of the pipelines: where tracing and metrics plug in.

Why a protocol here and not OpenTelemetry calls in the pipelines: the application layer
never imports a client (import-linter), and a bus without instrumentation must cost
nothing. Every pipeline holds ``instrumentation`` (``None`` by default) and tests that one
attribute before doing anything; ``hexbus.infrastructure.telemetry.otel.Telemetry`` implements
the protocol with the OpenTelemetry API, and ``EventBusBase.instrument`` switches a bus
(its publish, its consume pipeline, the memory dispatcher) over to it.

Where each hook is called:

- ``send``: around a whole ``publish`` / ``publish_many`` (admission, encoding, the
  broker's confirm), by the wrapper ``instrument_publishing`` puts on the bus instance;
- ``deferred`` / ``relay``: the outbox: a publish that only stored its events reports
  ``create``, and the relay's later send a ``send`` linked to the stored context;
- ``creation_metadata``: by admission (``Admission.admit_many``) and by that wrapper:
  the event's creation context (W3C ``traceparent`` / ``tracestate``) joins its metadata,
  so it travels as the CloudEvents distributed-tracing extension on every transport
  (and in the outbox row). A context already there is never overwritten, and forwarding
  the event being handled keeps the context it arrived with;
- ``process``: around one run of a subscription's handlers for one delivery attempt
  (``ConsumePipeline.run``, and each handler of the memory adapter's eager fast path);
- ``undeliverable``: a delivery that reached no handler (undecodable, no handler);
- ``settled``: a retry or dead letter the transport has carried out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from hexbus.domain.context import DeliveryContext, delivery_context
from hexbus.domain.events import DomainEvent

if TYPE_CHECKING:
    from hexbus.application.consuming import Outcome
    from hexbus.application.handlers import Subscription

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "Instrumentation",
    "ProcessScope",
    "forwarded_trace",
    "instrument_publishing",
    "trace_id_of",
    "traced_call",
]

#: The CloudEvents distributed-tracing extension (W3C Trace Context), as metadata keys.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_HEX = frozenset("0123456789abcdef")


def trace_id_of(metadata: Mapping[str, str] | None) -> str | None:
    """The trace id (32 hex digits) of a ``traceparent`` in ``metadata``, else ``None``.

    For logs and ``hexbus tail``: needs no OpenTelemetry. A malformed value (a foreign
    producer's) gives ``None``, never an error.
    """
    if not metadata:
        return None
    value = metadata.get(TRACEPARENT)
    if not isinstance(value, str) or len(value) < 55 or value[2] != "-" or value[35] != "-":
        return None
    trace_id = value[3:35]
    if trace_id == "0" * 32 or not _HEX.issuperset(trace_id):
        return None
    return trace_id


def forwarded_trace(event: DomainEvent) -> Mapping[str, str] | None:
    """The trace context to keep when ``event`` is the event being handled (a forward).

    Re-publishing the handled event (the same object or a copy with its ``event_id``)
    forwards it: its creation context goes out again, as its CloudEvents id does.
    """
    context = delivery_context.get()
    handled = context.event
    if handled is None or not (handled is event or handled.event_id == event.event_id):
        return None
    metadata = context.metadata
    if TRACEPARENT not in metadata:
        return None
    if TRACESTATE in metadata:
        return {TRACEPARENT: metadata[TRACEPARENT], TRACESTATE: metadata[TRACESTATE]}
    return {TRACEPARENT: metadata[TRACEPARENT]}


class ProcessScope(Protocol):
    """The open ``process`` span of one delivery attempt."""

    def failed(self, exc: BaseException, outcome: Outcome | None = None) -> None:
        """The handler raised; ``outcome`` says what happens next (retry / dead letter)."""


class Instrumentation(Protocol):
    """What the pipelines report; see the module docstring for where each is called."""

    def send(
        self, events: Sequence[DomainEvent], key: str | None = None
    ) -> AbstractContextManager[Any]:
        """Around one publish (one event) or ``publish_many`` (several)."""

    def creation_metadata(
        self, event: DomainEvent, metadata: Mapping[str, str] | None
    ) -> Mapping[str, str] | None:
        """``metadata`` plus the event's creation context, when it has none yet."""

    def deferred(self) -> None:
        """The open ``send`` only stored its events (the outbox): it becomes ``create``.

        Called by whatever stores instead of sending, inside the publish; the relay's
        later send is reported by ``relay``.
        """

    def relay(
        self, encoded: Sequence[Mapping[str, str]], keys: Sequence[str | None] = ()
    ) -> AbstractContextManager[Any]:
        """Around the send of already encoded events (an outbox relay's ``send_encoded``).

        ``encoded``: each event's CloudEvents attributes (``EncodedEvent.attributes``);
        the span links to (and for one event continues) the ``traceparent`` stored there.
        """

    def process(
        self,
        subscription: str,
        event: DomainEvent,
        metadata: Mapping[str, str],
        *,
        attempt: int = 1,
        key: str | None = None,
        where: str = "",
    ) -> AbstractContextManager[ProcessScope]:
        """Around one run of ``subscription``'s handlers for one delivery attempt."""

    def undeliverable(self, subscription: str, outcome: Outcome, where: str = "") -> None:
        """A delivery dead-lettered before any handler ran (undecodable, no handler)."""

    def settled(self, outcome: Outcome) -> None:
        """A retry or dead letter the transport carried out."""


async def traced_call(
    instrumentation: Instrumentation,
    sub: Subscription,
    event: DomainEvent,
    context: DeliveryContext,
) -> None:
    """``sub.call(event)`` inside a ``process`` scope (the memory adapter's fast path).

    A coroutine like the handler's own, so the dispatcher still starts it eagerly and it
    suspends only where the handler does.
    """
    with instrumentation.process(
        sub.name,
        event,
        context.metadata,
        attempt=context.attempt or 1,
        key=context.explicit_key,
    ):
        await sub.call(event)


def instrument_publishing(
    bus: Any, instrumentation: Instrumentation | None, *, batch_span: bool = True
) -> None:
    """Put (or with ``None`` take away) the ``send`` wrapper on ``bus``'s publish methods.

    Why on the instance: a bus that is not instrumented keeps its class's methods, so
    the hot path pays nothing, not even a test. ``batch_span=False`` leaves
    ``publish_many`` alone for a bus whose ``publish_many`` calls ``publish`` per event
    (memory): each event then gets its own span.
    """
    for name in ("publish", "publish_many"):
        vars(bus).pop(name, None)
    if instrumentation is None:
        return
    bus.publish = _traced_publish(bus, type(bus).publish, instrumentation)
    if batch_span:
        bus.publish_many = _traced_publish_many(bus, type(bus).publish_many, instrumentation)


def _traced_publish(
    bus: Any, publish: Callable[..., Coroutine[Any, Any, None]], traced: Instrumentation
) -> Callable[..., Coroutine[Any, Any, None]]:
    async def traced_publish(
        event: DomainEvent,
        *,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(event, DomainEvent):  # admission reports it, without a span
            await publish(bus, event, metadata=metadata, key=key, **kwargs)
            return
        with traced.send((event,), key):
            if metadata is None or isinstance(metadata, Mapping):  # else admission refuses
                metadata = traced.creation_metadata(event, metadata)
            await publish(bus, event, metadata=metadata, key=key, **kwargs)

    return functools.update_wrapper(traced_publish, publish)


def _traced_publish_many(
    bus: Any, publish_many: Callable[..., Coroutine[Any, Any, None]], traced: Instrumentation
) -> Callable[..., Coroutine[Any, Any, None]]:
    async def traced_publish_many(events: Iterable[DomainEvent], **kwargs: Any) -> None:
        items = list(events)
        with traced.send(items):
            await publish_many(bus, items, **kwargs)

    return functools.update_wrapper(traced_publish_many, publish_many)
