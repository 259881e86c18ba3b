"""The in-memory adapter: the default, zero set-up, and the fastest.

Delivery is at-most-once and in process: nothing survives the process, and a failed
handler is logged and counted, not retried. It is what tests of application code and
single-process services want; switch ``HEXBUS_ADAPTER`` for durability.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from hexbus.application.bus import BusState, EventBusBase, merged_config, validate_metadata
from hexbus.application.dispatch import Dispatcher, DispatchStats
from hexbus.domain.context import DeliveryContext
from hexbus.domain.events import DomainEvent, EventRegistry, event_registry
from hexbus.infrastructure.memory.config import MemoryConfig

__all__ = ["InMemoryEventBus"]

logger = logging.getLogger("hexbus.memory")
_NO_METADATA: Mapping[str, str] = DeliveryContext().metadata
_RUNNING = BusState.RUNNING
_new_context = tuple.__new__  # DeliveryContext(...) without NamedTuple's Python-level __new__


class InMemoryEventBus(EventBusBase):
    """Runs handlers in this process, concurrently, as events are published."""

    adapter_name = "memory"

    def __init__(
        self,
        config: MemoryConfig | None = None,
        *,
        registry: EventRegistry = event_registry,
        mode: str | None = None,
        handler_timeout: float | None = None,
    ) -> None:
        super().__init__(registry=registry)
        overrides = {
            name: value
            for name, value in (("mode", mode), ("handler_timeout", handler_timeout))
            if value is not None
        }
        self.config = merged_config(MemoryConfig, config, overrides)
        self.dispatcher = Dispatcher(handler_timeout=self.config.handler_timeout)
        self._background = self.config.mode == "background"
        self._inflight: set[asyncio.Task[Any]] = set()
        self._routes = self.subscriptions.routes  # the table's own cache, read on the hot path

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
        """Deliver ``event`` to its handlers (await mode: return when all finished)."""
        if self.state is not _RUNNING:
            self._raise_not_running()
        if metadata is not None:  # checked even when nobody listens: brokers would refuse it
            metadata = validate_metadata(metadata)
        cls = event.__class__
        subs = self._routes.get(cls)  # a hit means cls is a known DomainEvent subclass
        if subs is None:
            self._check_publish(event)
            subs = self.subscriptions.for_event(cls)
        if self.middleware.items:
            changed = await self.middleware.apply(event)
            if changed is None:
                return
            if changed.__class__ is not cls:
                subs = self.subscriptions.for_event(changed.__class__)
            event = changed
        dispatcher = self.dispatcher
        dispatcher.stats.published += 1
        if not subs:
            return
        context = _new_context(
            DeliveryContext,
            (event, metadata or _NO_METADATA, 1, session, key, None),
        )
        if self._background:
            self._track(asyncio.create_task(dispatcher.dispatch(event, subs, context)))
            return
        pending = dispatcher.start(event, subs, context)
        if pending:
            for task in pending:
                self._track(task)
            await asyncio.wait(pending)

    async def publish_many(self, events: Iterable[DomainEvent]) -> None:
        """Publish in order; each event's handlers finish before the next (await mode)."""
        for event in list(events):
            await self.publish(event)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _stop(self) -> None:
        """Wait for in-flight handlers up to ``drain_timeout``, then cancel the rest."""
        if not self._inflight:
            return
        _, still = await asyncio.wait(
            set(self._inflight), timeout=self.config.drain_timeout
        )
        if still:
            logger.warning(
                "stop(): %d handler task(s) still running after %.1fs; cancelling them",
                len(still),
                self.config.drain_timeout,
            )
            for task in still:
                task.cancel()
            await asyncio.wait(still)
