"""``RecordingEventBus``: an ``EventBus`` for unit tests of application code.

Why a recording bus rather than a mock: a ``Mock()`` accepts anything, so a use case that
publishes a dict, forgets ``await`` or passes bad metadata still "passes". This bus
implements the real port with the real checks (``NotADomainEventError``,
``InvalidMetadataError``, the handler wiring check, the lifecycle errors) and keeps what
was published for assertions. With ``dispatch=True`` it also runs subscribed handlers
through an ``InMemoryEventBus`` (await mode), for tests that cover a whole reaction chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from hexbus.application.bus import BusState, EventBusBase
from hexbus.application.handlers import Subscription
from hexbus.application.patterns import compile_pattern
from hexbus.application.publishing import Admitted
from hexbus.domain.events import DomainEvent, EventRegistry, event_registry
from hexbus.infrastructure.memory import InMemoryEventBus

__all__ = ["PublishedRecord", "RecordingEventBus"]

E = TypeVar("E", bound=DomainEvent)

_MAX_LISTED = 20  # how many published events an assertion message lists


@dataclass(frozen=True, slots=True)
class PublishedRecord:
    """One ``publish`` call as the transport would have seen it (after middleware)."""

    event: DomainEvent
    metadata: Mapping[str, str] = field(default_factory=dict)
    key: str | None = None
    session: Any = None


def _describe(event: DomainEvent) -> str:
    fields = ", ".join(
        f"{name}={getattr(event, name)!r}" for name in _own_fields(type(event))
    )
    return f"{type(event).__qualname__}({fields})"


def _own_fields(cls: type[DomainEvent]) -> list[str]:
    """The fields a subclass declares, without the envelope (id, time, correlation ...)."""
    return [name for name in cls.model_fields if name not in DomainEvent.model_fields]


class RecordingEventBus(EventBusBase):
    """Records every published event; optionally dispatches it to subscribed handlers.

    Lifecycle: with ``autostart=True`` (the default) the bus is running from
    construction, because a unit test of a use case should not need ``await
    bus.start()`` ceremony; ``start()`` is then a no-op. ``stop()`` closes it like a real
    bus (later publishes raise ``BusClosedError``). With ``autostart=False`` it behaves
    exactly like the real adapters: ``NotStartedError`` until ``start()``.

    ``dispatch=False`` (default): subscriptions are checked and kept (so wiring mistakes
    still fail) but no handler runs. ``dispatch=True``: each published event is also
    delivered, with the real memory adapter in await mode, so handlers have finished when
    ``publish`` returns.
    """

    adapter_name = "recording"

    def __init__(
        self,
        *,
        dispatch: bool = False,
        autostart: bool = True,
        registry: EventRegistry = event_registry,
    ) -> None:
        super().__init__(registry=registry)
        self.dispatch = dispatch
        self.inner: InMemoryEventBus | None = (
            InMemoryEventBus(registry=registry, mode="await") if dispatch else None
        )
        self.records: list[PublishedRecord] = []
        if autostart:
            self.state = BusState.RUNNING

    # -- what was published ----------------------------------------------------------
    @property
    def published(self) -> list[DomainEvent]:
        """Every event published so far, in order (a copy: safe to keep)."""
        return [record.event for record in self.records]

    @overload
    def published_of(self, event_type: type[E]) -> list[E]: ...

    @overload
    def published_of(self, event_type: str) -> list[DomainEvent]: ...

    def published_of(self, event_type: type[E] | str) -> list[E] | list[DomainEvent]:
        """Published events of one class (exact, like ``subscribe``) or topic pattern."""
        if isinstance(event_type, str):
            regex = compile_pattern(event_type)
            return [e for e in self.published if regex.match(e.event_type)]
        return [e for e in self.published if type(e) is event_type]

    def records_of(self, event_type: type[DomainEvent] | str) -> list[PublishedRecord]:
        """Like ``published_of`` but with the metadata, key and session of each publish."""
        wanted = {id(e) for e in self.published_of(event_type)}
        return [r for r in self.records if id(r.event) in wanted]

    def assert_published(self, event_type: type[E], /, **fields: Any) -> E:
        """Assert an ``event_type`` with these field values was published; return it.

        Fields not given are not compared. The failure message lists what was published,
        so a typo in a value is visible without a debugger.
        """
        self._check_field_names(event_type, fields)
        for event in self.published_of(event_type):
            if all(getattr(event, name) == value for name, value in fields.items()):
                return event
        raise AssertionError(self._mismatch(event_type, fields))

    def assert_not_published(self, event_type: type[DomainEvent], /, **fields: Any) -> None:
        """Assert no ``event_type`` matching these field values was published."""
        self._check_field_names(event_type, fields)
        for event in self.published_of(event_type):
            if all(getattr(event, name) == value for name, value in fields.items()):
                raise AssertionError(
                    f"expected no {self._wanted(event_type, fields)} to be published, "
                    f"but found {_describe(event)}"
                )

    def clear_published(self) -> None:
        """Forget what was published; subscriptions stay (between arrange and act)."""
        self.records.clear()

    def clear(self) -> None:
        """Blank slate: remove every subscription (the port's meaning) and the records."""
        super().clear()
        self.records.clear()

    @staticmethod
    def _wanted(event_type: type[DomainEvent], fields: Mapping[str, Any]) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        return f"{event_type.__qualname__}({given})" if given else event_type.__qualname__

    @staticmethod
    def _check_field_names(event_type: type[DomainEvent], fields: Mapping[str, Any]) -> None:
        unknown = sorted(set(fields) - set(event_type.model_fields))
        if unknown:
            raise AssertionError(
                f"{event_type.__qualname__} has no field(s) {', '.join(unknown)}; its "
                f"fields are {', '.join(event_type.model_fields)}"
            )

    def _mismatch(self, event_type: type[DomainEvent], fields: Mapping[str, Any]) -> str:
        lines = [f"expected {self._wanted(event_type, fields)} to be published"]
        same_type = self.published_of(event_type)
        if same_type and fields:
            lines.append(f"{len(same_type)} {event_type.__qualname__} event(s) differ:")
            for event in same_type[:_MAX_LISTED]:
                diffs = ", ".join(
                    f"{name}={getattr(event, name)!r} (expected {value!r})"
                    for name, value in fields.items()
                    if getattr(event, name) != value
                )
                lines.append(f"  - {event.event_id}: {diffs}")
        events = self.published
        if not events:
            lines.append("nothing was published")
        else:
            lines.append(f"published ({len(events)}):")
            lines.extend(f"  - {_describe(event)}" for event in events[:_MAX_LISTED])
            if len(events) > _MAX_LISTED:
                lines.append(f"  ... and {len(events) - _MAX_LISTED} more")
        return "\n".join(lines)

    # -- the port ---------------------------------------------------------------------
    async def publish(
        self,
        event: DomainEvent,
        *,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        session: Any = None,
    ) -> None:
        """Record ``event`` (after admission); with ``dispatch=True`` also deliver it.

        Admission is the one every adapter runs (``hexbus.application.publishing``):
        an event dropped by middleware is not recorded, as a transport would not see it.
        """
        admitted = await self.admission.admit(event, metadata, key, session)
        if admitted is not None:
            await self._record(admitted)

    async def publish_many(self, events: Iterable[DomainEvent], *, session: Any = None) -> None:
        for admitted in await self.admission.admit_many(events, session):
            await self._record(admitted)

    async def _record(self, admitted: Admitted) -> None:
        event, metadata, key, session = admitted
        self.records.append(PublishedRecord(event, dict(metadata), key, session))
        if self.inner is not None:
            if self.inner.state is BusState.NEW:
                await self.inner.start()
            await self.inner.publish(event, metadata=metadata, key=key, session=session)

    def _subscribed(self, sub: Subscription) -> None:
        if self.inner is not None:
            self.inner.subscribe(sub.target, sub.handler, name=sub.name)

    def _unsubscribed(self, sub: Subscription) -> None:
        if self.inner is not None:
            self.inner.unsubscribe(sub.target, sub.handler)

    async def _start(self) -> None:
        if self.inner is not None:
            await self.inner.start()

    async def _stop(self) -> None:
        if self.inner is not None:
            await self.inner.stop()

    def __repr__(self) -> str:
        return (
            f"<RecordingEventBus state={self.state.value} published={len(self.records)} "
            f"subscriptions={len(self.subscriptions)} dispatch={self.dispatch}>"
        )
