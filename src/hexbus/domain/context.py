"""Per-delivery context, carried in a ``contextvars.ContextVar``.

Why a contextvar and not an attribute of the bus: two publishes that overlap in time
(two HTTP requests, say) must each see their own metadata and session. A contextvar
is copied into every task, so each handler sees the context of the publish that
started it and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from hexbus.domain.events import DomainEvent

__all__ = ["DeliveryContext", "current_context"]

_EMPTY: Mapping[str, str] = MappingProxyType({})


class DeliveryContext(NamedTuple):
    """What a handler knows about the delivery it is running for.

    ``attempt`` starts at 1 and grows with each redelivery on broker adapters.
    ``session`` is whatever the publisher passed (e.g. an ``AsyncSession``); it only
    exists in process, broker adapters never transport it. A ``NamedTuple`` because one
    is built per publish on the hot path, and it is immutable for free.

    ``cloudevent_id`` is the CloudEvents ``id`` exactly as it arrived, set only when it is
    not the text of ``event.event_id``: a foreign producer's ``order-42`` (the event then
    carries a stable ``event_id`` derived from (source, id), see
    ``docs/architecture/interop.md``) or a UUID spelled differently (``ABCD...``). It is
    ``None`` for everything hexbus produced itself, so the common case costs nothing.
    Read ``wire_id`` for the id as it was on the wire either way, and ``dedup_key`` for
    the identity the CloudEvents spec defines, (source, id).
    """

    event: DomainEvent | None = None
    metadata: Mapping[str, str] = _EMPTY
    attempt: int = 0
    session: Any = None
    #: The key the publisher passed, or ``None``; read ``key`` for the effective one.
    explicit_key: str | None = None
    subscription: str | None = None
    #: The CloudEvents ``id`` as received when it is not ``str(event.event_id)``, else ``None``.
    cloudevent_id: str | None = None

    @property
    def key(self) -> str | None:
        """The publish key (ordering per aggregate); defaults to ``str(event_id)``.

        An event published without a key travels without one (Kafka: no record key,
        so the client batches freely; RabbitMQ: no ``x-hexbus-key`` header) and is
        ordered with no other event, as if its own id were its key: hence the
        default. ``explicit_key`` is ``None`` then. Computed on access because turning
        a UUID into text costs more than the rest of an in-memory publish, and most
        handlers never ask.
        """
        if self.explicit_key is not None:
            return self.explicit_key
        return None if self.event is None else str(self.event.event_id)

    @property
    def wire_id(self) -> str | None:
        """The event's CloudEvents ``id`` as it was on the wire (``None`` outside handlers).

        ``str(event.event_id)`` for events hexbus produced; the producer's own id (e.g.
        ``order-42``) for a foreign event whose id is not a UUID. Re-publishing the event
        being handled writes this id again, so a chain of forwarders keeps one identity.
        """
        if self.cloudevent_id is not None:
            return self.cloudevent_id
        return None if self.event is None else str(self.event.event_id)

    @property
    def dedup_key(self) -> tuple[str, str] | None:
        """``(source, id)``: what the CloudEvents spec says identifies an event.

        For an inbox / idempotency table: two deliveries with the same key are the same
        event (a redelivery or a replay). ``source`` is ``event.source``, where ``""``
        stands for this service (as everywhere in hexbus), so keys are stable within one
        consuming service. ``None`` outside handlers.
        """
        event = self.event
        if event is None:
            return None
        wire_id = self.cloudevent_id
        return (event.source, str(event.event_id) if wire_id is None else wire_id)


_NO_CONTEXT = DeliveryContext()
delivery_context: ContextVar[DeliveryContext] = ContextVar(
    "hexbus_delivery_context", default=_NO_CONTEXT
)


def current_context() -> DeliveryContext:
    """The delivery being handled; outside handlers an empty one (``event is None``)."""
    return delivery_context.get()
