"""The publish pipeline: admission, written once for every adapter.

Why one place: before this module each adapter checked state, type, metadata and
middleware in its own order, and the copies disagreed (a bad ``metadata`` with a
dropping middleware raised on one transport and vanished on another). Now every
adapter calls ``Admission.admit`` and gets an ``Admitted`` event (or ``None``: dropped
by middleware) to put on its transport; the memory adapter's hand-tuned fast path runs
the same steps in the same order (``InMemoryEventBus.publish``), and the contract suite
checks that all of them behave alike.

The steps, in order (the ``EventBus.publish`` docstring is the user-facing contract):

1. the bus is running (``NotStartedError`` / ``BusClosedError``);
2. the event is a ``DomainEvent`` (``NotADomainEventError``);
3. metadata is ``str -> str`` (``InvalidMetadataError``), checked before middleware so
   the caller's mistake is reported even when the event is then dropped;
4. middleware, in the order added; ``None`` drops the event;
5. causation stamping: an event published inside a handler that carries no
   ``causation_id`` (it was built outside the handler) gets the handled event as its
   cause and joins its conversation (``correlation_id``), exactly like an event built
   inside the handler;
6. the outbox: with one configured (``bus.use_outbox``) and a ``session`` given, the
   admitted events are written into that session's transaction and nothing is left for
   the transport (the relay sends them after commit; a rollback takes them back).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from hexbus.application.lifecycle import BusState
from hexbus.domain.context import delivery_context
from hexbus.domain.errors import InvalidMetadataError, NotADomainEventError
from hexbus.domain.events import DomainEvent

if TYPE_CHECKING:
    from hexbus.application.bus import EventBusBase

__all__ = ["Admission", "Admitted", "OutboxWriter", "stamp_causation", "validate_metadata"]

_NO_METADATA: Mapping[str, str] = MappingProxyType({})
_RUNNING = BusState.RUNNING


class Admitted(NamedTuple):
    """An event that passed admission: what a transport sends."""

    event: DomainEvent
    metadata: Mapping[str, str] = _NO_METADATA
    key: str | None = None
    session: Any = None


class OutboxWriter(Protocol):
    """Step 6: where admitted events go when the publisher hands in a ``session``.

    Implemented over SQL by ``hexbus.infrastructure.outbox.SqlOutboxWriter``; the
    application layer knows only this seam, so every adapter gets the outbox at once.
    """

    async def write(self, session: Any, items: Sequence[Admitted]) -> None:
        """Add ``items`` to the outbox inside ``session``'s transaction (not committed:
        the caller commits or rolls back)."""
        ...


def validate_metadata(metadata: Mapping[str, str] | None) -> Mapping[str, str]:
    """Check publish metadata is ``str -> str`` (it travels as message headers)."""
    if metadata is None:
        return _NO_METADATA
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(
            f"metadata must be a mapping of str to str, got {type(metadata).__name__}"
        )
    if not metadata:
        return _NO_METADATA
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidMetadataError(
                f"metadata entry {key!r}: {value!r} is not str → str; convert values with "
                "str() before publishing (metadata travels as message headers)"
            )
    return MappingProxyType(dict(metadata))


def not_a_domain_event(event: object) -> NotADomainEventError:
    return NotADomainEventError(
        f"publish() takes a DomainEvent instance, got {type(event).__name__}; "
        "build one (e.g. UserCreated(...)) or use hexbus.event_from_dict(type, data)"
    )


def stamp_causation(event: DomainEvent) -> DomainEvent:
    """Step 5: inside a handler, an event without a cause gets the handled one.

    Events built inside a handler already have it (the ``DomainEvent`` defaults read the
    same context); this covers one built before and published inside. Its correlation
    id is replaced only when it is the default (its own id): one set on purpose stays.
    """
    context = delivery_context.get()
    parent = context.event
    if parent is None or event.causation_id is not None or parent is event:
        return event
    update: dict[str, Any] = {"causation_id": context.wire_id}
    if event.correlation_id == str(event.event_id):
        update["correlation_id"] = parent.correlation_id
    return event.model_copy(update=update)


class Admission:
    """Admission for one bus: ``admit`` / ``admit_many`` return what its transport sends."""

    __slots__ = ("_bus",)

    def __init__(self, bus: EventBusBase) -> None:
        self._bus = bus

    def check(self, event: object) -> None:
        """Steps 1 and 2 (the part that needs no await)."""
        bus = self._bus
        if bus.state is not _RUNNING:
            bus._raise_not_running()
        if not isinstance(event, DomainEvent):
            raise not_a_domain_event(event)

    async def admit(
        self,
        event: DomainEvent,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        session: Any = None,
    ) -> Admitted | None:
        """Steps 1-6 for one event; ``None`` when there is nothing for the transport to
        send (a middleware dropped it, or it went into the outbox)."""
        self.check(event)
        checked = validate_metadata(metadata)
        middleware = self._bus.middleware
        if middleware.items:
            changed = await middleware.apply(event)
            if changed is None:
                return None
            event = changed
        admitted = Admitted(stamp_causation(event), checked, key, session)
        bus = self._bus
        outbox = bus.outbox
        if session is not None and outbox is not None:
            if bus.instrumentation is not None:  # stored, not sent: the relay sends it
                bus.instrumentation.deferred()
            await outbox.write(session, (admitted,))
            return None
        return admitted

    async def admit_many(
        self, events: Iterable[DomainEvent], session: Any = None
    ) -> list[Admitted]:
        """Steps 1-6 for each event, in order; dropped ones are left out, and the list is
        empty when they went into the outbox (``session`` given, an outbox configured).

        Every event is checked before any is sent, so a bad item in the middle raises
        before the transport saw the first (nothing half-published by admission). With
        instrumentation, each event's metadata gets its creation context (``traceparent``:
        the ``send`` span of this batch); a single ``publish`` gets it from the ``send``
        wrapper (``hexbus.application.observing``) before admission.
        """
        items = list(events)
        for event in items:
            self.check(event)
        bus = self._bus
        traced = bus.instrumentation
        if not bus.middleware.items:
            if traced is None:
                admitted = [Admitted(stamp_causation(e), session=session) for e in items]
            else:
                admitted = [
                    Admitted(
                        stamp_causation(e),
                        traced.creation_metadata(e, None) or _NO_METADATA,
                        session=session,
                    )
                    for e in items
                ]
        else:
            admitted = []
            for event in items:
                changed = await bus.middleware.apply(event)
                if changed is not None:
                    metadata = None if traced is None else traced.creation_metadata(changed, None)
                    admitted.append(
                        Admitted(
                            stamp_causation(changed), metadata or _NO_METADATA, session=session
                        )
                    )
        outbox = bus.outbox
        if session is not None and outbox is not None:
            if admitted:
                if traced is not None:  # stored, not sent: the relay sends them
                    traced.deferred()
                await outbox.write(session, admitted)
            return []
        return admitted

