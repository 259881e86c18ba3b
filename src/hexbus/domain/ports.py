"""The one port application code talks to: ``EventBus``.

Why a ``Protocol``: use cases depend on this shape only, so the in-memory bus, the broker
adapters and a test double are interchangeable without inheriting from anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, TypeAlias, runtime_checkable

from hexbus.domain.events import DomainEvent

__all__ = [
    "DeadLetter",
    "DeadLetterReader",
    "DeadLetterReplayer",
    "EventBus",
    "EventBusProtocol",
    "EventPattern",
    "Handler",
    "Middleware",
    "LagReporter",
    "Readiness",
    "ReplayReport",
    "Stats",
    "StatsReporter",
    "SubscriptionAdmin",
    "SubscriptionLag",
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
    """Publish domain events and subscribe handlers, whatever the transport.

    The contract every adapter (memory, RabbitMQ, Kafka, ``RecordingEventBus``, yours)
    keeps, checked by ``hexbus.testing.EventBusContract``. Optional abilities (dead
    letters, deleting a subscription, readiness) are the small protocols below, so a
    caller asks ``isinstance(bus, DeadLetterReader)`` instead of probing attributes.
    """

    def subscribe(
        self, event_type: SubscriptionTarget, handler: Handler, *, name: str | None = None
    ) -> None:
        """Run ``handler`` for every event of ``event_type``.

        ``event_type`` is a ``DomainEvent`` subclass (exact type, subclasses excluded) or
        an AMQP topic pattern over wire names (``"user.*"``, ``"#"``). ``name`` is the
        durable subscription name: one RabbitMQ queue / Kafka consumer group per (service,
        name); default ``module.qualname`` of the handler. Subscribing the same (target,
        handler) twice changes nothing. Raises ``InvalidPatternError`` for a malformed
        pattern and ``InvalidHandlerError`` when the handler's annotated parameter cannot
        take what it subscribes to, or ``name`` is taken by another handler: wiring
        mistakes fail here, at start-up, before any traffic.
        """
        ...

    def unsubscribe(self, event_type: SubscriptionTarget, handler: Handler) -> None:
        """Stop delivering ``event_type`` to ``handler``; unknown pairs are ignored.

        Broker adapters stop consuming but keep the durable queue / group (events keep
        accumulating for it); ``SubscriptionAdmin.delete_subscription`` removes it.
        """
        ...

    def register(self, obj: Any) -> None:
        """Subscribe an ``EventHandler`` object's ``handle`` to each of its ``event_types``;
        the bus calls ``obj.stop()`` after its own ``stop()``."""
        ...

    def unregister(self, obj: Any) -> None:
        """Undo ``register(obj)``."""
        ...

    def include(self, router: Any) -> None:
        """Subscribe every handler an ``EventRouter`` collected (``@router.on``)."""
        ...

    def add_middleware(self, middleware: Middleware) -> None:
        """Append a publish middleware (``event -> event | None``; ``None`` drops it)."""
        ...

    def clear(self) -> None:
        """Remove every subscription (between tests)."""
        ...

    async def publish(
        self,
        event: DomainEvent,
        *,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        session: Any = None,
    ) -> None:
        """Publish one event; admission is the same on every adapter, in this order:

        1. the bus is running, else ``NotStartedError`` / ``BusClosedError``;
        2. ``event`` is a ``DomainEvent`` instance, else ``NotADomainEventError``;
        3. ``metadata`` maps ``str`` to ``str``, else ``InvalidMetadataError`` (even if a
           middleware then drops the event: the caller's mistake is reported either way);
        4. middleware, in the order added (``None`` drops the event: publish returns);
        5. an event published inside a handler without a ``causation_id`` gets the
           handled event's id as causation and its correlation id;
        6. with the outbox configured (``HEXBUS_OUTBOX_URL``) and a ``session`` given, the
           encoded event is written into that session's transaction and ``publish``
           returns: the relay sends it after commit, nothing is sent after a rollback.

        Returns, per adapter: memory (await mode) when every handler finished, its
        failures logged and counted, never raised (background mode: when scheduled);
        RabbitMQ when the broker confirmed the persistent message; Kafka when it was
        acked with ``acks=all``. A transport failure (nack, no confirm within
        ``HEXBUS_PUBLISH_TIMEOUT``, broker away) raises ``PublishError``.

        ``key`` orders events per aggregate: events with the same key keep their order
        (Kafka partition key); default: no key, the transport batches freely.
        ``metadata`` (ip_address, user_agent ...) travels with the event and is read
        by handlers from ``current_context().metadata``. ``session`` (a SQLAlchemy
        ``AsyncSession``) never leaves the process: with the outbox it is where the
        event is written (step 6); without it the memory adapter hands it to handlers
        and broker adapters ignore it.
        """
        ...

    async def publish_many(self, events: Iterable[DomainEvent], *, session: Any = None) -> None:
        """Publish several events (each admitted as by ``publish``, without metadata or
        key); return when all are delivered / confirmed. Brokers batch them; a
        ``PublishError`` names the events that were not confirmed. With the outbox and a
        ``session``, all of them are written into that session's transaction instead
        (one multi-row INSERT) and sent by the relay after commit."""
        ...

    async def start(self) -> None:
        """Connect and start consuming (idempotent while running). Raises
        ``ConfigurationError`` when the transport cannot be reached or set up, and
        ``BusClosedError`` on a stopped bus (buses are not restarted)."""
        ...

    async def stop(self) -> None:
        """Stop consuming and drain: handlers in flight get up to
        ``HEXBUS_DRAIN_TIMEOUT`` seconds; on brokers the rest are redelivered later,
        never lost or dead-lettered. Calling it again is harmless."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


EventBusProtocol = EventBus


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter, whatever the adapter: the original bytes plus why it failed.

    ``body`` is the message as it was received (the CloudEvents data on brokers; the
    event's JSON on the memory adapter) and ``headers`` what travelled with it, so a
    dead letter can be inspected and replayed without the event class. ``reason`` is
    machine-readable: ``handler_failed``, ``timeout``, ``no_handler`` or a
    ``DecodeError.reason`` (``malformed``, ``unknown_type``, ``newer_version``,
    ``invalid_data``). ``origin`` is where it was first delivered (routing key, or
    ``topic[partition]@offset``); ``position`` where it sits now, when the store has
    such a thing (a Kafka dead-letter topic's offset).
    """

    subscription: str
    event_id: str | None
    event_type: str | None
    error: str | None
    reason: str | None
    attempts: int | None
    handler: str | None
    failed_at: str | None
    origin: str | None = None
    position: str | None = None
    body: bytes = b""
    headers: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: The decoded event where the adapter still has it (memory), else ``None``.
    event: DomainEvent | None = field(default=None, repr=False, compare=False)


@runtime_checkable
class DeadLetterReader(Protocol):
    """The adapter keeps dead letters per subscription and can list them."""

    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``subscription``, oldest first, left in place.
        An unknown subscription has none (an empty list)."""
        ...


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What ``replay_dead_letters`` did (or, with ``dry_run``, would do).

    ``replayed``: the dead letters sent back to their subscription (with ``dry_run``:
    those that would be). ``refused``: dead letters left in the store, each with the
    reason (e.g. its event type is no longer registered in this process, so replaying
    it could only dead-letter it again).
    """

    replayed: list[DeadLetter]
    refused: list[tuple[DeadLetter, str]] = field(default_factory=list)
    dry_run: bool = False

    @property
    def count(self) -> int:
        return len(self.replayed)


@runtime_checkable
class DeadLetterReplayer(Protocol):
    """The adapter can send dead letters back to the one subscription that failed."""

    async def replay_dead_letters(
        self,
        subscription: str,
        limit: int | None = None,
        *,
        event_type: str | None = None,
        dry_run: bool = False,
    ) -> ReplayReport:
        """Redeliver dead letters of ``subscription`` to that subscription only, from
        attempt 1, oldest first; each leaves the store only once it is safely back in
        the subscription's queue.

        ``limit``: at most this many (default all); ``event_type``: only dead letters of
        this wire type; ``dry_run``: change nothing, report what would be replayed. A
        dead letter whose type is not registered in this process is refused and kept.
        """
        ...


@runtime_checkable
class SubscriptionAdmin(Protocol):
    """The adapter can describe and delete what a subscription declared on the broker."""

    def subscription_address(self, name: str) -> str:
        """Where ``name``'s events wait, for people: ``queue 'svc.name'``, ``consumer
        group 'svc.name'``, ``in process``."""
        ...

    async def delete_subscription(self, name: str) -> list[str]:
        """Unsubscribe every handler of ``name`` and delete its queues / topics / groups
        on the broker, dead letters included. Returns what could not be deleted (for
        the caller to report); ``[]`` when everything went."""
        ...


@runtime_checkable
class Readiness(Protocol):
    """The adapter applies subscription changes asynchronously and can wait for them."""

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Return once subscription changes are applied and every consumer is live (owns
        its partitions and knows where it starts). ``TimeoutError`` after ``timeout``."""
        ...


class Stats(Protocol):
    """The counters every hexbus bus keeps (``hexbus.DispatchStats``)."""

    published: int
    handled: int
    failed: int
    timed_out: int
    retried: int
    dead_lettered: int
    requeued: int


@runtime_checkable
class StatsReporter(Protocol):
    """The adapter counts what it did (``hexbus check``, ``hexbus tail``, tests)."""

    @property
    def stats(self) -> Stats: ...


@dataclass(frozen=True, slots=True)
class SubscriptionLag:
    """How far one subscription's consumers are behind.

    ``waiting``: events stored for the subscription and not yet handled (Kafka: the sum
    over partitions of end offset minus committed offset; RabbitMQ: the queue's ready
    messages). ``in_flight``: delivered and not yet acknowledged (RabbitMQ unacked;
    ``None`` where the broker does not say). ``detail``: per-partition waiting counts
    (Kafka ``topic[p]``), or per-queue counts (retry tiers, dead letters).
    """

    subscription: str
    address: str
    waiting: int | None
    in_flight: int | None = None
    detail: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class LagReporter(Protocol):
    """The adapter can say how far behind each subscription is."""

    async def lag(self, subscriptions: Iterable[str] | None = None) -> list[SubscriptionLag]:
        """Lag of ``subscriptions`` (default: this bus's own subscription names), as the
        broker sees it now; works on a started bus, also for subscriptions this process
        does not consume."""
        ...
