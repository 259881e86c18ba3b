"""Publish middleware: ``event -> event | None``, applied in the order added.

Why so small a shape: a middleware either passes the event on (maybe a changed copy,
events are frozen) or drops it by returning ``None``; anything richer (retries,
transactions) belongs in the adapter, where the transport's guarantees are known.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hexbus.domain.context import current_context
from hexbus.domain.errors import InvalidHandlerError
from hexbus.domain.events import DomainEvent
from hexbus.domain.ports import Middleware

__all__ = [
    "CorrelationIdMiddleware",
    "FilterMiddleware",
    "LoggingMiddleware",
    "MiddlewareChain",
]


class MiddlewareChain:
    """The ordered middlewares of one bus; sync and async callables both work."""

    def __init__(self) -> None:
        self.items: list[tuple[Middleware, bool]] = []

    def add(self, middleware: Middleware) -> None:
        if not callable(middleware):
            raise InvalidHandlerError(
                f"middleware {middleware!r} is not callable; pass a function or object that "
                "takes the event and returns it (or None to drop it)"
            )
        is_async = inspect.iscoroutinefunction(middleware) or inspect.iscoroutinefunction(
            getattr(middleware, "__call__", None)  # noqa: B004
        )
        self.items.append((middleware, is_async))

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    async def apply(self, event: DomainEvent) -> DomainEvent | None:
        current: DomainEvent | None = event
        for middleware, is_async in self.items:
            result: Any = middleware(current)  # type: ignore[arg-type]
            if is_async or inspect.isawaitable(result):
                result = await result
            if result is None:
                return None
            if not isinstance(result, DomainEvent):
                raise InvalidHandlerError(
                    f"middleware {middleware!r} returned {type(result).__name__}; it must "
                    "return a DomainEvent (the same or a copy) or None to drop the event"
                )
            current = result
        return current


class CorrelationIdMiddleware:
    """Stamp events that start a conversation with the request's correlation id.

    Why: a web request has an ``X-Request-ID`` long before any event exists. Give this
    middleware a callable that reads it (typically from your own contextvar); events
    published outside a handler get it as ``correlation_id``. Events published inside
    a handler already inherit the correlation id of the event being handled.
    """

    def __init__(self, get_correlation_id: Callable[[], str | None]) -> None:
        self._get = get_correlation_id

    def __call__(self, event: DomainEvent) -> DomainEvent:
        if event.causation_id is not None or current_context().event is not None:
            return event
        correlation_id = self._get()
        if not correlation_id or correlation_id == event.correlation_id:
            return event
        return event.model_copy(update={"correlation_id": correlation_id})


class LoggingMiddleware:
    """Log every published event as one structured record (ids in ``extra``)."""

    def __init__(
        self, logger: logging.Logger | None = None, level: int = logging.INFO
    ) -> None:
        self._logger = logger or logging.getLogger("hexbus.events")
        self._level = level

    def __call__(self, event: DomainEvent) -> DomainEvent:
        if self._logger.isEnabledFor(self._level):
            self._logger.log(
                self._level,
                "publish %s %s",
                event.event_type,
                event.event_id,
                extra={
                    "event_type": event.event_type,
                    "event_id": str(event.event_id),
                    "correlation_id": event.correlation_id,
                    "causation_id": event.causation_id,
                },
            )
        return event


class FilterMiddleware:
    """Drop events for which ``predicate(event)`` is false (or whose type is excluded)."""

    def __init__(
        self,
        predicate: Callable[[DomainEvent], bool | Awaitable[bool]] | None = None,
        *,
        exclude_types: Sequence[str] = (),
    ) -> None:
        self._predicate = predicate
        self._exclude = frozenset(exclude_types)

    async def __call__(self, event: DomainEvent) -> DomainEvent | None:
        if event.event_type in self._exclude:
            return None
        if self._predicate is not None:
            keep = self._predicate(event)
            if inspect.isawaitable(keep):
                keep = await keep
            if not keep:
                return None
        return event
