"""The one port application code talks to: ``EventBus``.

Why a ``Protocol``: use cases depend on this shape only, so the in-memory bus, the broker
adapters and a test double are interchangeable without inheriting from anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol, Self, TypeAlias, runtime_checkable

from hexbus.domain.events import DomainEvent

__all__ = [
    "EventBus",
    "EventBusProtocol",
    "EventPattern",
    "Handler",
    "Middleware",
    "SubscriptionTarget",
]

#: A handler takes the event; ``async def`` or plain ``def`` (plain ones run in a thread).
Handler: TypeAlias = Callable[[Any], Awaitable[None] | None]
#: Middleware sees each published event and returns it (maybe changed) or ``None`` to drop it.
Middleware: TypeAlias = Callable[
    [DomainEvent], "DomainEvent | Awaitable[DomainEvent | None] | None"
]
#: An AMQP topic pattern such as ``"user.*"`` or ``"#"``.
EventPattern: TypeAlias = str
SubscriptionTarget: TypeAlias = "type[DomainEvent] | str"


@runtime_checkable
class EventBus(Protocol):
    """Publish domain events and subscribe handlers, whatever the transport."""

    def subscribe(
        self, event_type: SubscriptionTarget, handler: Handler, *, name: str | None = None
    ) -> None: ...

    def unsubscribe(self, event_type: SubscriptionTarget, handler: Handler) -> None: ...

    def register(self, obj: Any) -> None: ...

    def unregister(self, obj: Any) -> None: ...

    def include(self, router: Any) -> None: ...

    def add_middleware(self, middleware: Middleware) -> None: ...

    def clear(self) -> None: ...

    async def publish(
        self,
        event: DomainEvent,
        *,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        session: Any = None,
    ) -> None: ...

    async def publish_many(self, events: Iterable[DomainEvent]) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


EventBusProtocol = EventBus
