"""What every bus shares, whatever the transport: subscriptions, middleware, lifecycle.

Why a base class next to the ``EventBus`` protocol: the protocol is what use cases
depend on; this class is how adapters avoid writing subscribe/register/include and the
lifecycle checks three times, so the three behave identically.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from hexbus.application.consuming import ConsumePipeline
from hexbus.application.dispatch import Dispatcher
from hexbus.application.handlers import (
    EventRouter,
    Inbox,
    Subscription,
    SubscriptionTable,
    handler_subscriptions,
)
from hexbus.application.lifecycle import BusState
from hexbus.application.middleware import MiddlewareChain
from hexbus.application.observing import Instrumentation, instrument_publishing
from hexbus.application.publishing import Admission, OutboxWriter, validate_metadata
from hexbus.domain.errors import BusClosedError, ConfigurationError, NotStartedError
from hexbus.domain.events import DomainEvent, EventRegistry, event_registry
from hexbus.domain.ports import Handler, Middleware, SubscriptionTarget

__all__ = ["BusState", "EventBusBase", "merged_config", "validate_metadata"]

C = TypeVar("C", bound="_Config")


class _Config(Protocol):
    """The shape of an adapter's (pydantic) config model."""

    def model_dump(self) -> dict[str, Any]: ...

    @classmethod
    def model_validate(cls, obj: Any) -> Self: ...


def merged_config(config_cls: type[C], base: C | None, overrides: Mapping[str, Any]) -> C:
    """``base`` (or the defaults) with ``overrides`` applied and validated again.

    Every adapter takes ``Bus(config, **overrides)`` so tests and scripts can change one
    option without spelling out the rest.
    """
    if base is None:
        base = config_cls.model_validate({})
    if not overrides:
        return base
    return config_cls.model_validate({**base.model_dump(), **overrides})


