"""The in-memory adapter: the default, zero set-up, and the fastest.

Delivery is in process: nothing survives the process. By default a failed handler is
logged and counted, not retried (at-most-once, fail-open); ``MemoryConfig`` opts in to
the brokers' semantics (retries with back-off, then a bounded dead-letter store read
through the same ``DeadLetterReader`` / ``DeadLetterReplayer`` ports). It is what tests
of application code and single-process services want; switch ``HEXBUS_ADAPTER`` for
durability.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from hexbus.application.bus import BusState, EventBusBase, merged_config
from hexbus.application.consuming import ConsumePipeline
from hexbus.application.dispatch import Dispatcher, DispatchStats
from hexbus.application.publishing import validate_metadata
from hexbus.domain.context import DeliveryContext
from hexbus.domain.errors import DecodeError
from hexbus.domain.events import DomainEvent, EventRegistry, event_registry
from hexbus.domain.ports import DeadLetter, ReplayReport, SubscriptionLag
from hexbus.infrastructure.codec import CloudEventCodec, EncodedEvent
from hexbus.infrastructure.memory.config import MemoryConfig
from hexbus.infrastructure.memory.consumer import Redelivery
from hexbus.infrastructure.memory.dead_letters import DeadLetterStore

if TYPE_CHECKING:
    from hexbus.infrastructure.settings import HexbusSettings

__all__ = ["InMemoryEventBus"]

logger = logging.getLogger("hexbus.memory")
_NO_METADATA: Mapping[str, str] = DeliveryContext().metadata
_RUNNING = BusState.RUNNING


class InMemoryEventBus(EventBusBase):
    """Runs handlers in this process, concurrently, as events are published."""

    adapter_name = "memory"
    batch_send_span = False  # publish_many publishes each event: one send span each

    def __init__(
        self,
        config: MemoryConfig | None = None,
        *,
        registry: EventRegistry = event_registry,
        mode: str | None = None,
        handler_timeout: float | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(registry=registry)
        overrides.update(
            (name, value)
            for name, value in (("mode", mode), ("handler_timeout", handler_timeout))
            if value is not None
        )
        self.config = cfg = merged_config(MemoryConfig, config, overrides)
        self.dispatcher = Dispatcher(handler_timeout=cfg.handler_timeout)
        self.pipeline = ConsumePipeline(
            self.subscriptions,
            policy=cfg.retry_policy,
            handler_timeout=cfg.handler_timeout,
            stats=self.dispatcher.stats,
            adapter="memory",
        )
        self.dead_letter_store = DeadLetterStore(cfg.dead_letter_limit)
        self._redelivery = Redelivery(self.pipeline, self.dead_letter_store, self._track)
        if cfg.redelivers:
            self.dispatcher.on_failure = self._redelivery.failed
        self._background = cfg.mode == "background"
        self._inflight: set[asyncio.Task[Any]] = set()
        #: Reads back what the outbox relay hands ``send_encoded`` (this service's source).
        self._codec = CloudEventCodec(source=cfg.service_name, registry=registry)
        self._routes = self.subscriptions.routes  # the table's own cache, read on the hot path
        self._middleware = self.middleware.items  # appended to, never replaced: read per publish

    @classmethod
    def from_settings(cls, settings: HexbusSettings, **overrides: Any) -> Self:
        """The bus the container builds from ``HEXBUS_*`` settings."""
        values: dict[str, Any] = {
            "mode": settings.memory_mode,
            "handler_timeout": settings.handler_timeout,
            "drain_timeout": settings.drain_timeout,
            "service_name": settings.service_name,
        }
        if settings.memory_retries:
            values.update(
                max_attempts=settings.max_attempts,
                retry_delays=settings.retry_delays,
                dead_letter_limit=settings.memory_dead_letter_limit,
            )
        return cls(MemoryConfig(**values), **overrides)

    @property
    def stats(self) -> DispatchStats:
        return self.dispatcher.stats

    async def publish(
        self,
        event: DomainEvent,
        *,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        session: Any = None,
    ) -> None:
        """Deliver ``event`` to its handlers (await mode: return when all finished).

        The publish pipeline's admission (``hexbus.application.publishing``) unrolled
        for speed, the same steps in the same order: state, type, metadata, middleware,
        causation.
        """
        if self.state is not _RUNNING:
            self._raise_not_running()
        if session is not None and self.outbox is not None:  # the outbox: admission writes
            await self.admission.admit(event, metadata, key, session)
            return
        cls = event.__class__
        subs = self._routes.get(cls)  # a hit means cls is a known DomainEvent subclass
        if subs is None:
            self._check_publish(event)
            subs = self.subscriptions.for_event(cls)
        if metadata is not None:  # checked even when nobody listens: brokers would refuse it
            metadata = validate_metadata(metadata)
        if self._middleware:
            changed = await self.middleware.apply(event)
            if changed is None:
                return
            if changed.__class__ is not cls:
                subs = self.subscriptions.for_event(changed.__class__)
            event = changed
        if self._background:  # causation, the count and the context now; handlers later
            dispatcher = self.dispatcher
            delivery = dispatcher.delivery_of(event, subs, metadata or _NO_METADATA, session, key)
            if delivery is not None:
                event, context = delivery
                self._track(asyncio.create_task(dispatcher.dispatch(event, subs, context)))
            return
        pending = self.dispatcher.deliver(event, subs, metadata or _NO_METADATA, session, key)
        if pending:
            for task in pending:
                self._track(task)
            await asyncio.wait(pending)

    async def publish_many(self, events: Iterable[DomainEvent], *, session: Any = None) -> None:
        """Publish in order; each event's handlers finish before the next (await mode).

        Every event is checked (state, type) before the first is delivered, as on the
        brokers; each then goes through ``publish`` (the rest of admission, dispatch).
        With the outbox and a ``session``, all go into the outbox in one write.
        """
        if session is not None and self.outbox is not None:
            await self.admission.admit_many(events, session)
            return
        items = list(events)
        for event in items:
            self.admission.check(event)
        for event in items:
            await self.publish(event)

    async def send_encoded(self, items: Sequence[EncodedEvent]) -> None:
        """Deliver events the outbox relay read back (already admitted when written).

        Each is decoded with this service's CloudEvents ``source`` and dispatched as
        ``publish`` would (await mode: its handlers finish before the next). One that no
        longer decodes (its type was removed, its data no longer fits the class) is
        logged and counted as failed, never silently dropped, and the others go on.
        """
        if self.state is not _RUNNING:
            self._raise_not_running()
        codec = self._codec
        dispatcher = self.dispatcher
        for item in items:
            try:
                event, metadata, wire_id = codec.decode_text(item.attributes, item.data)
            except DecodeError as exc:
                dispatcher.stats.failed += 1
                logger.error(
                    "outbox event %s (%s) cannot be delivered in memory: %s",
                    item.attributes.get("id"),
                    item.attributes.get("type"),
                    exc,
                    extra={"event_id": item.attributes.get("id"), "reason": exc.reason},
                )
                continue
            dispatcher.stats.published += 1
            subs = self.subscriptions.for_event(type(event))
            if not subs:
                continue
            context = DeliveryContext(event, metadata, 1, None, item.key, None, wire_id)
            if self._background:
                self._track(asyncio.create_task(dispatcher.dispatch(event, subs, context)))
                continue
            pending = dispatcher.start(event, subs, context)
            if pending:
                for task in pending:
                    self._track(task)
                await asyncio.wait(pending)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _stop(self) -> None:
        """Wait for in-flight handlers up to ``drain_timeout``, then cancel the rest.

        Pending retries skip their remaining back-off so they finish inside the drain.
        """
        self._redelivery.hurry.set()
        if not self._inflight:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        while self._inflight and loop.time() < deadline:  # retries may start new tasks
            await asyncio.wait(set(self._inflight), timeout=max(0.0, deadline - loop.time()))
        still = set(self._inflight)
        if still:
            logger.warning(
                "stop(): %d handler task(s) still running after %.1fs; cancelling them",
                len(still),
                self.config.drain_timeout,
            )
            for task in still:
                task.cancel()
            await asyncio.wait(still)

    # -- capabilities: DeadLetterReader, DeadLetterReplayer, SubscriptionAdmin, Readiness --
    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadLetter]:
        """The dead letters of ``subscription`` kept in process (``dead_letter_limit``)."""
        return self.dead_letter_store.peek(subscription, limit)

    async def replay_dead_letters(
        self,
        subscription: str,
        limit: int | None = None,
        *,
        event_type: str | None = None,
        dry_run: bool = False,
    ) -> ReplayReport:
        """Deliver ``subscription``'s dead letters to it again (attempt 1, in background)."""
        if self.state is not _RUNNING:
            self._raise_not_running()
        store = self.dead_letter_store
        chosen = store.select(subscription, limit, event_type)
        if dry_run:
            return ReplayReport(chosen, dry_run=True)
        store.remove(subscription, chosen)
        self._redelivery.replay(chosen)
        return ReplayReport(chosen)

    async def lag(self, subscriptions: Iterable[str] | None = None) -> list[SubscriptionLag]:
        """Nothing waits in process: an event is handed to its handlers as it is published
        (``waiting`` 0); ``detail`` counts the dead letters kept (``dead_letters``)."""
        names = self.subscriptions.names() if subscriptions is None else list(subscriptions)
        store = self.dead_letter_store
        return [
            SubscriptionLag(
                name,
                self.subscription_address(name),
                0,
                None,
                {"dead_letters": len(store.peek(name, store.limit))},
            )
            for name in names
        ]

    def subscription_address(self, name: str) -> str:
        return f"subscription {name!r} in process (memory)"

    async def delete_subscription(self, name: str) -> list[str]:
        """Unsubscribe every handler of ``name`` and forget its dead letters."""
        for sub in self.subscriptions.by_name().get(name, []):
            self.unsubscribe(sub.target, sub.handler)
        self.dead_letter_store.discard(name)
        return []

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Always ready: subscriptions apply at once in process."""
