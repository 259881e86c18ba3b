"""Subscriptions: who handles what, and under which durable name.

Why one ``SubscriptionTable`` shared by every adapter: the memory bus routes with it,
and the broker adapters declare one durable queue / consumer group per subscription
name from it, so ``subscribe`` behaves the same whatever the transport.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from hexbus.application.patterns import compile_pattern
from hexbus.application.wiring import check_handler, handler_name, is_async_handler
from hexbus.domain.errors import InvalidHandlerError, InvalidPatternError
from hexbus.domain.events import DomainEvent, EventRegistry, event_registry
from hexbus.domain.ports import Handler, SubscriptionTarget

__all__ = [
    "EventHandler",
    "EventRouter",
    "Subscription",
    "SubscriptionTable",
    "default_router",
    "idempotent",
    "is_idempotent",
    "on_event",
    "run_in_thread",
]

F = TypeVar("F", bound=Callable[..., Any])

#: What runs a handler once for an event (``Subscription.call``).
HandlerCall = Callable[[Any], Coroutine[Any, Any, None]]

#: The attribute ``@idempotent`` sets on a handler function.
_IDEMPOTENT_ATTR = "__hexbus_idempotent__"


def idempotent(handler: F) -> F:
    """Mark ``handler`` idempotent: each event runs it at most once *in effect*.

    With the inbox (``HEXBUS_OUTBOX_URL``), every delivery opens a database transaction,
    records ``(subscription, source, event id)`` in the inbox table and runs the handler
    with that transaction's session in ``current_context().session``; the inbox row and
    the handler's writes commit together, and a redelivered duplicate is acknowledged
    without running the handler. Same as ``subscribe(..., idempotent=True)``,
    ``@on_event(A, idempotent=True)`` or ``idempotent = True`` on an ``EventHandler``.
    """
    setattr(handler, _IDEMPOTENT_ATTR, True)
    return handler


def is_idempotent(handler: Any) -> bool:
    """Was ``handler`` marked idempotent (``@idempotent``, or its ``EventHandler`` class)?"""
    if getattr(handler, _IDEMPOTENT_ATTR, False) is True:
        return True
    owner = getattr(handler, "__self__", None)
    return owner is not None and getattr(owner, "idempotent", False) is True


class Inbox(Protocol):
    """What makes an idempotent subscription's handler run once in effect.

    Implemented over SQL by ``hexbus.infrastructure.outbox.SqlInbox``; the application
    layer only knows this seam, so every transport gets the inbox the same way.
    """

    def guard(self, subscription: str, call: HandlerCall) -> HandlerCall:
        """``call`` wrapped: record the delivery's ``dedup_key`` for ``subscription`` in
        a transaction, run ``call`` with the session in the delivery context, commit
        both; a duplicate returns without running ``call``."""
        ...


async def run_in_thread(handler: Callable[[Any], Any], event: DomainEvent) -> None:
    """Run a plain ``def`` handler in the default executor so it cannot block the loop."""
    result = await asyncio.to_thread(handler, event)
    if inspect.isawaitable(result):
        await result


@dataclass(frozen=True, slots=True, eq=False)
class Subscription:
    """One handler bound to one event class or pattern, under a durable ``name``."""

    target: SubscriptionTarget
    handler: Handler
    name: str
    is_async: bool
    #: Runs through the inbox (``@idempotent``): at most once in effect per event.
    idempotent: bool = False
    #: ``call(event)`` returns the coroutine that runs the handler once: the handler
    #: itself for ``async def``, a worker-thread run for plain ``def`` (precomputed so
    #: dispatch does not decide per event).
    call: Callable[[Any], Coroutine[Any, Any, None]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "call", self.plain_call())

    def plain_call(self) -> HandlerCall:
        """The handler run without the inbox."""
        if self.is_async:
            return self.handler  # type: ignore[return-value]
        return functools.partial(run_in_thread, self.handler)

    def use_inbox(self, inbox: Inbox | None) -> None:
        """Route ``call`` through ``inbox`` (idempotent subscriptions only)."""
        if self.idempotent:
            call = self.plain_call()
            if inbox is not None:
                call = inbox.guard(self.name, call)
            object.__setattr__(self, "call", call)

    @property
    def routing_key(self) -> str:
        """The event type or pattern as the brokers see it (AMQP binding key)."""
        return self.target if isinstance(self.target, str) else self.target.event_type

    def matches(self, event_cls: type[DomainEvent]) -> bool:
        if isinstance(self.target, str):
            return compile_pattern(self.target).match(event_cls.event_type) is not None
        return event_cls is self.target

    def matches_name(self, event_type: str) -> bool:
        """Does this subscription want events whose wire name is ``event_type``?

        For transports that see the name before decoding (a shared Kafka topic): a
        class target matches its own ``event_type``, a pattern matches by topic syntax.
        """
        if isinstance(self.target, str):
            return compile_pattern(self.target).match(event_type) is not None
        return self.target.event_type == event_type


def _normalise_target(target: Any) -> SubscriptionTarget:
    if isinstance(target, str):
        compile_pattern(target)  # an exact wire name is a pattern without wildcards
        return target
    if isinstance(target, type) and issubclass(target, DomainEvent):
        if target is DomainEvent:
            raise InvalidPatternError(
                "subscribe to DomainEvent itself is ambiguous; use the pattern '#' for all events"
            )
        return target
    raise InvalidPatternError(
        f"cannot subscribe to {target!r}: pass a DomainEvent subclass or an AMQP-style "
        "pattern string such as 'user.*' or '#'"
    )


class SubscriptionTable:
    """The subscriptions of one bus, with a per-event-class lookup cache."""

    def __init__(self, registry: EventRegistry = event_registry) -> None:
        self._registry = registry
        self._subs: list[Subscription] = []
        #: event class → its subscriptions; filled lazily, emptied on every change.
        self.routes: dict[type[DomainEvent], tuple[Subscription, ...]] = {}
        #: (subscription name, event class) → that subscription's matching handlers.
        self._named: dict[tuple[str, type[DomainEvent]], tuple[Subscription, ...]] = {}
        #: (subscription name, wire name) → does the subscription want that type?
        self._accepts: dict[tuple[str, str], bool] = {}
        #: Where idempotent subscriptions record their deliveries (``use_inbox``).
        self.inbox: Inbox | None = None

    def use_inbox(self, inbox: Inbox | None) -> None:
        """Run every idempotent subscription, present and future, through ``inbox``."""
        self.inbox = inbox
        for sub in self._subs:
            sub.use_inbox(inbox)

    def idempotent_names(self) -> list[str]:
        """The subscriptions that need an inbox."""
        return list(dict.fromkeys(s.name for s in self._subs if s.idempotent))

    def add(
        self,
        target: Any,
        handler: Any,
        name: str | None = None,
        *,
        idempotent: bool | None = None,
    ) -> Subscription | None:
        """Add a subscription; ``None`` when the same (target, handler) is already there."""
        target = _normalise_target(target)
        check_handler(target, handler, self._registry)
        for sub in self._subs:
            if sub.target == target and sub.handler == handler:
                return None  # idempotent: subscribing twice changes nothing
        resolved = name or handler_name(handler)
        for sub in self._subs:
            if sub.name == resolved and sub.handler != handler:
                raise InvalidHandlerError(
                    f"subscription name {resolved!r} is already used by another handler "
                    f"({handler_name(sub.handler)}); pass a distinct name= so each handler "
                    "keeps its own durable queue / consumer group"
                )
        once = is_idempotent(handler) if idempotent is None else idempotent
        sub = Subscription(target, handler, resolved, is_async_handler(handler), once)
        if once and self.inbox is not None:
            sub.use_inbox(self.inbox)
        self._subs.append(sub)
        self._changed()
        return sub

    def remove(self, target: Any, handler: Any) -> Subscription | None:
        """Remove a subscription; unknown ones are ignored (like ``set.discard``)."""
        target = _normalise_target(target)
        for i, sub in enumerate(self._subs):
            if sub.target == target and sub.handler == handler:
                del self._subs[i]
                self._changed()
                return sub
        return None

    def clear(self) -> None:
        self._subs.clear()
        self._changed()

    def _changed(self) -> None:
        self.routes.clear()
        self._named.clear()
        self._accepts.clear()

    def for_event(self, event_cls: type[DomainEvent]) -> tuple[Subscription, ...]:
        """Subscriptions that receive ``event_cls``, in subscription order (cached)."""
        found = self.routes.get(event_cls)
        if found is None:
            found = tuple(sub for sub in self._subs if sub.matches(event_cls))
            self.routes[event_cls] = found
        return found

    def for_delivery(self, name: str, event_cls: type[DomainEvent]) -> tuple[Subscription, ...]:
        """The handlers of durable subscription ``name`` that receive ``event_cls``.

        What a broker delivery (one queue / consumer group = one name) runs; empty when
        the subscription has no handler for that class in this process (cached).
        """
        found = self._named.get((name, event_cls))
        if found is None:
            found = tuple(s for s in self.for_event(event_cls) if s.name == name)
            self._named[(name, event_cls)] = found
        return found

    def accepts(self, name: str, event_type: str) -> bool:
        """Does subscription ``name`` want the wire type ``event_type`` (before decoding)?"""
        found = self._accepts.get((name, event_type))
        if found is None:
            found = any(s.matches_name(event_type) for s in self._subs if s.name == name)
            self._accepts[(name, event_type)] = found
        return found

    def names(self) -> list[str]:
        """The durable subscription names, in subscription order."""
        return list(dict.fromkeys(s.name for s in self._subs))

    def by_name(self) -> dict[str, list[Subscription]]:
        """Subscriptions grouped by durable name (one queue / group each)."""
        out: dict[str, list[Subscription]] = {}
        for sub in self._subs:
            out.setdefault(sub.name, []).append(sub)
        return out

    def __iter__(self) -> Iterator[Subscription]:
        return iter(tuple(self._subs))

    def __len__(self) -> int:
        return len(self._subs)


class EventHandler:
    """A handler class: list ``event_types`` and implement ``handle``.

    Why a class: handlers with collaborators (a mailer, a cache) get them through the
    constructor, so the container can inject them; ``bus.register(obj)`` subscribes
    ``obj.handle`` to every entry of ``event_types``.
    """

    event_types: ClassVar[tuple[SubscriptionTarget, ...]] = ()
    #: Durable subscription name; default: ``module.ClassName``.
    subscription_name: ClassVar[str | None] = None
    #: Run through the inbox: at most once in effect per event (see ``idempotent``).
    idempotent: ClassVar[bool] = False

    async def handle(self, event: Any) -> None:
        raise NotImplementedError(f"{type(self).__qualname__} must implement handle(event)")

    async def stop(self) -> None:
        """Called by the bus once it has stopped: flush buffers, close files."""

    def subscriptions(self) -> list[tuple[SubscriptionTarget, Handler, str]]:
        cls = type(self)
        if not cls.event_types:
            raise InvalidHandlerError(
                f"{cls.__qualname__}.event_types is empty; list the event classes or "
                "patterns it handles, e.g. event_types = (UserCreated, 'item.*')"
            )
        name = cls.subscription_name or f"{cls.__module__}.{cls.__qualname__}"
        return [(target, self.handle, name) for target in cls.event_types]


def handler_subscriptions(obj: Any) -> list[tuple[SubscriptionTarget, Handler, str]]:
    """What ``register(obj)`` subscribes: an ``EventHandler`` or anything shaped like one."""
    if isinstance(obj, EventHandler):
        return obj.subscriptions()
    if hasattr(obj, "event_types") and callable(getattr(obj, "handle", None)):
        return EventHandler.subscriptions(obj)
    raise InvalidHandlerError(
        f"cannot register {obj!r}: it needs an event_types tuple and a handle(event) method "
        "(subclass hexbus.EventHandler); for a plain function use bus.subscribe(EventType, fn)"
    )


@dataclass
class EventRouter:
    """Handlers collected by decorator, added to a bus with ``bus.include(router)``.

    Why a router: modules declare their handlers at import time without knowing which
    bus (memory in tests, a broker in production) they will be attached to.
    """

    registry: EventRegistry = field(default=event_registry, repr=False)
    entries: list[tuple[SubscriptionTarget, Handler, str | None]] = field(default_factory=list)

    def on(
        self, *targets: Any, name: str | None = None, idempotent: bool = False
    ) -> Callable[[F], F]:
        if not targets:
            raise InvalidPatternError(
                "on() needs at least one event class or pattern, e.g. @router.on(UserCreated)"
            )

        once = idempotent

        def decorator(handler: F) -> F:
            if once:
                setattr(handler, _IDEMPOTENT_ATTR, True)
            for target in targets:
                self.add(target, handler, name=name)
            return handler

        return decorator

    def add(self, target: Any, handler: Any, *, name: str | None = None) -> None:
        target = _normalise_target(target)
        check_handler(target, handler, self.registry)  # fail at import, not at include
        entry = (target, handler, name)
        if entry not in self.entries:
            self.entries.append(entry)

    def __iter__(self) -> Iterator[tuple[SubscriptionTarget, Handler, str | None]]:
        return iter(tuple(self.entries))

    def __len__(self) -> int:
        return len(self.entries)


#: The router behind module-level ``@on_event``; the container includes it in its bus.
default_router = EventRouter()


def on_event(
    *targets: Any, name: str | None = None, idempotent: bool = False
) -> Callable[[F], F]:
    """Module-level decorator: ``@on_event(UserCreated)`` adds to ``default_router``.

    ``idempotent=True``: the handler runs through the inbox (see ``hexbus.idempotent``).
    """
    return default_router.on(*targets, name=name, idempotent=idempotent)