class EventBusBase:
    """Subscriptions, middleware and lifecycle; adapters add ``publish``/``start``/``stop``."""

    adapter_name = "base"
    #: Tracing and metrics hooks (``hexbus.application.observing``); ``None``: off, free.
    instrumentation: Instrumentation | None = None
    #: Does ``publish_many`` send the batch itself (one ``send`` span for it)? ``False``
    #: for a bus whose ``publish_many`` calls ``publish`` per event (a span each).
    batch_send_span = True

    def __init__(self, *, registry: EventRegistry = event_registry) -> None:
        self.registry = registry
        self.subscriptions = SubscriptionTable(registry)
        self.middleware = MiddlewareChain()
        self.state = BusState.NEW
        #: The publish pipeline's admission (state, type, metadata, middleware, causation).
        self.admission = Admission(self)
        #: Where ``publish(..., session=s)`` writes instead of sending (``use_outbox``).
        self.outbox: OutboxWriter | None = None
        # Handler objects given to register(): the bus calls their stop() after its own,
        # so buffered handlers (the audit log) never lose what they hold.
        self._registered: list[Any] = []

    # -- subscriptions ---------------------------------------------------------------
    def subscribe(
        self,
        event_type: SubscriptionTarget,
        handler: Handler,
        *,
        name: str | None = None,
        idempotent: bool | None = None,
    ) -> None:
        """Subscribe ``handler`` to an event class (exact) or an AMQP-style pattern.

        ``idempotent=True`` (or ``@idempotent`` on the handler) runs it through the inbox.
        """
        sub = self.subscriptions.add(event_type, handler, name, idempotent=idempotent)
        if sub is not None:
            self._subscribed(sub)

    def unsubscribe(self, event_type: SubscriptionTarget, handler: Handler) -> None:
        sub = self.subscriptions.remove(event_type, handler)
        if sub is not None:
            self._unsubscribed(sub)

    def register(self, obj: Any) -> None:
        """Subscribe an ``EventHandler`` object's ``handle`` to each of its ``event_types``."""
        for target, handler, name in handler_subscriptions(obj):
            self.subscribe(target, handler, name=name)
        if not any(o is obj for o in self._registered):
            self._registered.append(obj)

    def unregister(self, obj: Any) -> None:
        for target, handler, _ in handler_subscriptions(obj):
            self.unsubscribe(target, handler)
        self._registered = [o for o in self._registered if o is not obj]

    def include(self, router: EventRouter) -> None:
        """Subscribe every handler collected by ``router`` (``@router.on`` / ``@on_event``)."""
        for target, handler, name in router:
            self.subscribe(target, handler, name=name)

    def clear(self) -> None:
        """Remove every subscription (between tests)."""
        for sub in list(self.subscriptions):
            self.unsubscribe(sub.target, sub.handler)

    def add_middleware(self, middleware: Middleware) -> None:
        self.middleware.add(middleware)

    # -- the outbox and the inbox (set by the container from HEXBUS_OUTBOX_URL) ---------
    def use_outbox(self, writer: OutboxWriter | None) -> None:
        """``publish(..., session=s)`` / ``publish_many(..., session=s)`` write the events
        into ``s``'s transaction through ``writer``; a relay sends them after commit."""
        self.outbox = writer

    def use_inbox(self, inbox: Inbox | None) -> None:
        """Idempotent subscriptions record their deliveries in ``inbox`` (see
        ``hexbus.idempotent``)."""
        self.subscriptions.use_inbox(inbox)

    def _subscribed(self, sub: Subscription) -> None:
        """Hook for adapters that must declare something for a new subscription."""

    def _unsubscribed(self, sub: Subscription) -> None:
        """Hook for adapters that must tear something down for a removed subscription."""

    # -- observing ---------------------------------------------------------------------
    def instrument(self, instrumentation: Instrumentation | None) -> None:
        """Report spans and metrics to ``instrumentation`` (``None``: stop reporting).

        Reaches the publish wrapper and every consume pipeline and dispatcher the bus
        holds, so one call covers the whole bus whatever the transport.
        ``hexbus.infrastructure.telemetry.instrument`` builds the OpenTelemetry one.
        """
        self.instrumentation = instrumentation
        for part in vars(self).values():
            if isinstance(part, ConsumePipeline | Dispatcher):
                part.instrumentation = instrumentation
        instrument_publishing(self, instrumentation, batch_span=self.batch_send_span)

    # -- publishing --------------------------------------------------------------------
    def _check_publish(self, event: Any) -> None:
        """Admission steps 1 and 2 (see ``hexbus.application.publishing``)."""
        self.admission.check(event)

    def _raise_not_running(self) -> None:
        if self.state is BusState.NEW:
            raise NotStartedError(
                f"the {self.adapter_name} event bus is not started; call `await bus.start()` "
                "or use `async with bus:` before publishing"
            )
        raise BusClosedError(
            f"the {self.adapter_name} event bus is {self.state.value}; a stopped bus cannot "
            "publish or be restarted, create a new one"
        )

    async def publish(
        self,
        event: DomainEvent,
        *,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        session: Any = None,
    ) -> None:
        raise NotImplementedError

    async def publish_many(self, events: Iterable[DomainEvent], *, session: Any = None) -> None:
        """Publish in order; adapters override this to batch."""
        for event in list(events):
            await self.publish(event, session=session)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        if self.state is BusState.RUNNING:
            return
        if self.state is not BusState.NEW:
            self._raise_not_running()
        self._check_inbox()
        await self._start()
        self.state = BusState.RUNNING

    async def stop(self) -> None:
        """Drain in-flight work and close; calling it again is harmless."""
        if self.state in (BusState.CLOSED, BusState.STOPPING):
            return
        was_new = self.state is BusState.NEW
        self.state = BusState.STOPPING
        try:
            if not was_new:
                await self._stop()
        finally:
            self.state = BusState.CLOSED
            for obj in self._registered:
                stop = getattr(obj, "stop", None)
                if callable(stop):
                    result = stop()
                    if inspect.isawaitable(result):
                        await result

    def _check_inbox(self) -> None:
        """An idempotent subscription without an inbox would run duplicates: refuse."""
        if self.subscriptions.inbox is not None:
            return
        names = self.subscriptions.idempotent_names()
        if names:
            raise ConfigurationError(
                f"subscription(s) {', '.join(names)} are idempotent but this bus has no "
                "inbox: set HEXBUS_OUTBOX_URL (e.g. sqlite+aiosqlite:///hexbus.db) so the "
                "container gives it one, or call bus.use_inbox(...) before start()"
            )

    async def _start(self) -> None:
        """Adapter start-up (connect, declare)."""

    async def _stop(self) -> None:
        """Adapter shutdown (drain, close)."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} state={self.state.value} "
            f"subscriptions={len(self.subscriptions)}>"
        )
